"""Training dynamics: the five-parameter fit recovers known curves, statistics match the bridge, runs are stored."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from probes.dynamics import (
    checkpoint_statistics,
    dynamics_figure,
    fit_table,
    heldout_sequences,
    member_statistics,
)
from probes.dynamics_analysis import DYNAMICS, DynamicsConfig
from probes.dynamics_fit import TooFewCheckpointsError, dynamics_curve, fit_dynamics, peak_step
from probes.dynamics_predict import FEATURES, layer_features, predictor_scores
from workbench import zoo
from workbench.models import load_model
from workbench.store import Store
from workbench.train import CHECKPOINTS, step_dir
from workbench.ui.cli import main
from workbench.zoo_families import MEMBERS, with_overrides
from workbench.zoo_tokenizer import TextConfig

STEPS = np.array([0, 1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 35, 45, 59, 77, 99, 128, 166, 215, 278, 359, 400], float)
SMALL_TEXT = TextConfig(corpora=("news",), vocab=512)


@pytest.mark.parametrize(
    "true", [(50.0, 3.0, 0.02, 1.0, 5.0), (20.0, 0.5, 0.01, 1.5, 2.0), (-10.0, 2.0, 0.05, 1.0, 30.0)]
)
def test_fit_recovers_known_curves_from_noisy_data(true):
    rng = np.random.default_rng(0)
    clean = dynamics_curve(STEPS, *true)
    noisy = clean + rng.normal(0, 0.01 * np.ptp(clean), len(STEPS))
    fit = fit_dynamics(STEPS, noisy)
    assert fit.r2 > 0.99
    assert np.abs(fit.predict(STEPS) - clean).max() < 0.05 * np.ptp(clean)
    assert fit.K == pytest.approx(true[4], abs=0.1 * np.ptp(clean))
    assert fit.predict(np.array([fit.t_peak]))[0] == pytest.approx(dynamics_curve(np.array([peak_step(*true[1:4])]), *true)[0], abs=0.03 * np.ptp(clean))
    assert fit.t_peak == pytest.approx(peak_step(*true[1:4]), rel=0.1)
    assert fit.aic < fit.aic_step  # a peaked curve is not a step


def test_peak_solves_the_stationary_condition():
    lam, gamma, t0 = 0.7, 0.03, 1.2
    t = peak_step(lam, gamma, t0)
    x = gamma * t + t0
    assert lam * x * np.log(x) == pytest.approx(1.0)  # d/dx exp(-lam x) log x = 0
    grid = np.linspace(0, 3 * t, 20001)
    assert grid[np.argmax(dynamics_curve(grid, 1.0, lam, gamma, t0, 0.0))] == pytest.approx(t, rel=1e-3)
    assert peak_step(0.0, gamma, t0) == np.inf


def test_a_step_is_preferred_to_the_peaked_model_by_aic():
    rng = np.random.default_rng(1)
    y = 3 + 7 / (1 + np.exp(-(np.log1p(STEPS) - 3.0) / 0.3)) + rng.normal(0, 0.02, len(STEPS))
    fit = fit_dynamics(STEPS, y)
    assert fit.r2_step > 0.99 and fit.aic_step < fit.aic


def test_too_few_checkpoints_is_a_clear_error():
    with pytest.raises(TooFewCheckpointsError, match="at least 5 checkpoints, got 4"):
        fit_dynamics(STEPS[:4], STEPS[:4])
    stats = pd.DataFrame({"member": "m", "layer": 0, "step": [0, 1, 2, 4], "massive_ratio": [1.0, 2, 3, 4],
                          "mlp_active": 0.5})
    with pytest.raises(TooFewCheckpointsError, match="toy/m layer 0 has 4 checkpoints"):
        fit_table(stats)
    with pytest.raises(ValueError, match="accepted: massive_ratio, mlp_active"):
        fit_table(stats, "entropy")


def test_predictor_scores_a_learnable_target_above_a_random_one():
    configs = {f"m{d}-{n}": {"d_model": d, "n_layers": n, "n_heads": d // 32, "d_mlp": 4 * d}
               for d in (64, 128, 256) for n in (2, 4)}
    rng = np.random.default_rng(0)
    rows = []
    for m, c in configs.items():
        for layer in range(c["n_layers"]):
            f = layer_features(c["d_model"], c["n_layers"], c["n_heads"], c["d_mlp"], layer)
            rows.append({"member": m, "layer": layer, "K": float(np.exp(2 * f["rel_depth"] + f["log_d_model"])),
                         "lam": float(np.exp(rng.normal())), "A": 1.0, "gamma": 1.0, "t0": 1.0})
    scores = predictor_scores(pd.DataFrame(rows), configs, models=("ridge",)).set_index(["model", "target"])["r2_lomo"]
    assert scores["ridge", "K"] > 0.9
    assert scores["ridge", "lam"] < 0.5
    assert len(FEATURES) == 9


@pytest.fixture(scope="module")
def tiny_family():
    """Two tiny members (6 and 3 checkpoints) registered in the zoo for this module, with the small text."""
    base = MEMBERS["gpt-relu-d64-l2"]
    cfgs = {
        "dyn-gpt": with_overrides(base, name="dyn-gpt", steps=10, n_checkpoints=6, batch=4, context=32, eval_windows=4,
                                  text=SMALL_TEXT),
        "dyn-short": with_overrides(base, name="dyn-short", steps=2, n_checkpoints=3, batch=4, context=32,
                                    eval_windows=4, text=SMALL_TEXT),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, cfg in cfgs.items():
            mp.setitem(zoo._REGISTRY, name, lambda cfg=cfg: zoo._family_spec(cfg))
        yield cfgs


def test_statistics_match_the_bridge_hooks(tiny_family):
    stats = member_statistics("dyn-gpt", n_sequences=3, progress=False)
    steps = zoo.checkpoint_steps("dyn-gpt")
    assert sorted(stats["step"].unique()) == steps and sorted(stats["layer"].unique()) == [0, 1]
    tokens = heldout_sequences("dyn-gpt", 3)
    assert tokens.shape == (3, 32)
    from transformers import AutoModelForCausalLM

    folder = step_dir(zoo.folder("dyn-gpt") / CHECKPOINTS, steps[-1])
    with torch.no_grad():
        hidden = AutoModelForCausalLM.from_pretrained(str(folder))(tokens, output_hidden_states=True).hidden_states
    row0 = stats[(stats["step"] == steps[-1]) & (stats["layer"] == 0)].iloc[0]
    h = hidden[1].abs().flatten(1).double()  # the residual stream after block 0
    expected = (h.max(dim=1).values / h.median(dim=1).values).mean().item()
    assert row0["massive_ratio"] == pytest.approx(expected, rel=1e-6)
    assert row0["top1"] == pytest.approx(h.max(dim=1).values.mean().item(), rel=1e-6)
    bridge = load_model(f"toy/dyn-gpt@{steps[-1]}", device="cpu")
    _, cache = bridge.run_with_cache(tokens)
    row = stats[(stats["step"] == steps[-1]) & (stats["layer"] == 1)].iloc[0]
    pre = cache["blocks.1.mlp.hook_pre"]
    assert row["mlp_active"] == pytest.approx((pre > 0).float().mean().item(), abs=1e-6)
    again = checkpoint_statistics(folder, tokens, relu=True)
    assert again["massive_ratio"].tolist() == pytest.approx(stats[stats["step"] == steps[-1]]["massive_ratio"].tolist())
    assert not torch.isnan(torch.tensor(stats["massive_ratio"].to_numpy())).any()


def test_dynamics_run_is_stored_and_short_members_are_refused(tiny_family, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    assert main(["dynamics", "dyn-gpt", "--sequences", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["run"]["kind"] == "dynamics" and payload["summary"]["members"] == ["dyn-gpt"]
    store = Store(tmp_path / "runs")
    run = store.load("dynamics", payload["run"]["run_id"])
    fits = run.table("fits")
    assert set(fits["statistic"]) == {"massive_ratio", "mlp_active"} and len(fits) == 4
    assert np.isfinite(fits["r2"]).all() and fits["r2"].max() <= 1.0
    assert "predictor" not in run.names() and "skipped" in run.summary["predictor"]
    assert len(run.table("statistics")) == 2 * len(zoo.checkpoint_steps("dyn-gpt"))
    fig = dynamics_figure(run.table("statistics"), fits)
    assert len(fig.data) == 4
    with pytest.raises(TooFewCheckpointsError, match=r"toy/dyn-short has 3 checkpoints \(steps \[0, 1, 2\]\)"):
        DYNAMICS.launch(None, DynamicsConfig(target="dyn-short"), store=store)
    assert main(["dynamics", "dyn-short"]) == 2
    assert "needs at least 5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a checkpoint-family member"):
        DYNAMICS.launch(None, DynamicsConfig(target="induction-2l"), store=store)


def test_any_checkpoint_folder_is_measured_and_fitted_like_a_member(tiny_family, tmp_path, monkeypatch, capsys):
    from probes.dynamics_external import (
        CheckpointSourceError,
        analyse_checkpoints,
        checkpoint_sequences,
        find_checkpoints,
    )

    zoo.build("dyn-gpt", progress=False)
    folder = zoo.folder("dyn-gpt") / CHECKPOINTS
    found = find_checkpoints(str(folder))
    assert [c.step for c in found] == zoo.checkpoint_steps("dyn-gpt")
    result = analyse_checkpoints(str(folder), name="ext", n_sequences=3, context=24, progress=False)
    stats = result["statistics"]
    assert sorted(stats["step"].unique()) == zoo.checkpoint_steps("dyn-gpt") and set(stats["member"]) == {"ext"}
    tokens = checkpoint_sequences(found[0], 3, 24)
    assert tokens.shape == (3, 24)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():  # an independent reading of the last checkpoint's residual stream after block 0
        hidden = AutoModelForCausalLM.from_pretrained(found[-1].source)(tokens, output_hidden_states=True).hidden_states
    h = hidden[1].abs().flatten(1).double()
    row = stats[(stats["step"] == found[-1].step) & (stats["layer"] == 0)].iloc[0]
    assert row["massive_ratio"] == pytest.approx((h.max(1).values / h.median(1).values).mean().item(), rel=1e-6)
    assert len(result["fits"]) == 4 and np.isfinite(result["fits"]["r2"]).all()
    assert result["configs"]["ext"]["activation"] == "relu" and result["configs"]["ext"]["n_layers"] == 2
    cfg = DynamicsConfig(target=str(folder), checkpoints=True, name="ext", sequences=3, context=24)
    info, _ = DYNAMICS.launch(None, cfg, store=Store(tmp_path / "runs"))
    assert Store(tmp_path / "runs").load("dynamics", info.run_id).summary["members"] == ["ext"]
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "cli-runs"))
    assert main(["dynamics", str(folder), "--checkpoints", "--sequences", "3", "--context", "24", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["summary"]["members"] == [CHECKPOINTS]
    assert Store(tmp_path / "cli-runs").load("dynamics", payload["run"]["run_id"]).model == str(folder)
    assert main(["dynamics", str(tmp_path / "missing"), "--checkpoints"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # revisions of one hub model: steps read from the names, sorted; nothing is fetched to parse them
    revs = find_checkpoints("org/model@step2000, step30,step1000")
    assert [(c.step, c.revision) for c in revs] == [(30, "step30"), (1000, "step1000"), (2000, "step2000")]
    with pytest.raises(CheckpointSourceError, match="names no step"):
        find_checkpoints("org/model@main")
    with pytest.raises(CheckpointSourceError, match="holds no checkpoint subfolders"):
        find_checkpoints(str(tmp_path))
    with pytest.raises(CheckpointSourceError, match="is not a folder"):
        find_checkpoints(str(tmp_path / "missing"))
    zoo.build("dyn-short", progress=False)
    with pytest.raises(TooFewCheckpointsError, match="has 3 checkpoints"):
        analyse_checkpoints(str(zoo.folder("dyn-short") / CHECKPOINTS), progress=False)
