"""Model loading: SmolLM2 against transformers' own model, hook names, specs and errors."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.models import ModelCacheError, ModelSpecError, list_models, load_model, resolve

PROMPTS = [
    "The war lasted from 1735 to 17",
    "When Mary and John went to the store, John gave a drink to",
    "Interpretability researchers study the internal mechanisms of neural networks.",
]

DESIGN_HOOKS = [
    "blocks.{L}.hook_resid_pre",
    "blocks.{L}.hook_resid_post",
    "blocks.{L}.attn.hook_z",
    "blocks.{L}.attn.hook_pattern",
    "blocks.{L}.ln2.hook_normalized",
    "blocks.{L}.mlp.hook_pre",
    "blocks.{L}.mlp.hook_post",
    "blocks.{L}.hook_mlp_out",
    "blocks.{L}.hook_attn_out",
    "ln_final.hook_scale",
    "hook_embed",
]


def test_smollm2_matches_transformers_log_probs(smollm2, smollm2_reference):
    ref_model, ref_tokenizer = smollm2_reference
    for prompt in PROMPTS:
        tokens = smollm2.to_tokens(prompt)
        assert tokens[0, 0].item() == ref_tokenizer.bos_token_id
        with torch.no_grad():
            ours = smollm2(tokens).log_softmax(-1)
            ref = ref_model(tokens).logits.log_softmax(-1)
        assert ours.shape == ref.shape
        diff = (ours - ref).abs().max().item()
        assert diff < 1e-3, f"{prompt!r}: max |log p difference| = {diff}"


def test_smollm2_exposes_design_hooks_and_weights(smollm2):
    _, cache = smollm2.run_with_cache("Hello world.")
    n = smollm2.cfg.n_layers
    for layer in (0, n - 1):
        for pattern in DESIGN_HOOKS:
            assert pattern.format(L=layer) in cache, pattern
    assert cache["blocks.3.attn.hook_pattern"].shape[1:2] == (9,)
    assert tuple(smollm2.W_Q.shape) == (30, 9, 576, 64)
    assert tuple(smollm2.W_K.shape) == (30, 3, 576, 64)
    assert tuple(smollm2.W_gate.shape) == (30, 576, 1536)
    assert tuple(smollm2.W_U.shape) == (576, 49152)


def test_broken_cache_entry_is_refused(smollm2):
    folder = resolve("smollm2-135m")
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[: len(original) // 2])
        with pytest.raises(ModelCacheError, match="broken cache entry"):
            resolve("smollm2-135m")
    finally:
        weights.write_bytes(original)
    assert resolve("smollm2-135m") == folder


def test_unknown_specs_name_what_is_available():
    with pytest.raises(ModelSpecError, match="smollm2-135m"):
        resolve("no-such-model")
    with pytest.raises(ModelSpecError, match="toy/induction-2l"):
        resolve("toy/no-such-toy")
    with pytest.raises(ModelSpecError, match="malformed"):
        resolve("toy/a@b@c")
    with pytest.raises(ModelSpecError):
        resolve("")


def test_local_folder_loads_and_missing_step_lists_steps(tiny_toy, monkeypatch):
    folder, cfg, bridge = tiny_toy
    assert bridge.cfg.n_layers == 2 and bridge.cfg.n_heads == cfg.n_heads
    # A zoo member served from the tiny toy's folder: steps resolve, a missing step names the saved ones.
    from workbench import zoo

    monkeypatch.setattr(zoo, "folder", lambda name: folder)
    monkeypatch.setattr(zoo, "is_built", lambda name: True)
    steps = zoo.checkpoint_steps("induction-2l")
    assert steps[0] == 0 and steps[-1] == cfg.steps and len(steps) >= 4
    assert resolve(f"toy/induction-2l@{steps[1]}").name == f"step-{steps[1]:07d}"
    model = load_model(f"toy/induction-2l@{steps[1]}", device="cpu")
    assert model.cfg.d_model == cfg.d_model
    with pytest.raises(ModelSpecError, match=r"saved steps: \[0, "):
        resolve("toy/induction-2l@123456")


def test_list_models_cards():
    cards = {c.name: c for c in list_models()}
    assert "smollm2-135m" in cards and "toy/induction-2l" in cards
    assert cards["smollm2-135m"].license == "Apache-2.0"
    json.dumps([c.to_dict() for c in cards.values()])


def test_a_bare_cuda_under_torchrun_is_the_ranks_own_gpu(monkeypatch):
    """Each torchrun process loads its model on its own GPU (cuda:LOCAL_RANK), not all on cuda:0."""
    from workbench.models import process_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_device("cuda") == "cuda" and process_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert process_device("cuda") == "cuda:3"
    assert process_device("cuda:1") == "cuda:1" and process_device("cpu") == "cpu"
