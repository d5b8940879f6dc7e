"""The zoo: the induction toy grows induction heads; members build, list and load through toy/<name>@<step>."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from workbench import zoo
from workbench.induction_toy import (
    InductionConfig,
    induction_report,
    induction_tokens,
    train_induction,
    varied_repeat_tokens,
)
from workbench.models import ModelSpecError, load_model, resolve
from workbench.ui.cli import main


def test_small_induction_toy_shows_induction(tiny_toy):
    _, cfg, model = tiny_toy
    report = induction_report(model, cfg)
    assert report["loss_repeated_half"] < 0.2 * report["loss_first_half"], report
    layer1 = report["induction_scores"][1]
    assert max(layer1) > 0.5, layer1
    # An independent check of the same criterion from the raw attention pattern of the best head.
    tokens = induction_tokens(8, cfg.half_len, cfg.vocab, seed=7)
    _, cache = model.run_with_cache(tokens)
    pattern = cache["blocks.1.attn.hook_pattern"][:, max(range(len(layer1)), key=layer1.__getitem__)]
    h = cfg.half_len
    scores = [pattern[:, 1 + h + j, 2 + j].mean().item() for j in range(h)]
    assert sum(scores) / h > 0.5
    # Attention-only in function: the MLP outputs are exactly zero.
    assert torch.count_nonzero(cache["blocks.0.hook_mlp_out"]) == 0


def test_training_data_has_no_fixed_offset():
    tokens = varied_repeat_tokens(64, 16, 128, seed=3, min_period=4)
    assert tokens.shape == (64, 33) and (tokens[:, 0] == 128).all()
    periods = set()
    for row in tokens[:, 1:]:
        for p in range(4, 17):
            if torch.equal(row[p : 2 * p], row[:p]):
                periods.add(p)
                break
    assert len(periods) > 5, "repeats must come at varied periods, or a head could copy by position alone"


@pytest.fixture
def tiny_member(monkeypatch):
    """A zoo member 'tiny' (a few training steps) registered for the test only."""
    cfg = InductionConfig(vocab=32, half_len=6, d_model=16, n_heads=2, batch=8, steps=12, warmup=2, n_checkpoints=4,
                          resume_every=5)
    spec = zoo.ZooSpec(name="tiny", description="test member", architecture="llama", parameters="10k",
                       config=cfg.to_dict(), train=lambda folder, progress: train_induction(cfg, folder, progress=False))
    monkeypatch.setitem(zoo._REGISTRY, "tiny", lambda: spec)
    return cfg


def test_member_builds_once_lists_and_loads_steps(tiny_member, capsys):
    assert not zoo.is_built("tiny")
    with pytest.raises(ModelSpecError, match="not built"):
        zoo.model_dir("tiny", build_missing=False)
    assert main(["zoo", "build", "tiny", "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["built"]["tiny"]
    assert built["steps"][0] == 0 and built["steps"][-1] == tiny_member.steps
    assert zoo.is_built("tiny") and not (zoo.folder("tiny") / "resume").exists()
    manifest = zoo.manifest("tiny")
    assert manifest["config"]["steps"] == tiny_member.steps and manifest["final_loss"] > 0
    mtime = (zoo.folder("tiny") / zoo.MANIFEST).stat().st_mtime_ns
    zoo.build("tiny")  # already built: nothing retrained
    assert (zoo.folder("tiny") / zoo.MANIFEST).stat().st_mtime_ns == mtime
    for step in built["steps"]:
        assert resolve(f"toy/tiny@{step}").is_dir()
    first = load_model("toy/tiny@0", device="cpu")
    last = load_model("toy/tiny", device="cpu")
    assert not torch.equal(first.W_Q, last.W_Q)
    with pytest.raises(ModelSpecError, match=r"saved steps: \[0, 1"):
        resolve("toy/tiny@5000")
    assert main(["models", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"]}
    assert cards["toy/tiny"]["cached"] and cards["toy/tiny"]["checkpoints"] == built["steps"]


def test_a_member_built_under_another_configuration_is_rebuilt(tiny_member, monkeypatch):
    zoo.build("tiny", progress=False)
    assert zoo.is_built("tiny") and not zoo.is_stale("tiny")
    longer = replace(tiny_member, steps=16)  # the member's definition changed after it was built
    spec = zoo.ZooSpec(name="tiny", description="test member", architecture="llama", parameters="10k",
                       config=longer.to_dict(), train=lambda folder, progress: train_induction(longer, folder, progress=False))
    monkeypatch.setitem(zoo._REGISTRY, "tiny", lambda: spec)
    assert zoo.is_stale("tiny") and not zoo.is_built("tiny")
    zoo.build("tiny", progress=False)
    assert zoo.is_built("tiny") and zoo.checkpoint_steps("tiny")[-1] == 16
    assert zoo.manifest("tiny")["config"]["steps"] == 16
