"""Statistics read from activations: activation sparsity, massive activations (and their training dynamics), linear
probes.

- :data:`SPARSITY`, :data:`MASSIVE`, :data:`PROBE` (``probes.analysis``) and :data:`DYNAMICS`
  (``probes.dynamics_analysis``): the analyses behind the contract, e.g. ``MASSIVE.run(model, MassiveConfig())``.
- :func:`corpus_sparsity` (per-layer and per-neuron sparsity on a corpus), :func:`performance_thresholds`,
  :func:`topk_losses`; :func:`measure_massive`, :func:`massive_intervention`; :func:`residual_features`,
  :func:`probe_layers`; :func:`analyse_checkpoints` (dynamics of any model's checkpoints).

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "MASSIVE": "probes.analysis",
    "PROBE": "probes.analysis",
    "SPARSITY": "probes.analysis",
    "MassiveConfig": "probes.analysis",
    "ProbeConfig": "probes.analysis",
    "SparsityConfig": "probes.analysis",
    "DYNAMICS": "probes.dynamics_analysis",
    "DynamicsConfig": "probes.dynamics_analysis",
    "SparsityStats": "probes.sparsity",
    "corpus_sparsity": "probes.sparsity",
    "performance_thresholds": "probes.thresholds",
    "topk_losses": "probes.thresholds",
    "MassiveStats": "probes.massive",
    "massive_intervention": "probes.massive",
    "measure_massive": "probes.massive",
    "probe_layers": "probes.linear",
    "residual_features": "probes.linear",
    "analyse_checkpoints": "probes.dynamics_external",
})
