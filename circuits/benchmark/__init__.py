"""Circuit discovery against ground truth: ROC-AUC of node and edge scores, MIB's CPR and CMD, agreement.

- :mod:`~circuits.benchmark.scores`: ``auroc``, ``roc_points``, ``faithfulness_curve``, ``cpr``, ``cmd``, ``jaccard``.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "MIB_FRACTIONS": "circuits.benchmark.scores",
    "Curve": "circuits.benchmark.scores",
    "auroc": "circuits.benchmark.scores",
    "cmd": "circuits.benchmark.scores",
    "cpr": "circuits.benchmark.scores",
    "faithfulness_curve": "circuits.benchmark.scores",
    "jaccard": "circuits.benchmark.scores",
    "ranked": "circuits.benchmark.scores",
    "roc_points": "circuits.benchmark.scores",
})
