"""The Training page, driven headless on fixture runs in a temporary store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from probes.dynamics_fit import dynamics_curve
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "7_Training.py")
TIMEOUT = 60
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]


def _zoo_training(store: Store, member: str, scale: float) -> None:
    losses = pd.DataFrame({"step": range(1, 65), "loss": np.linspace(8, 5 * scale, 64), "lr": 1e-3})
    evals = pd.DataFrame({"step": STEPS, "train_loss": np.linspace(8, 5 * scale, 8),
                          "heldout_loss": np.linspace(8, 5.2 * scale, 8)})
    with store.create("zoo-training", model=f"toy/{member}", params={}) as run:
        run.save_table("loss", losses)
        run.save_table("eval", evals)
        run.summary["seconds"] = 12.0


def _dynamics(store: Store, with_predictor: bool) -> str:
    rows, fits = [], []
    for member in ("llama-d64-l2", "llama-d128-l2"):
        for layer in range(2):
            params = (5.0 + layer, 1.0, 0.05, 1.0, 2.0)
            ratio = dynamics_curve(np.array(STEPS, float), *params)
            for step, r in zip(STEPS, ratio, strict=True):
                rows.append({"member": member, "step": step, "layer": layer, "massive_ratio": r, "top1": r,
                             "median": 1.0, "mlp_active": 0.5})
            for stat in ("massive_ratio", "mlp_active"):
                fits.append({"member": member, "layer": layer, "statistic": stat, "A": params[0], "lam": 1.0,
                             "gamma": 0.05, "t0": 1.0, "K": 2.0, "r2": 0.99, "t_peak": 20.0, "aic": -50.0,
                             "aic_step": -40.0, "r2_step": 0.9, "n": len(STEPS), "preferred": "five-parameter"})
    with store.create("dynamics", model="toy/llama", params={"target": "llama"}) as run:
        run.save_table("statistics", pd.DataFrame(rows))
        run.save_table("fits", pd.DataFrame(fits))
        if with_predictor:
            run.save_table("predictor", pd.DataFrame({"model": "ridge", "target": ["A", "lam", "gamma", "t0", "K"],
                                                      "r2_lomo": [0.1, -0.2, 0.0, 0.3, 0.5]}))
        else:
            run.summary["predictor"] = "skipped: needs at least 3 members"
    return run.info.run_id


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    return Store(root)


def test_page_shows_curves_and_fits(store):
    _zoo_training(store, "llama-d64-l2", 1.0)
    _zoo_training(store, "gpt-relu-d64-l2", 0.9)
    _dynamics(store, with_predictor=True)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.selectbox(key="family").options == ["all", "gpt", "llama"]
    assert len(at.multiselect(key="members").value) == 2
    assert at.radio(key="dyn_stat").options == ["massive_ratio", "mlp_active"]
    assert len(at.dataframe) == 3  # curves table, fits, predictor
    at.selectbox(key="family").select("llama").run()
    assert not at.exception and at.multiselect(key="members").value == ["toy/llama-d64-l2"]
    at.radio(key="dyn_stat").set_value("mlp_active").run()
    assert not at.exception


def test_unreadable_run_shows_an_error_not_a_crash(store):
    _zoo_training(store, "llama-d64-l2", 1.0)
    run_id = _dynamics(store, with_predictor=False)
    for file in (store.root / "dynamics" / run_id).glob("fits*"):
        file.unlink()
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("cannot be read" in e.value for e in at.error)
    assert len(at.dataframe) == 1


def test_empty_store_says_what_to_run(store):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("workbench zoo build" in i.value for i in at.info)
    assert any("workbench dynamics" in i.value for i in at.info)
