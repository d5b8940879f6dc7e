"""The Vision page on stored runs (AppTest): path lengths, pruning, lazy neurons, digits; broken runs are error boxes."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from circuits.vision.analysis import VIT, VitConfig
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "12_Vision.py")
TIMEOUT = 30


@pytest.fixture
def vision_store(tmp_path, monkeypatch, tiny_vit) -> tuple[Store, dict]:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    ids = {}
    for name, cfg in (("full", VitConfig(n=24, examples=3, scale_steps=10)), ("bare", VitConfig(n=24, examples=0,
                                                                                                 scale_steps=10))):
        ids[name] = VIT.save(store, VIT.run(tiny_vit, cfg), tiny_vit, cfg).run_id
    (root / "vit" / "20240103-000000-cccccc").mkdir(parents=True)
    (root / "vit" / "20240103-000000-cccccc" / "manifest.json").write_text("{broken")
    ids["corrupt"] = "20240103-000000-cccccc"
    return store, ids


def _run(target) -> AppTest:
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _select(at: AppTest, run_id: str) -> AppTest:
    box = at.selectbox(key="vit_run")
    return _run(box.select_index(next(i for i, label in enumerate(box.options) if run_id in label)))


def test_vision_page_shows_lengths_pruning_sparsity_and_digits(vision_store):
    store, ids = vision_store
    at = _select(_run(AppTest.from_file(PAGE, default_timeout=TIMEOUT)), ids["full"])
    assert at.title[0].value == "Vision"
    assert [t.label for t in at.tabs] == ["Path lengths", "Pruning and EnsembleScale", "Lazy neurons", "Digits"]
    assert any(m.label == "n_sublayers" and m.value == "4" for m in at.metric)
    frames = [df.value for df in at.dataframe]
    assert any(list(f.get("n_paths", [])) == [1, 4, 6, 4, 1] for f in frames)
    assert any("method" in f.columns and f["method"].iloc[0] == "full model" for f in frames)
    assert any("active" in f.columns and len(f) == 2 for f in frames)
    assert any("below 0.9" in w.value for w in at.warning) == any(
        "below 0.9" in w for w in store.load("vit", ids["full"]).summary.get("warnings", []))
    at = _select(at, ids["bare"])
    assert any("no digits" in i.value for i in at.info)
    at = _select(at, ids["corrupt"])
    assert at.error and ids["corrupt"] in at.error[0].value


def test_empty_store_says_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert any("workbench vit" in i.value for i in at.info)
