"""The Sparsity, Massive and Probes pages, driven headless on fixture runs written with the probes' own table builders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from probes.analysis import massive_tables, sparsity_tables
from probes.massive import MassiveCounter
from probes.sparsity import SparsityCounter
from workbench.store import Store

PAGES = Path(__file__).resolve().parents[1] / "app" / "pages"
TIMEOUT = 60


class _Tok:
    def decode(self, ids):
        return f"<{ids[0]}>"


def _sparsity_stats():
    counter = SparsityCounter([0, 1], taus=(0.1, 1.0))
    torch.manual_seed(0)
    for layer in (0, 1):
        a = torch.relu(torch.randn(2, 5, 16))
        mask = torch.ones(2, 5, dtype=torch.long)
        counter.consume(f"blocks.{layer}.mlp.hook_post", a, mask)
        counter.consume(f"blocks.{layer}.mlp.hook_pre", a - 0.01, mask)
    return counter.stats("relu")


def _massive_stats():
    counter = MassiveCounter([0, 1, 2], 8)
    counter.set_tokens(torch.arange(12).reshape(2, 6))
    torch.manual_seed(0)
    for layer in range(3):
        h = torch.randn(2, 6, 8)
        h[:, 0, 3] = 5000.0 * layer
        counter.consume(f"blocks.{layer}.hook_resid_post", h, torch.ones(2, 6, dtype=torch.long))
    return counter.stats()


@pytest.fixture
def probe_store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    stats = _sparsity_stats()
    with store.create("sparsity", model="toy", params={}, run_id="20240101-000000-aaaaaa") as w:
        layers, tau, tensors = sparsity_tables({"train": stats, "heldout": stats})
        w.save_table("layers", layers)
        w.save_table("tau", tau)
        w.save_tensors("neurons", tensors)
        w.save_table("thresholds", pd.DataFrame([dict(layer=0, method="quantile", quantile=0.5, cutoff=0.1, loss=2.0,
                                                      clean_loss=1.99, rise=0.005, active_fraction=0.5, evaluations=3)]))
        w.save_table("topk", pd.DataFrame(dict(k=[1, 4], fraction=[0.06, 0.25], loss=[3.0, 2.1], clean_loss=[2.0, 2.0],
                                               rise=[0.5, 0.05])))
        w.summary.update(activation="relu", fraction_nonzero_train=stats.overall_nonzero())
    with store.create("massive", model="toy", params={}, run_id="20240101-000000-bbbbbb") as w:
        layers, tensors, tokens = massive_tables(_massive_stats(), _Tok())
        w.save_table("layers", layers)
        w.save_tensors("stats", tensors)
        w.save_table("tokens", tokens)
        w.save_json("intervention", {"loss_clean": 2.0, "loss_zero": 9.0, "loss_mean": 2.01, "loss_random": 2.0})
        w.summary.update(max_value=10000.0, max_layer=2, max_dim=3, max_pos=0, max_ratio=12000.0, massive_layers=[1, 2])
    with store.create("probe", model="toy", params={"corpus": "tweets", "pool": "last", "folds": 3},
                      run_id="20240101-000000-cccccc") as w:
        w.save_table("layers", pd.DataFrame(dict(layer=[-1, 0, 1], accuracy=[0.6, 0.7, 0.8], accuracy_std=[0.1] * 3,
                                                 control_accuracy=[0.5] * 3, control_std=[0.1] * 3, majority=[0.5] * 3)))
        w.summary.update(best_layer=1, best_accuracy=0.8, control_at_best=0.5, n=30)
    for kind in ("sparsity", "massive", "probe"):
        broken = root / kind / "20250101-000000-dddddd"
        broken.mkdir(parents=True)
        (broken / "manifest.json").write_text("{truncated")
    return store


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=TIMEOUT).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page,kind", [("1_Sparsity.py", "sparsity"), ("2_Massive.py", "massive"),
                                       ("3_Probes.py", "probe")])
def test_pages_show_runs_and_survive_corrupt_ones(probe_store, page, kind):
    at = _page(page)
    # the newest run is the corrupt one: it is reported, the page stays up
    assert any("cannot be read" in e.value for e in at.error)
    at = at.selectbox(key="run").select(1).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if kind in e.value]
    assert len(at.metric) >= 3 and len(at.dataframe) >= 1


def test_pages_without_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "empty"))
    for page in ("1_Sparsity.py", "2_Massive.py", "3_Probes.py"):
        at = _page(page)
        assert any("No " in i.value for i in at.info)
