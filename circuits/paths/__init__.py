"""Path ensembles: the logits of a frozen clean run split exactly by path length, individual paths, lesions.

- :mod:`~circuits.paths.frozen`: ``freeze_affine(model, tokens) -> FrozenRun`` (alias ``freeze``) (norm scales, patterns, MLP gates frozen).
- :mod:`~circuits.paths.decompose`: ``decompose(model_or_frozen, tokens, max_length=None) -> PathDecomposition``
  (parts [K, batch, pos, d]; ``sum_k c_k`` = clean logits), ``LogitTarget``, ``path_counts``.
- :mod:`~circuits.paths.search`: ``direct_attribution``, ``top_paths`` (greedy beam search), ``paths_circuit``,
  ``sublayer_paths`` / ``path_score`` (brute force, exact).
- :mod:`~circuits.paths.lesion`: ``lesion_single``, ``lesion_random``, ``lesion_curve`` (Veit et al.).
- :mod:`~circuits.paths.reweight`: ``fit_length_weights`` (per-length ensemble weights).
- :mod:`~circuits.paths.ensemble`: ``analyse_paths`` (everything in one call, a ``PathsResult``).
- :mod:`~circuits.paths.analysis`: ``PATHS`` / ``PathsConfig``, the analysis behind the contract (run kind ``paths``).
- :mod:`~circuits.paths.figures`: plotly figures.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "PATHS": "circuits.paths.analysis",
    "PathsConfig": "circuits.paths.analysis",
    "PathsResult": "circuits.paths.ensemble",
    "analyse_paths": "circuits.paths.ensemble",
    "LogitTarget": "circuits.paths.decompose",
    "PathDecomposition": "circuits.paths.decompose",
    "decompose": "circuits.paths.decompose",
    "path_counts": "circuits.paths.decompose",
    "FrozenRun": "circuits.paths.frozen",
    "PathInputError": "circuits.paths.frozen",
    "freeze": "circuits.paths.frozen",
    "freeze_affine": "circuits.paths.frozen",
    "lesion_curve": "circuits.paths.lesion",
    "lesion_random": "circuits.paths.lesion",
    "lesion_single": "circuits.paths.lesion",
    "fit_length_weights": "circuits.paths.reweight",
    "direct_attribution": "circuits.paths.search",
    "path_score": "circuits.paths.search",
    "paths_circuit": "circuits.paths.search",
    "sublayer_paths": "circuits.paths.search",
    "top_paths": "circuits.paths.search",
})
