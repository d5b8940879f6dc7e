"""The Circuits page on stored fixture runs (AppTest): graphs, thresholds, side-by-side scores, word highlights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from streamlit.testing.v1 import AppTest

from workbench.circuit import Circuit
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "5_Circuits.py")
TIMEOUT = 30


def _circuit() -> Circuit:
    c = Circuit("induction", metadata={"task": "induction"})
    c.add_node("L0.H1@5", score=0.8, token="t3")
    c.add_node("L1.H0@9", score=1.5, token="t3")
    c.add_node("L1.H1@9", score=0.05)
    c.add_node("logit")
    c.add_edge("L0.H1@5", "L1.H0@9", 0.7)
    c.add_edge("L1.H0@9", "logit", 1.4)
    c.add_edge("L1.H1@9", "logit", 0.01)
    return c


def _heads(scores: np.ndarray) -> pd.DataFrame:
    layers, heads = np.indices(scores.shape)
    return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "score": scores.ravel()})


CDT = np.array([[0.1, 0.9], [2.0, 0.3]])
PATCH = np.array([[0.2, 0.7], [1.6, 0.1]])


@pytest.fixture
def circuit_store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    with store.create("patching", model="toy/induction-2l", run_id="20240101-000000-aaaaaa") as w:
        heads = _heads(PATCH).assign(position=-1, component="head")
        layers = pd.DataFrame({"layer": [0, 1], "head": [-1, -1], "position": -1, "component": "mlp", "score": [9.0, 9.0]})
        w.save_table("scores", pd.concat([heads, layers], ignore_index=True))
        w.summary["faithfulness"] = 0.91
    with store.create("cdt", model="toy/induction-2l", run_id="20240102-000000-bbbbbb") as w:
        w.save_json("circuit", _circuit().to_json())
        w.save_tensors("head_scores", {"per_head": torch.tensor(CDT)})
        w.save_table("words", pd.DataFrame({"text_index": 0, "phrase": ["I", "love", "it"], "contribution": [0.1, 2.5, -0.4]}))
        w.summary.update({"faithfulness": 0.87, "nodes": 3})
    (root / "cdt" / "20240103-000000-cccccc").mkdir(parents=True)
    (root / "cdt" / "20240103-000000-cccccc" / "manifest.json").write_text("{broken")
    return store


def _run(target) -> AppTest:
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_circuits_page_shows_graph_scores_and_words(circuit_store):
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert at.title[0].value == "Circuits"
    run_box = at.selectbox(key="circuit_run")
    labels = list(run_box.options)
    cdt_index = next(i for i, label in enumerate(labels) if "bbbbbb" in label)
    at = _run(run_box.select_index(cdt_index))
    assert any(m.label == "faithfulness" and m.value == "0.87" for m in at.metric)
    assert any("3 of 4 nodes" in c.value or "4 of 4 nodes" in c.value for c in at.caption)
    # raising the node threshold drops the weak head (its edge goes with it)
    sliders = [s for s in at.slider if s.label.startswith("Node threshold")]
    at = _run(sliders[0].set_value(0.5))
    assert any("3 of 4 nodes" in c.value for c in at.caption)
    words = [m.value for m in at.markdown if "love" in m.value]
    assert words and "rgba(33,102,172,1.00)" in words[0] and "178,24,43" in words[0]
    # the CD-T versus patching tab reports the rank correlation of the two score matrices
    rho = spearmanr(CDT.ravel(), PATCH.ravel()).statistic
    assert any(m.label.startswith("Spearman") and m.value == f"{rho:.3f}" for m in at.metric)


def test_corrupt_circuit_run_is_an_error_box(circuit_store):
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    run_box = at.selectbox(key="circuit_run")
    labels = list(run_box.options)
    at = _run(run_box.select_index(next(i for i, label in enumerate(labels) if "cccccc" in label)))
    assert at.error and "corrupt" in at.error[0].value


def test_empty_store_says_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert any("workbench cdt" in i.value for i in at.info)
