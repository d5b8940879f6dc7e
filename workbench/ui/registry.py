"""The registry of analyses: every :class:`workbench.analysis.Analysis` the faces (command line, ``workbench demo``,
the dashboard's launch form, sweeps) are generated from, in the order the command line lists them.

Importing an analysis module is cheap (its heavy imports happen when it runs), so listing the registry imports no
torch.
"""

from __future__ import annotations

import importlib

from workbench.analysis import Analysis

#: "module:attribute" of each registered analysis
ANALYSES: tuple[str, ...] = (
    "workbench.zoo_curves:ZOO_TRAINING",
    "probes.analysis:SPARSITY",
    "probes.analysis:MASSIVE",
    "probes.analysis:PROBE",
    "probes.dynamics_analysis:DYNAMICS",
    "circuits.dictionaries.analysis:TRAIN_DICT",
    "circuits.dictionaries.analysis:EVAL_DICT",
    "circuits.dictionaries.clt_analysis:TRAIN_CLT",
    "circuits.transcoder_paths.analysis:TC_CIRCUIT",
    "circuits.cdt.analysis:CDT",
    "circuits.patching.analysis:PATCH",
    "circuits.paths.analysis:PATHS",
    "circuits.vision.analysis:VIT",
    "circuits.edges.analysis:EDGES",
    "circuits.attribution.analysis:ATTRIBUTE",
    "circuits.attribution.intervene_analysis:INTERVENE",
    "circuits.benchmark.analysis:BENCHMARK",
    "circuits.formation.analysis:FORMATION",
    "circuits.pathways.analysis:SSA",
    "circuits.bigram.analysis:BIGRAM",
)


def analyses() -> list[Analysis]:
    """Every registered analysis."""
    out = []
    for entry in ANALYSES:
        module, _, name = entry.partition(":")
        out.append(getattr(importlib.import_module(module), name))
    return out


def get(verb: str) -> Analysis:
    """The analysis behind ``verb``; LookupError listing the verbs for an unknown one."""
    found = {a.verb: a for a in analyses()}
    if verb not in found:
        raise LookupError(f"unknown analysis {verb!r}; analyses: {', '.join(found)}")
    return found[verb]
