"""The discovery benchmark end to end on one ground-truth model with two methods, and its bad input."""

from __future__ import annotations

import json
import math

import pytest

from circuits.benchmark.analysis import BENCHMARK, BenchmarkConfig
from circuits.benchmark.run import BenchmarkInputError, benchmark, check_methods
from workbench.analysis import ConfigError
from workbench.store import Store


@pytest.fixture(scope="module")
def small_run():
    return benchmark(["gt-prev-token"], ["eap", "activation-patching"], n=8, progress=False)


def test_one_model_two_methods_scores_every_edge_and_recovers_the_designed_circuit(small_run):
    scores = small_run["scores"].set_index("method")
    truth = small_run["truths"]["gt-prev-token"]
    assert truth["how"] == "designed" and truth["f_true"] >= 0.9  # the ground truth holds on these examples
    assert set(scores.index) == {"eap", "activation-patching"}
    for method in scores.index:
        row = scores.loc[method]
        assert 0.0 <= row["edge_auroc"] <= 1.0 and 0.0 <= row["node_auroc"] <= 1.0
        assert math.isfinite(row["cpr"]) and row["cmd"] >= 0.0 and row["seconds"] > 0
    # EAP's ranking puts the designed edges first on this one-head circuit
    assert scores.loc["eap", "edge_auroc"] == 1.0 and scores.loc["eap", "top_k_recall"] == 1.0
    assert scores.loc["eap", "f_top_k"] >= 0.9
    curves = small_run["curves"]
    assert len(curves) == 2 * 10 and curves["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)  # all edges
    # the ROC of each method ends at (1, 1) and agreement of a method with itself is 1
    roc = small_run["roc"]
    assert ((roc.groupby(["method", "level"])[["fpr", "tpr"]].last()) == 1.0).all().all()
    agree = small_run["agreement"]
    assert (agree[agree["a"] == agree["b"]]["jaccard"] == 1.0).all()


def test_the_verb_stores_a_run_with_strict_json_and_figures(tmp_path):
    cfg = BenchmarkConfig(models=["gt-prev-token"], methods=["eap", "acdc"], n=8)
    info, result = BENCHMARK.launch(None, cfg, store=Store(tmp_path))
    run = Store(tmp_path).load("benchmark", info.run_id)
    assert set(run.table("scores")["method"]) == {"eap", "acdc"}
    json.dumps(run.summary, allow_nan=False)
    assert "gt-prev-token" in run.json("truths") and BENCHMARK.figures(run)
    assert "mean over models" in result.text()


def test_bad_input_is_refused_with_what_is_accepted():
    with pytest.raises(BenchmarkInputError, match="unknown method.*'magic'.*methods: eap, eap-ig, acdc"):
        check_methods(["eap", "magic"])
    with pytest.raises(ConfigError, match="--models: unknown ground truth.*'gt-nothing'.*gt-prev-token"):
        BenchmarkConfig(models=["gt-nothing"]).check()
    with pytest.raises(ConfigError, match="--threshold must be >= 0"):
        BenchmarkConfig(threshold=-0.1).check()
    with pytest.raises(BenchmarkInputError, match="threshold >= 0"):
        benchmark(["gt-prev-token"], ["acdc"], threshold=-1.0, progress=False)
    from workbench import ground_truth
    from workbench.ground_truth import GroundTruthError

    with pytest.raises(GroundTruthError, match="has no task 'ioi'"):
        ground_truth.get("gt-prev-token").make_task(None, task="ioi")
