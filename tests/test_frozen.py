"""The one frozen model: ModelFacts of both fixture families, and the capture against the bridge's own hooks."""

from __future__ import annotations

import pytest
import torch

from circuits.frozen import CleanRun, ModelFacts, capture
from circuits.frozen.facts import UnsupportedModelError
from workbench.models import load_model

TOKENS = torch.tensor([[64, 3, 5, 7, 9, 11, 3, 5, 7, 2], [64, 2, 4, 6, 8, 10, 12, 2, 4, 6]])


def test_model_facts_of_the_two_families(tiny_gpt2, tiny_llama):
    gpt = ModelFacts.of(tiny_gpt2)
    assert (gpt.norm, gpt.centered, gpt.eps) == ("LN", True, pytest.approx(1e-5))
    assert (gpt.gated, gpt.act_fn, gpt.act, gpt.has_mlp) == (False, "gelu_new", "tanh", True)
    assert (gpt.n_layers, gpt.d_model, gpt.d_mlp, gpt.n_heads, gpt.n_kv_heads, gpt.d_head) == (2, 32, 128, 4, 4, 8)
    assert (gpt.positional, gpt.rotary_base, gpt.n_ctx, gpt.d_vocab, gpt.bos_id) == ("standard", None, 64, 65, 64)
    assert {"b_Q", "b_K", "b_V", "b_O", "b_in", "b_out"} <= gpt.biases and gpt.unsupported == ()
    llama = ModelFacts.of(tiny_llama)
    assert (llama.norm, llama.centered, llama.rms, llama.eps) == ("RMS", False, True, pytest.approx(1e-6))
    assert (llama.gated, llama.act_fn, llama.act) == (True, "silu", "silu")
    assert (llama.n_heads, llama.n_kv_heads, llama.n_rep, llama.d_mlp) == (4, 2, 2, 64)
    assert (llama.positional, llama.rotary, llama.rotary_base) == ("rotary", True, pytest.approx(10000.0))
    assert not {"b_Q", "b_K", "b_V", "b_in", "b_out"} & llama.biases
    assert llama.check("x") is llama


def test_unsupported_features_are_named():
    facts = ModelFacts(2, 8, 16, 4, 2, 2, 10, 8, "LN", 1e-5, True, False, "softplus", None, "standard", None,
                       frozenset(), None, ())
    with pytest.raises(UnsupportedModelError, match="does not know the activation 'softplus'"):
        facts.check("the path decomposition")
    with pytest.raises(UnsupportedModelError, match="CD-T does not cover models with parallel attention"):
        ModelFacts(**{**vars(facts), "act": "relu", "unsupported": ("parallel attention and MLP (x=True)",)}).check("CD-T")


def _compare(model, run: CleanRun, tol: float) -> None:
    """Every captured value against the hook of the bridge that computes it (relative to its largest entry)."""
    facts = ModelFacts.of(model)
    logits, cache = model.run_with_cache(TOKENS)

    def close(ours, name, theirs=None):
        ref = cache[name] if theirs is None else theirs
        err = float((ours.to(ref) - ref.detach()).abs().max() / ref.abs().max().clamp_min(1e-30))
        assert err < tol, (name, err)

    for layer, lc in enumerate(run.layers):
        b = f"blocks.{layer}"
        close(lc.resid_pre, f"{b}.hook_resid_pre")
        close(1 / lc.scale1, f"{b}.ln1.hook_scale")
        close(lc.normed1, f"{b}.ln1.hook_normalized")
        close(lc.v, f"{b}.attn.hook_v")
        close(lc.pattern, f"{b}.attn.hook_pattern")
        close(lc.z, f"{b}.attn.hook_z")
        close(lc.attn_out, f"{b}.hook_attn_out")
        close(lc.resid_mid, f"{b}.hook_resid_mid")
        close(1 / lc.scale2, f"{b}.ln2.hook_scale")
        close(lc.normed2, f"{b}.ln2.hook_normalized")
        if facts.gated:
            close(lc.gate_pre, f"{b}.mlp.hook_pre")
            close(lc.up, f"{b}.mlp.hook_pre_linear")
        else:
            close(lc.up, f"{b}.mlp.hook_pre")
        close(lc.post, f"{b}.mlp.hook_post")
        close(lc.mlp_out, f"{b}.hook_mlp_out")
        close(lc.resid_post, f"{b}.hook_resid_post")
    close(1 / run.final_scale, "ln_final.hook_scale")
    close(run.logits, "logits", logits)


# float64 tolerance: the bridge's float64 Llama path keeps float32 rounding in its value projection (hook_v, 8e-8)
@pytest.mark.parametrize(("family", "tol64"), [("tiny_gpt2", 1e-10), ("tiny_llama", 1e-6)])
def test_capture_equals_the_bridge_hooks_in_float32_and_float64(family, tol64, request):
    model32 = request.getfixturevalue(family)
    run32 = capture(model32, TOKENS)
    assert run32.embed.dtype == torch.float32 and run32.n_layers == 2
    _compare(model32, run32, 1e-5)
    model64 = load_model(model32.workbench_spec, device="cpu", dtype=torch.float64)
    run64 = capture(model64, TOKENS)
    assert run64.logits.dtype == torch.float64
    _compare(model64, run64, tol64)
    # the float32 model's weights run in float64: the same run as the float32 bridge's, to float32 rounding
    up = capture(model32, TOKENS, torch.float64)
    assert up.logits.dtype == torch.float64
    _compare(model32, up, 1e-5)
