"""Activation patching, path patching, mean / zero ablation, faithfulness, and patching-driven circuit discovery.

- :func:`head_patching_scores` / :func:`layer_patching_scores`: activation patching (``activation``).
- :func:`path_patching_scores` / :func:`path_head_scores`: path patching from senders to receivers (``path``).
- :func:`faithfulness`: F = (m(C) - m(empty)) / (m(M) - m(empty)) of a circuit; :func:`prune_greedy` (``faithfulness``).
- :func:`discover`: a circuit found by path patching and pruned by faithfulness (``discovery``; its scorer
  :class:`PathPatchingScorer` drives the one loop :func:`circuits.discovery.discover`).
- :data:`PATCH` / :class:`PatchConfig`: the analysis behind the contract (``workbench patch``).

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ABLATIONS": "circuits.patching.ablation",
    "PatchingInputError": "circuits.patching.ablation",
    "references": "circuits.patching.ablation",
    "head_patching_scores": "circuits.patching.activation",
    "layer_patching_scores": "circuits.patching.activation",
    "PathPatchingScorer": "circuits.patching.discovery",
    "discover": "circuits.patching.discovery",
    "prune_by_faithfulness": "circuits.patching.discovery",
    "Faithfulness": "circuits.patching.faithfulness",
    "faithfulness": "circuits.patching.faithfulness",
    "faithfulness_many": "circuits.patching.faithfulness",
    "prune_greedy": "circuits.patching.faithfulness",
    "all_components": "circuits.patching.path",
    "path_head_scores": "circuits.patching.path",
    "path_patching_scores": "circuits.patching.path",
    "prompt_task": "circuits.patching.prompts",
    "PATCH": "circuits.patching.analysis",
    "PatchConfig": "circuits.patching.analysis",
})
