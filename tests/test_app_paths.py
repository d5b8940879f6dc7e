"""The Paths page on stored runs (AppTest): length profile, top paths, lesion curves; broken runs are error boxes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from circuits.paths import analyse_paths
from circuits.paths.analysis import PATHS, PathsConfig, to_result
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "6_Paths.py")
TIMEOUT = 30


@pytest.fixture
def paths_store(tmp_path, monkeypatch, tiny_llama) -> tuple[Store, dict]:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    tokens = torch.tensor([[64, 3, 5, 7, 9, 3, 5, 7]])

    def save_paths_run(store, result, model):
        return PATHS.save(store, to_result(result), model, PathsConfig(prompt="t3 t5 t7 t9 t3 t5 t7"))

    ids = {
        "full": save_paths_run(store, analyse_paths(tiny_llama, tokens, lesion_draws=1, top=5), "tiny-llama").run_id,
        "bare": save_paths_run(store, analyse_paths(tiny_llama, tokens, lesion_draws=0, top=3), "tiny-llama").run_id,
    }
    broken = save_paths_run(store, analyse_paths(tiny_llama, tokens, lesion_draws=0, top=3), "broken")
    (broken.path / "lengths.parquet").write_bytes(b"not parquet")
    ids["broken"] = broken.run_id
    (root / "paths" / "20240103-000000-cccccc").mkdir(parents=True)
    (root / "paths" / "20240103-000000-cccccc" / "manifest.json").write_text("{broken")
    ids["corrupt"] = "20240103-000000-cccccc"
    return store, ids


def _run(target) -> AppTest:
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _select(at: AppTest, run_id: str) -> AppTest:
    box = at.selectbox(key="paths_run")
    return _run(box.select_index(next(i for i, label in enumerate(box.options) if run_id in label)))


def test_paths_page_shows_profile_paths_and_lesions(paths_store):
    store, ids = paths_store
    at = _select(_run(AppTest.from_file(PAGE, default_timeout=TIMEOUT)), ids["full"])
    assert at.title[0].value == "Paths"
    assert any(m.label == "n_sublayers" and m.value == "4" for m in at.metric)
    assert [t.label for t in at.tabs] == ["By path length", "Top paths", "Lesions"]
    frames = [df.value for df in at.dataframe]
    assert any(list(f.get("n_paths", [])) == [1, 4, 6, 4, 1] for f in frames)
    assert any("path" in f.columns and len(f) == 5 for f in frames)
    assert not at.info  # the lesion tab has its figure
    at = _select(at, ids["bare"])
    assert any("no lesion study" in i.value for i in at.info)


def test_broken_runs_are_error_boxes(paths_store):
    _, ids = paths_store
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    for key in ("corrupt", "broken"):
        at = _select(at, ids[key])
        assert at.error and ids[key] in at.error[0].value


def test_empty_store_says_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert any("workbench paths" in i.value for i in at.info)
