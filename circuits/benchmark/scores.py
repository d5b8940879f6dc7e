"""How well a scored graph finds a known circuit: ROC-AUC against the true set, and MIB's faithfulness-curve areas.

- :func:`auroc`: the exact area under the ROC curve of ranking items by |score| against a true set (the Mann-Whitney
  statistic: the chance that a true item outranks a false one, ties counting one half). MIB approximates it from ten
  top-n cuts; the exact area is what those points converge to.
- :func:`faithfulness_curve`: the faithfulness of the top-n circuits at MIB's fractions of the scored items
  (0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%; ``n = int(fraction * items)`` as MIB counts).
- :func:`cpr` / :func:`cmd`: MIB's circuit performance ratio (trapezoid area under faithfulness versus fraction;
  higher is better) and circuit-model difference (area of ``|1 - faithfulness|``; lower is better), both on the linear
  fraction axis as in MIB's ``evaluate_area_under_curve``.
- :func:`jaccard`: agreement of two top-k sets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MIB_FRACTIONS", "Curve", "auroc", "cmd", "cpr", "faithfulness_curve", "jaccard", "ranked", "roc_points"]

#: MIB's fractions of the scored items at which the top-n circuit is evaluated
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def ranked(scores: Mapping[str, float], *, absolute: bool = True) -> list[str]:
    """Item ids best first: by |score| (``absolute``) or by signed score; ties broken by id for a stable order."""
    key = (lambda i: (-abs(scores[i]), i)) if absolute else (lambda i: (-scores[i], i))
    return sorted(scores, key=key)


def _check_truth(scores: Mapping[str, float], truth: Collection[str]) -> set[str]:
    true = set(truth)
    missing = sorted(true - set(scores))
    if missing:
        raise ValueError(f"true items not among the scored ones: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if not true or len(true) == len(scores):
        raise ValueError(f"an ROC needs true and false items: {len(true)} true of {len(scores)} scored")
    return true


def auroc(scores: Mapping[str, float], truth: Collection[str], *, absolute: bool = True) -> float:
    """Exact ROC-AUC of ranking ``scores`` (id -> score; by |score| if ``absolute``) against the ``truth`` ids.

    1.0: every true item ranks above every false one; 0.5: chance. Ties between a true and a false item count 1/2.
    """
    true = _check_truth(scores, truth)
    value = {i: abs(s) if absolute else s for i, s in scores.items()}
    order = sorted(value, key=lambda i: value[i])
    # midranks (1-based) handle ties exactly
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and value[order[j + 1]] == value[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_true, n_false = len(true), len(value) - len(true)
    rank_sum = sum(ranks[t] for t in true)
    return (rank_sum - n_true * (n_true + 1) / 2) / (n_true * n_false)


def roc_points(scores: Mapping[str, float], truth: Collection[str], *, absolute: bool = True
               ) -> tuple[list[float], list[float]]:
    """(false-positive rates, true-positive rates) of every top-n cut, n = 0..items, for an ROC figure."""
    true = _check_truth(scores, truth)
    n_true, n_false = len(true), len(scores) - len(true)
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    for item in ranked(scores, absolute=absolute):
        tp, fp = tp + (item in true), fp + (item not in true)
        fpr.append(fp / n_false)
        tpr.append(tp / n_true)
    return fpr, tpr


@dataclass(frozen=True)
class Curve:
    """Faithfulness of the top-n circuits: ``fractions`` [F], ``sizes`` [F] (items kept), ``faithfulness`` [F]."""

    fractions: tuple[float, ...]
    sizes: tuple[int, ...]
    faithfulness: tuple[float, ...]

    def to_json(self) -> dict[str, list]:
        return {"fractions": list(self.fractions), "sizes": list(self.sizes), "faithfulness": list(self.faithfulness)}


def faithfulness_curve(scores: Mapping[str, float], faithfulness: Callable[[Sequence[Sequence[str]]], Sequence[float]],
                       *, fractions: Iterable[float] = MIB_FRACTIONS, absolute: bool = True) -> Curve:
    """Evaluate the top-n circuits, ``n = int(fraction * len(scores))`` per fraction, in one batched call.

    ``faithfulness``: a list of kept-item lists -> one faithfulness each (e.g. an edge circuit's
    ``(m(C) - m(none)) / (m(all) - m(none))``).
    """
    fr = tuple(float(f) for f in fractions)
    if not fr or any(not 0 < f <= 1 for f in fr) or list(fr) != sorted(fr):
        raise ValueError(f"fractions must be increasing, each in (0, 1]; got {fr}")
    order = ranked(scores, absolute=absolute)
    sizes = tuple(int(f * len(order)) for f in fr)
    values = [float(v) for v in faithfulness([order[:n] for n in sizes])]
    if len(values) != len(sizes):
        raise ValueError(f"faithfulness gave {len(values)} values for {len(sizes)} circuits")
    return Curve(fr, sizes, tuple(values))


def _area(x: Sequence[float], y: Sequence[float]) -> float:
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


def cpr(curve: Curve) -> float:
    """Circuit performance ratio: the trapezoid area under faithfulness versus fraction (higher is better)."""
    return _area(curve.fractions, curve.faithfulness)


def cmd(curve: Curve) -> float:
    """Circuit-model difference: the trapezoid area of ``|1 - faithfulness|`` versus fraction (lower is better)."""
    return _area(curve.fractions, [abs(1.0 - f) for f in curve.faithfulness])


def jaccard(a: Collection[str], b: Collection[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)
