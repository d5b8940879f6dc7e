"""The Bigram page on stored runs (AppTest): headline numbers, the four figures and tables; a broken run is an error
box; an empty store says how to fill it."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from circuits.bigram.analysis import BIGRAM, BigramConfig
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "13_Bigram.py")
TIMEOUT = 30


@pytest.fixture
def bigram_store(tmp_path, monkeypatch, tiny_llama):
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    config = BigramConfig(corpus="news", steps=3, bigram_tokens=1024, seq_len=16, batch_size=2, eval_tokens=64,
                          control_draws=2, beta_final=1.0, workdir=str(tmp_path / "work"))
    good, _ = BIGRAM.launch(tiny_llama, config, store=store)
    broken, _ = BIGRAM.launch(tiny_llama, config, store=store)
    (broken.path / "metrics.parquet").write_bytes(b"not parquet")
    return {"good": good.run_id, "broken": broken.run_id}


def _run(target) -> AppTest:
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _select(at: AppTest, run_id: str) -> AppTest:
    box = at.selectbox(key="bigram_run")
    return _run(box.select_index(next(i for i, label in enumerate(box.options) if run_id in label)))


def test_bigram_page_shows_the_run_and_its_warnings(bigram_store):
    at = _select(_run(AppTest.from_file(PAGE, default_timeout=TIMEOUT)), bigram_store["good"])
    assert at.title[0].value == "Bigram subnetworks"
    assert {"kept_fraction", "n_kept", "lm_loss_ablated"} <= {m.label for m in at.metric}
    assert [t.label for t in at.tabs] == ["Where", "Bigram correlation", "Ablation", "Training"]
    frames = [df.value for df in at.dataframe]
    assert any(list(f.get("condition", [])) == ["full", "subnetwork", "empty", "ablated", "random-0", "random-1"]
               for f in frames)
    assert any("undecided" in w.value for w in at.warning)   # beta stays 1: the masks end undecided


def test_a_broken_run_is_an_error_box(bigram_store):
    at = _select(_run(AppTest.from_file(PAGE, default_timeout=TIMEOUT)), bigram_store["broken"])
    assert at.error and bigram_store["broken"] in at.error[0].value


def test_empty_store_says_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert any("workbench bigram" in i.value for i in at.info)
