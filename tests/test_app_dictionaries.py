"""The Dictionaries page, driven headless on runs written into a temporary store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from circuits.dictionaries import Dictionary
from circuits.dictionaries.analysis import (
    EVAL_DICT,
    EvalDictionaryConfig,
    dictionary_result,
    run_dictionaries,
)
from circuits.dictionaries.buffer import random_source
from circuits.dictionaries.evaluate import evaluate_dictionaries
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "4_Dictionaries.py")


@pytest.fixture
def dictionary_store(tmp_path, monkeypatch, tiny_llama):
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    dicts = {
        f"sae-k{k}": Dictionary.create("sae", 32, 48, activation="topk", k=k, hook_in="blocks.0.hook_resid_post", seed=k)
        for k in (2, 6)
    }
    src = random_source(65, seq_len=12, batch_size=4, n_batches=2, seed=1, bos_id=64)
    ev = evaluate_dictionaries(tiny_llama, dicts, src, progress=False)
    history = [{"step": s, **{lab: {"mse": 1.0 / (s + 1), "l0": 3.0} for lab in dicts}} for s in range(3)]
    result = dictionary_result(tiny_llama, dicts, ev, history=history, feature_source=src, feature_tokens=96)
    info = EVAL_DICT.save(store, result, "toy/tiny", EvalDictionaryConfig(path=["in-memory"]))
    broken = root / "dictionary" / "20200101-000000-bad000"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    return store, info, dicts


def test_stored_run_round_trips(dictionary_store):
    store, info, dicts = dictionary_store
    run = store.load("dictionary", info.run_id)
    back = run_dictionaries(run)
    assert list(back) == list(dicts)
    for label, d in dicts.items():
        assert all(torch.equal(p, q) for p, q in zip(d.parameters(), back[label].parameters(), strict=True))
    metrics = run.table("metrics")
    assert list(metrics["label"]) == list(dicts) and (metrics["l0"] <= metrics["k"] + 1e-9).all()
    contexts = run.table("contexts-0")
    assert set(contexts.columns) == {"latent", "rank", "activation", "tokens", "highlight"} and len(contexts) > 0
    assert (run.table("history")["label"].nunique()) == 2


def test_page_shows_metrics_and_browser(dictionary_store):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("cannot be read" in e.value for e in at.error)
    assert len(at.dataframe) >= 1
    assert any(s.label == "Dictionary" for s in at.selectbox)
    latent = at.number_input[0]
    latent.set_value(3).run()
    assert not at.exception
    assert any("latent 3" in s.value for s in at.subheader)


def test_page_with_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and any("No dictionary runs" in i.value for i in at.info)
