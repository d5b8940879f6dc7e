"""One call from a prompt to a transcoder circuit: freeze, search, build the graph, check completeness.

:func:`tc_circuit` computes (nothing stored); :data:`circuits.transcoder_paths.analysis.TC_CIRCUIT` stores it as a
``tc-circuit`` run:

- ``circuit.json``: the circuit in node-link form (:class:`workbench.circuit.Circuit`);
- ``paths.parquet``: rank, path, value, depth, start, ends_in_embedding (largest |value| first);
- ``contributions.parquet``: every direct contribution into the target (node, kind, layer, head, feature, source,
  value); they sum to the target's value;
- summary: target, target_value, contributions_sum, completeness_rel_error, nodes, edges, paths, top_path,
  error_total, target_value_spliced (a logit target: the difference with the transcoder layers' MLPs replaced by
  their transcoders), and, when a task is given, metric_clean / metric_spliced (the task's metric, e.g. the probability
  difference, clean and with the transcoder layers' MLPs replaced by their transcoders).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from circuits.dictionaries.model import Dictionary
from circuits.transcoder_paths.contributions import (
    Target,
    direct_contributions,
    feature_target,
    logit_target,
)
from circuits.transcoder_paths.frozen import FrozenRun, freeze, spliced_logits
from circuits.transcoder_paths.graph import circuit_from_paths
from circuits.transcoder_paths.search import paths_table, search_paths
from workbench.circuit import Circuit, parse_node_id

__all__ = ["TcCircuitResult", "make_target", "metric_clean_vs_spliced", "tc_circuit"]


@dataclass
class TcCircuitResult:
    """A transcoder circuit and what it was computed from."""

    circuit: Circuit
    paths: pd.DataFrame
    contributions: pd.DataFrame
    summary: dict[str, Any]
    run: FrozenRun = field(repr=False)
    target: Target = field(repr=False)


def make_target(run: FrozenRun, target: str, *, correct: int | None = None, incorrect: int | None = None,
                position: int = -1) -> Target:
    """``"logit"`` (needs ``correct`` and ``incorrect`` token ids; the difference at ``position``) or a feature node
    id ``"tc{L}.f{i}@{pos}"`` (its pre-activation; ``@pos`` optional, default ``position``)."""
    if target == "logit":
        if correct is None or incorrect is None:
            raise ValueError("a logit target needs the correct and incorrect token ids")
        return logit_target(run, int(correct), int(incorrect), position)
    try:
        parsed = parse_node_id(target)
    except ValueError:
        parsed = {"kind": None}
    if parsed["kind"] != "feature" or not target.startswith("tc"):
        raise ValueError(f"unknown target {target!r}: use 'logit' or a transcoder feature id like 'tc5.f123@7'")
    pos = parsed["position"] if parsed["position"] is not None else position
    return feature_target(run, parsed["layer"], parsed["feature"], pos)


@torch.no_grad()
def metric_clean_vs_spliced(model, task, transcoders: Mapping[int, Dictionary]) -> tuple[float, float]:
    """The task's metric (mean over its examples) clean and with the given layers' MLPs replaced by transcoders."""
    tokens = task.clean_tokens.to(model.W_E.device)
    clean = float(task.metric(model(tokens, return_type="logits")))
    spliced = float(task.metric(spliced_logits(model, tokens, transcoders)))
    return clean, spliced


def tc_circuit(
    model, tokens: torch.Tensor, transcoders: Mapping[int, Dictionary], target: str = "logit", *,
    correct: int | None = None, incorrect: int | None = None, position: int = -1, num_branches: int = 8,
    max_depth: int = 4, exclude_bos: bool = True, task=None,
) -> TcCircuitResult:
    """Freeze the clean run of one prompt (tokens [seq] or [1, seq]), search paths back from ``target`` (see
    :func:`make_target`) through the transcoders of the given layers and build the circuit. With a ``task``, the
    summary also holds its metric clean and spliced (all of the task's examples)."""
    run = freeze(model, tokens, transcoders)
    tgt = make_target(run, target, correct=correct, incorrect=incorrect, position=position)
    root, paths = search_paths(run, tgt, num_branches=num_branches, max_depth=max_depth, exclude_bos=exclude_bos)
    tokenizer = getattr(model, "tokenizer", None)
    strings = [tokenizer.decode([int(t)]) for t in run.tokens] if tokenizer is not None else None
    if tgt.node == "logit" and strings is not None:  # token strings, not ids, in every label
        pos = tgt.state.position
        tgt.label = (f"logit({tokenizer.decode([int(correct)])!r}) - logit({tokenizer.decode([int(incorrect)])!r}) "
                     f"after {strings[pos]!r} (position {pos})")
    meta = {"model": getattr(model, "workbench_spec", None), "transcoder_layers": sorted(run.transcoders),
            "num_branches": num_branches, "max_depth": max_depth, "method": "transcoder paths"}
    circuit = circuit_from_paths(run, tgt, root, token_strings=strings, metadata=meta, name=f"{tgt.label}")
    contributions = direct_contributions(run, tgt.state)
    total = float(contributions["value"].sum())
    table = paths_table(paths)
    summary: dict[str, Any] = {
        "target": tgt.node, "target_label": tgt.label, "target_value": tgt.value, "contributions_sum": total,
        "completeness_rel_error": abs(total - tgt.value) / max(abs(tgt.value), 1e-12),
        "error_total": float(contributions.loc[contributions["kind"] == "error", "value"].sum()),
        "nodes": len(circuit), "edges": circuit.graph.number_of_edges(), "paths": len(table),
        "top_path": table["path"].iloc[0] if len(table) else None,
        "top_path_value": float(table["value"].iloc[0]) if len(table) else None,
        "transcoder_layers": sorted(run.transcoders),
    }
    if tgt.node == "logit" and transcoders:
        logits = spliced_logits(model, run.tokens[None], transcoders)[0, tgt.state.position]
        summary["target_value_spliced"] = float(logits[int(correct)] - logits[int(incorrect)])
    if task is not None:
        clean, spliced = metric_clean_vs_spliced(model, task, transcoders)
        summary.update({"metric": task.metric_name, "metric_clean": clean, "metric_spliced": spliced})
    return TcCircuitResult(circuit, table, contributions, summary, run, tgt)
