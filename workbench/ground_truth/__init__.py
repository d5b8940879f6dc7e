"""Small models whose circuits are known by construction (or, for the induction toy, by observation).

See :mod:`workbench.ground_truth.registry` (``GroundTruth``, ``ground_truths``, ``get``), the strict interchange
training in :mod:`workbench.ground_truth.strict` and the designs in :mod:`workbench.ground_truth.designs`.
"""

from workbench.ground_truth.registry import GroundTruth, GroundTruthError, get, ground_truths, names

__all__ = ["GroundTruth", "GroundTruthError", "get", "ground_truths", "names"]
