"""Path ensembles: the logits of a frozen clean run split exactly by path length, individual paths, lesions.

- :mod:`~circuits.paths.frozen`: ``freeze(model, tokens) -> FrozenRun`` (norm scales, patterns, MLP gates frozen).
- :mod:`~circuits.paths.decompose`: ``decompose(model_or_frozen, tokens, max_length=None) -> PathDecomposition``
  (parts [K, batch, pos, d]; ``sum_k c_k`` = clean logits), ``LogitTarget``, ``path_counts``.
- :mod:`~circuits.paths.search`: ``direct_attribution``, ``top_paths`` (greedy beam search), ``paths_circuit``,
  ``sublayer_paths`` / ``path_score`` (brute force, exact).
- :mod:`~circuits.paths.lesion`: ``lesion_single``, ``lesion_random``, ``lesion_curve`` (Veit et al.).
- :mod:`~circuits.paths.reweight`: ``fit_length_weights`` (per-length ensemble weights).
- :mod:`~circuits.paths.analysis`: ``analyse_paths`` (everything in one call), ``save_paths_run`` (run kind ``paths``).
- :mod:`~circuits.paths.figures`: plotly figures; :mod:`~circuits.paths.demo`: the dashboard's demo run.
"""

from __future__ import annotations

from circuits.paths.analysis import PathsResult, analyse_paths, save_paths_run
from circuits.paths.decompose import LogitTarget, PathDecomposition, decompose, path_counts
from circuits.paths.frozen import FrozenRun, PathInputError, freeze
from circuits.paths.lesion import lesion_curve, lesion_random, lesion_single
from circuits.paths.reweight import fit_length_weights
from circuits.paths.search import direct_attribution, path_score, paths_circuit, sublayer_paths, top_paths

__all__ = [
    "FrozenRun",
    "LogitTarget",
    "PathDecomposition",
    "PathInputError",
    "PathsResult",
    "analyse_paths",
    "decompose",
    "direct_attribution",
    "fit_length_weights",
    "freeze",
    "lesion_curve",
    "lesion_random",
    "lesion_single",
    "path_counts",
    "path_score",
    "paths_circuit",
    "save_paths_run",
    "sublayer_paths",
    "top_paths",
]
