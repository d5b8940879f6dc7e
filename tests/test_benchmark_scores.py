"""The benchmark's scores against independent computations: brute-force pair counts, scikit-learn, MIB's loop."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import roc_auc_score

from circuits.benchmark.scores import (
    MIB_FRACTIONS,
    auroc,
    cmd,
    cpr,
    faithfulness_curve,
    jaccard,
    ranked,
    roc_points,
)


def _pairs_auroc(scores, truth):
    true = [abs(scores[i]) for i in truth]
    false = [abs(s) for i, s in scores.items() if i not in truth]
    wins = sum(1.0 if t > f else 0.5 if t == f else 0.0 for t in true for f in false)
    return wins / (len(true) * len(false))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_pair_counting_and_scikit_learn_with_ties(seed):
    rng = random.Random(seed)
    scores = {f"e{i}": rng.choice([-1, 1]) * rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]) for i in range(40)}
    truth = set(rng.sample(sorted(scores), 9))
    got = auroc(scores, truth)
    assert got == pytest.approx(_pairs_auroc(scores, truth), abs=1e-12)
    ids = sorted(scores)
    assert got == pytest.approx(roc_auc_score([i in truth for i in ids], [abs(scores[i]) for i in ids]), abs=1e-12)


def test_perfect_inverted_and_roc_points():
    scores = {"a": 3.0, "b": -2.0, "c": 0.5, "d": 0.1}
    assert auroc(scores, {"a", "b"}) == 1.0 and auroc(scores, {"c", "d"}) == 0.0
    assert auroc(scores, {"b"}, absolute=False) == 0.0  # signed: -2 ranks last
    fpr, tpr = roc_points(scores, {"a", "c"})
    assert fpr == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr == [0.0, 0.5, 0.5, 1.0, 1.0]
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(auroc(scores, {"a", "c"}))  # no ties: the trapezoids are the exact area


def _mib_areas(percentages, faithfulnesses):
    """MIB's evaluate_area_under_curve loop (linear x), written out as published."""
    area_under = area_from_1 = 0.0
    for i in range(len(faithfulnesses) - 1):
        x_1, x_2 = percentages[i], percentages[i + 1]
        area_from_1 += (x_2 - x_1) * ((abs(1.0 - faithfulnesses[i]) + abs(1.0 - faithfulnesses[i + 1])) / 2)
        area_under += (x_2 - x_1) * ((faithfulnesses[i] + faithfulnesses[i + 1]) / 2)
    return area_under, area_from_1


def test_curve_sizes_and_areas_follow_mib():
    rng = random.Random(0)
    scores = {f"e{i:04d}": rng.gauss(0, 1) for i in range(2000)}
    asked = []

    def faith(circuits):
        asked.extend(circuits)
        return [min(1.2, len(c) / 500) for c in circuits]  # a curve that overshoots 1, as real ones can

    curve = faithfulness_curve(scores, faith)
    assert curve.sizes == tuple(int(f * 2000) for f in MIB_FRACTIONS) == (2, 4, 10, 20, 40, 100, 200, 400, 1000, 2000)
    order = ranked(scores)
    assert all(list(c) == order[: len(c)] for c in asked)
    under, from_1 = _mib_areas(MIB_FRACTIONS, curve.faithfulness)
    assert cpr(curve) == pytest.approx(under, abs=1e-12) and cmd(curve) == pytest.approx(from_1, abs=1e-12)
    perfect = faithfulness_curve(scores, lambda cs: [1.0] * len(cs))
    assert cmd(perfect) == 0.0 and cpr(perfect) == pytest.approx(1.0 - MIB_FRACTIONS[0])


def test_jaccard_and_bad_input():
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3) and jaccard([], []) == 1.0
    with pytest.raises(ValueError, match="not among the scored"):
        auroc({"a": 1.0, "b": 0.0}, {"z"})
    with pytest.raises(ValueError, match="true and false"):
        auroc({"a": 1.0}, {"a"})
    with pytest.raises(ValueError, match="fractions"):
        faithfulness_curve({"a": 1.0}, lambda cs: [1.0] * len(cs), fractions=(0.5, 0.2))
