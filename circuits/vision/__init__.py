"""Vision transformers as path ensembles, and their lazy neurons (the zoo's ``toy/vit-...``, :mod:`workbench.zoo_vit`).

- :mod:`~circuits.vision.frozen`: ``freeze_vit(model, images) -> FrozenRun`` (the ViT in the frozen-affine-sublayer
  form that :func:`circuits.paths.decompose.decompose` reads), ``vit_weights``, ``check_vision``, ``VisionInputError``.
- :mod:`~circuits.vision.ensemble`: ``length_logits`` (class-token logits by path length), ``prune_table``,
  ``greedy_prune``, ``fit_scales`` (EnsembleScale), ``length_table``.
- :mod:`~circuits.vision.lazy`: ``vit_sparsity`` (probes.sparsity's counters on the ViT's hooks), ``sparsity_table``.
- :mod:`~circuits.vision.analysis`: ``VIT`` / ``VitConfig`` (run kind ``vit``); :mod:`~circuits.vision.figures`.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "VIT": "circuits.vision.analysis",
    "VitConfig": "circuits.vision.analysis",
    "VisionInputError": "circuits.vision.frozen",
    "check_vision": "circuits.vision.frozen",
    "freeze_vit": "circuits.vision.frozen",
    "vit_weights": "circuits.vision.frozen",
    "fit_scales": "circuits.vision.ensemble",
    "greedy_prune": "circuits.vision.ensemble",
    "length_logits": "circuits.vision.ensemble",
    "length_table": "circuits.vision.ensemble",
    "prune_table": "circuits.vision.ensemble",
    "sparsity_table": "circuits.vision.lazy",
    "vit_sparsity": "circuits.vision.lazy",
})
