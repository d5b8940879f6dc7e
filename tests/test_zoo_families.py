"""Zoo checkpoint families: member configs, the shared tokenizer, bit-identical rebuilds, loading every step, curves."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from workbench import zoo
from workbench.models import ModelSpecError, load_model, resolve
from workbench.store import Store
from workbench.ui.cli import main
from workbench.zoo_curves import store_training_run, training_figure, training_tables
from workbench.zoo_families import FAMILIES, MEMBERS, family_members, log_checkpoint_steps, with_overrides
from workbench.zoo_tokenizer import TextConfig, load_text_tokenizer, token_streams

# A small text setting keeps the tokenizer's training to a second or two.
SMALL_TEXT = TextConfig(corpora=("news",), vocab=512)


def tiny_config(name: str, base: str, steps: int = 6):
    """The smallest member's architecture, ``steps`` updates, the small text setting."""
    return with_overrides(MEMBERS[base], name=name, steps=steps, n_checkpoints=5, batch=4, context=32,
                          eval_windows=4, resume_every=4, text=SMALL_TEXT)


@pytest.fixture(scope="module")
def tiny_members():
    """Two tiny members (Llama-style and GPT-style ReLU) registered in the zoo for this module."""
    cfgs = {"tiny-llama": tiny_config("tiny-llama", "llama-d64-l2"), "tiny-gpt": tiny_config("tiny-gpt", "gpt-relu-d64-l2")}
    with pytest.MonkeyPatch.context() as mp:
        for name, cfg in cfgs.items():
            mp.setitem(zoo._REGISTRY, name, lambda cfg=cfg: zoo._family_spec(cfg))
        yield cfgs


def _digests(name: str) -> dict[int, str]:
    root = zoo.folder(name) / "checkpoints"
    return {
        step: hashlib.sha256((root / f"step-{step:07d}" / "model.safetensors").read_bytes()).hexdigest()
        for step in zoo.checkpoint_steps(name)
    }


def test_families_vary_width_and_depth_independently():
    for family in FAMILIES:
        members = [MEMBERS[n] for n in family_members(family)]
        assert len(members) >= 4
        shapes = {(c.d_model, c.n_layers) for c in members}
        widths, depths = {d for d, _ in shapes}, {n for _, n in shapes}
        assert len(widths) >= 2 and len(depths) >= 2
        for d in widths:  # each width at several depths, each depth at several widths
            assert len({n for w, n in shapes if w == d}) >= 2
        params = [c.n_parameters() for c in members]
        assert params == sorted(params)
    assert {MEMBERS[n].activation for n in family_members("gpt")} == {"relu", "gelu_new"}
    assert {MEMBERS[n].arch for n in family_members("llama")} == {"llama"}
    assert zoo.targets("llama") == family_members("llama") and zoo.targets("llama-d64-l2") == ["llama-d64-l2"]
    with pytest.raises(ModelSpecError, match="families: llama, gpt"):
        zoo.targets("mamba")


def test_checkpoint_steps_are_log_spaced_with_step_zero():
    steps = log_checkpoint_steps(600, 24)
    assert len(steps) >= 24 and steps[0] == 0 and steps[-1] == 600 and len(set(steps)) == len(steps)
    gaps = [b - a for a, b in zip(steps[8:], steps[9:], strict=False)]
    assert all(g2 >= g1 for g1, g2 in zip(gaps, gaps[1:], strict=False)), "gaps must widen along training"
    with pytest.raises(ValueError, match="cannot hold"):
        log_checkpoint_steps(10, 24)


def test_tokenizer_round_trips_and_splits_are_disjoint():
    tok = load_text_tokenizer(SMALL_TEXT)
    assert len(tok) == 512
    text = "The Prime Minister said on Tuesday that 42 people had been evacuated."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == text
    streams = token_streams(SMALL_TEXT)
    assert streams["train"].numel() > 10 * streams["heldout"].numel() > 0
    assert int(streams["train"].max()) < 512
    from workbench.data import load_documents

    assert not set(load_documents("news", "train")) & set(load_documents("news", "heldout"))


def test_rebuild_from_scratch_is_bit_identical(tiny_members):
    zoo.build("tiny-llama", progress=False)
    first = _digests("tiny-llama")
    assert len(first) >= 5 and 0 in first
    assert len(set(first.values())) == len(first), "every checkpoint holds different weights"
    zoo.build("tiny-llama", progress=False, force=True)
    assert _digests("tiny-llama") == first


def test_every_saved_step_loads_and_a_missing_one_lists_steps(tiny_members, capsys):
    assert main(["zoo", "build", "tiny-gpt", "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["built"]["tiny-gpt"]
    steps = built["steps"]
    assert steps == list(log_checkpoint_steps(6, 5))
    previous = None
    for step in steps:
        bridge = load_model(f"toy/tiny-gpt@{step}", device="cpu")
        assert bridge.cfg.n_layers == 2 and bridge.cfg.d_model == 64
        if previous is not None:
            assert not torch.equal(bridge.W_in, previous)
        previous = bridge.W_in.detach().clone()
    assert 5 not in steps
    with pytest.raises(ModelSpecError, match=re.escape(f"no checkpoint at step 5; saved steps: {steps}")):
        resolve("toy/tiny-gpt@5")
    assert main(["models", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"]}
    assert cards["toy/tiny-gpt"]["checkpoints"] == steps and cards["toy/llama-d64-l2"]["parameters"].endswith("M")
    manifest = zoo.manifest("tiny-gpt")
    assert set(manifest["final_eval"]) == {"train_loss", "heldout_loss"}


def test_training_curves_are_stored_as_a_run(tiny_members, tmp_path):
    zoo.build("tiny-llama", progress=False)
    losses, evals = training_tables("tiny-llama")
    assert list(losses["step"]) == list(range(1, 7))
    assert list(evals["step"]) == zoo.checkpoint_steps("tiny-llama")
    assert evals["heldout_loss"].iloc[-1] < evals["heldout_loss"].iloc[0]  # six updates already lower the loss
    store = Store(tmp_path / "runs")
    info = store_training_run("tiny-llama", store)
    run = store.load("zoo-training", info.run_id)
    assert run.table("eval")["train_loss"].tolist() == pytest.approx(evals["train_loss"].tolist())
    assert run.summary["checkpoints"] == len(evals)
    fig = training_figure({"tiny-llama": (run.table("loss"), run.table("eval"))})
    assert len(fig.data) == 3
    with pytest.raises(LookupError, match="not built"):
        training_tables("gpt-relu-d128-l4")
