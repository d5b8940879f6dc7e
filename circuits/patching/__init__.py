"""Activation patching, path patching, mean / zero ablation, faithfulness, and patching-driven circuit discovery.

- :func:`head_patching_scores` / :func:`layer_patching_scores`: activation patching (``activation``).
- :func:`path_patching_scores` / :func:`path_head_scores`: path patching from senders to receivers (``path``).
- :func:`faithfulness`: F = (m(C) - m(empty)) / (m(M) - m(empty)) of a circuit; :func:`prune_greedy` (``faithfulness``).
- :func:`discover`: a circuit found by path patching and pruned by faithfulness (``discovery``).
"""

from circuits.patching.ablation import ABLATIONS, PatchingInputError, references
from circuits.patching.activation import head_patching_scores, layer_patching_scores
from circuits.patching.discovery import discover, prune_by_faithfulness
from circuits.patching.faithfulness import faithfulness, faithfulness_many, prune_greedy
from circuits.patching.path import all_components, path_head_scores, path_patching_scores

__all__ = [
    "ABLATIONS",
    "PatchingInputError",
    "all_components",
    "discover",
    "faithfulness",
    "faithfulness_many",
    "head_patching_scores",
    "layer_patching_scores",
    "path_head_scores",
    "path_patching_scores",
    "prune_by_faithfulness",
    "prune_greedy",
    "references",
]
