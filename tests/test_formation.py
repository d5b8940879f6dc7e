"""Clamps during training (workbench.clamp), the phase-change reading, and the formation verb.

Checked against independent computations: an unclamped run's weights (bit for bit), the residual stream after a
zeroed layer (the embedding itself), hand-built uniform patterns, and brute-force steepest-drop search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.formation.measure import phase_change
from circuits.formation.sweep import expand
from workbench.clamp import Clamp, ClampIntervention, parse_clamp
from workbench.errors import ConfigError
from workbench.induction_toy import InductionConfig, make_model, train_induction
from workbench.ui.cli import main

TINY = InductionConfig(vocab=16, half_len=4, d_model=16, n_heads=2, n_layers=2, batch=4, steps=6, warmup=2,
                       n_checkpoints=2, resume_every=100)


def _final(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "checkpoints" / f"step-{TINY.steps:07d}" / "model.safetensors")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    train_induction(TINY, folder, progress=False)
    return _final(folder)


@pytest.mark.parametrize("clamps", [[], [Clamp("L1.H0.pattern", "uniform", 100, 200), Clamp("L0.attn", "zero", 6)]],
                         ids=["none", "outside-the-steps"])
def test_a_clamp_of_nothing_reproduces_the_unclamped_run_bit_for_bit(plain, clamps, tmp_path):
    train_induction(TINY, tmp_path, progress=False, interventions=[ClampIntervention(clamps)])
    weights = _final(tmp_path)
    assert weights.keys() == plain.keys()
    assert all(torch.equal(weights[k], plain[k]) for k in plain)


def test_an_active_clamp_changes_training(plain, tmp_path):
    train_induction(TINY, tmp_path, progress=False, interventions=[ClampIntervention([parse_clamp("L0.H1.output=zero")])])
    assert not torch.equal(_final(tmp_path)["model.layers.1.self_attn.q_proj.weight"],
                           plain["model.layers.1.self_attn.q_proj.weight"])


class _Spy:
    """An intervention attached after the clamps: records, at each training step, what the model computed."""

    def __init__(self):
        self.step, self.seen = None, {}

    def attach(self, model):
        self.model = model
        layers = model.model.layers

        def o_proj_input(module, args):  # registered after the clamp's pre-hook: sees the clamped input
            self.seen.setdefault(self.step, {})["head1"] = args[0][..., 8:16].detach().clone()

        def layer1_input(module, args, kwargs):
            self.seen.setdefault(self.step, {})["resid1"] = args[0].detach().clone() if args else \
                kwargs["hidden_states"].detach().clone()

        self.handles = [layers[0].self_attn.o_proj.register_forward_pre_hook(o_proj_input),
                        layers[1].register_forward_pre_hook(layer1_input, with_kwargs=True)]
        for attn in (layers[0].self_attn, layers[1].self_attn):
            attn.workbench_record = []

    def begin_step(self, step, tokens):
        self.step, self.tokens = step, tokens
        self.seen.setdefault(step, {})["embed"] = self.model.model.embed_tokens(tokens).detach().clone()
        for attn in (self.model.model.layers[0].self_attn, self.model.model.layers[1].self_attn):
            attn.workbench_record = []
        self.model.model.layers[1].self_attn.workbench_record = self.seen[step].setdefault("patterns1", [])

    def begin_eval(self, step):
        self.step = ("eval", step)

    def detach(self):
        for h in self.handles:
            h.remove()


def test_zero_and_pattern_clamps_act_inside_their_window_only(tmp_path):
    from workbench.clamp import fixed_pattern

    spy = _Spy()
    clamps = [parse_clamp("L0.H1.output=zero@2:4"), parse_clamp("L0.attn=zero@3:5"),
              parse_clamp("L1.H0.pattern=uniform@1:3")]
    train_induction(TINY, tmp_path, progress=False, interventions=[ClampIntervention(clamps), spy])
    seq = 1 + 2 * TINY.half_len
    q = torch.arange(seq)[:, None].float()
    uniform = (torch.arange(seq)[None, :] <= q).float() / (q + 1)  # by hand: 1 / (q + 1) on keys 0..q
    assert torch.allclose(fixed_pattern("uniform", seq, seq), uniform)
    for step in range(TINY.steps):
        seen = spy.seen[step]
        head_zero = bool((seen["head1"] == 0).all())
        assert head_zero == (2 <= step < 4), step
        resid_is_embed = torch.equal(seen["resid1"], seen["embed"])  # layer 0 adds nothing: the embedding itself
        assert resid_is_embed == (3 <= step < 5), step
        if 1 <= step < 3:  # patterns are recorded only while the workbench attention function runs
            (pattern,) = seen["patterns1"]
            assert torch.allclose(pattern[:, 0], uniform.expand_as(pattern[:, 0]))
            assert not torch.allclose(pattern[:, 1], uniform.expand_as(pattern[:, 1]))
        else:
            assert not seen.get("patterns1")


def test_mean_clamp_replaces_a_head_by_its_batch_mean():
    model = make_model(TINY).eval()
    tokens = torch.randint(0, TINY.vocab, (5, 9), generator=torch.Generator().manual_seed(0))
    seen = {}
    iv = ClampIntervention([parse_clamp("L1.H1.output=mean")])
    iv.attach(model)
    hook = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    iv.begin_step(0, tokens)
    with torch.no_grad():
        model(input_ids=tokens)
    hook.remove()
    iv.detach()
    x = seen["x"][..., 8:16]
    assert torch.allclose(x, x.mean(0, keepdim=True).expand_as(x)) and x.abs().sum() > 0
    assert not torch.allclose(seen["x"][..., :8], seen["x"][..., :8].mean(0, keepdim=True).expand(5, 9, 8))


def test_phase_change_is_the_steepest_drop():
    steps = np.arange(0, 1001, 50)
    loss = 4.0 - 3.0 / (1 + np.exp(-(steps - 430) / 30))  # a sigmoid fall centred at 430
    brute = steps[1:][np.argmax(-(np.diff(loss)))]
    step, drop = phase_change(steps.tolist(), loss.tolist())
    assert step == brute == 450 and drop == pytest.approx(max(-np.diff(loss)))
    slow = np.linspace(4.0, 3.0, len(steps))  # a steady decline of 1 nat: drops of 0.05, no phase change
    assert phase_change(steps.tolist(), slow.tolist()) == (None, pytest.approx(0.05))
    # uneven spacing: the steepest slope, not the largest drop (0.9 over 100 steps against 0.6 over 10)
    assert phase_change([0, 100, 110, 200], [4.0, 3.1, 2.5, 2.4], min_drop=0.5) == (110, pytest.approx(0.6))
    with pytest.raises(ValueError, match="increase"):
        phase_change([0, 10, 10], [1.0, 0.5, 0.1])


def test_clamp_text_and_components():
    assert parse_clamp("L1.H0.pattern=previous-token@5:").text() == "L1.H0.pattern=previous-token@5:"
    assert Clamp("L0.attn", "zero", 3, 7).active(3) and not Clamp("L0.attn", "zero", 3, 7).active(7)
    assert [e.label for e in expand(["none", "L1.H*.output=zero", "prev.pattern=uniform"], 2, 3)] == [
        "none", "L1.H0.output=zero", "L1.H1.output=zero", "L1.H2.output=zero", "prev.pattern=uniform"]
    with pytest.raises(ConfigError, match="uniform"):
        parse_clamp("L0.attn=uniform")  # a layer's output has no pattern
    with pytest.raises(ConfigError, match="COMPONENT=WHAT"):
        parse_clamp("L0.attn")
    with pytest.raises(ConfigError, match=r"'L2\.H0\.pattern' does not exist.*L0\.H0\.pattern.*L1\.mlp"):
        expand(["L2.H0.pattern=uniform"], 2, 2)
    with pytest.raises(ConfigError, match=r"'L0\.H5\.output' does not exist"):
        ClampIntervention([Clamp("L0.H5.output", "zero")]).attach(make_model(TINY))


def test_formation_verb_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["formation", "--clamps", "none", "prev.pattern=uniform", "L0.attn=zero", "--steps", "12",
            "--evaluations", "4", "--d-model", "16", "--half-len", "4", "--vocab", "16", "--batch", "4",
            "--n-eval", "8", "--json", "--quiet"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = out["summary"]
    assert set(summary["phase_change_steps"]) == {"none", "prev.pattern=uniform", "L0.attn=zero"}
    assert summary["prev_head"] in (0, 1)
    assert any("no phase change" in w for w in summary["warnings"])  # 12 steps: too short, and said so
    from workbench.store import Store

    run = Store(tmp_path / "runs").load("formation", Store(tmp_path / "runs").latest("formation").run_id)
    heads = run.table("heads")
    prev = heads[(heads["clamp"] == "prev.pattern=uniform") & (heads["layer"] == 0) & (heads["step"] > 0)]
    clamped = prev[prev["head"] == summary["prev_head"]]
    # a uniform pattern over q + 1 keys gives previous-token score mean_q 1 / (q + 1), q = 1..8
    assert np.allclose(clamped["previous_token"], np.mean([1 / (q + 1) for q in range(1, 9)]), atol=1e-6)


def test_formation_refuses_a_component_the_toy_lacks(capsys):
    assert main(["formation", "--clamps", "L3.H0.pattern=uniform", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "L3.H0.pattern" in err and "L0.H0.pattern" in err and len(err.strip().splitlines()) == 1
