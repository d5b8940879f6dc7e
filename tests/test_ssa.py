"""Stochastically subsampled attention (workbench.ssa) and the ssa verb.

Checked against: transformers' own eager and SDPA attention (the full key set), a float64 softmax over the kept keys
written out by hand, the exact inclusion probabilities of locality-biased sampling, and a brute-force FLOP count."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.attention_override import override
from workbench.errors import ConfigError
from workbench.induction_toy import InductionConfig, make_model
from workbench.ssa import (
    SSAConfig,
    attention_flops,
    ensemble_logprobs,
    kept_counts,
    sample_keep,
    set_mask,
    subsampled_logits,
)
from workbench.ui.cli import main

TINY = InductionConfig(vocab=16, half_len=4, d_model=16, n_heads=2, n_layers=2, batch=4, steps=6, warmup=2)


@pytest.fixture(scope="module")
def model_and_tokens():
    model = make_model(TINY).eval()
    with torch.no_grad():  # random init gives near-uniform attention; sharpen it so that masks matter
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
    tokens = torch.randint(0, TINY.vocab, (3, 11), generator=torch.Generator().manual_seed(1))
    return model, tokens


def test_full_key_set_equals_dense_attention(model_and_tokens):
    model, tokens = model_and_tokens
    keep = sample_keep(3, 11, SSAConfig(fraction=1.0), step=0)
    assert torch.equal(keep, torch.tril(torch.ones(11, 11, dtype=torch.bool)).expand(3, 11, 11))
    with torch.no_grad():
        default = model(input_ids=tokens).logits  # transformers' default implementation (SDPA)
        model.config._attn_implementation = "eager"
        eager = model(input_ids=tokens).logits
        model.config._attn_implementation = "sdpa"
        full = subsampled_logits(model, tokens, SSAConfig(fraction=1.0), draw=0)
        assert torch.equal(full, eager)
        assert torch.allclose(full, default, atol=1e-5)
        assert torch.equal(ensemble_logprobs(model, tokens, SSAConfig(fraction=1.0), k=3),
                           eager.float().softmax(-1).mul(3).div(3).log())


def test_masked_attention_is_a_softmax_over_the_kept_keys(model_and_tokens):
    model, tokens = model_and_tokens
    attn = model.model.layers[0].self_attn
    keep = sample_keep(3, 11, SSAConfig(fraction=0.3, locality=1.0), step=5)
    seen = {}
    hook = attn.register_forward_hook(lambda m, a, kw, out: seen.update(a=a, kw=kw, out=out), with_kwargs=True)
    with torch.no_grad(), override(model):
        set_mask(model, keep)
        model(input_ids=tokens)
        set_mask(model, None)
    hook.remove()
    hidden = seen["kw"]["hidden_states"].double()
    cos, sin = (t.double() for t in seen["kw"]["position_embeddings"])
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    def heads(w):
        return (hidden @ w.weight.double().T).view(3, 11, 2, 8).transpose(1, 2)

    q, k = apply_rotary_pos_emb(heads(attn.q_proj), heads(attn.k_proj), cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    pattern = scores.masked_fill(~keep[:, None], -math.inf).softmax(-1)  # kept keys only, in float64
    z = (pattern @ heads(attn.v_proj)).transpose(1, 2).reshape(3, 11, 16)
    ref = z @ attn.o_proj.weight.double().T
    assert torch.allclose(seen["out"][0].double(), ref, atol=1e-5)


def test_sampling_keeps_the_stated_counts_with_locality_bias():
    cfg = SSAConfig(fraction=0.25, locality=1.0, seed=3)
    keep = sample_keep(4000, 12, cfg, step=2)
    counts = kept_counts(12, 0.25)
    assert counts.tolist() == [max(1, math.ceil(0.25 * (q + 1))) for q in range(12)]
    assert torch.equal(keep.sum(-1), counts.expand(4000, 12))
    assert keep.diagonal(dim1=1, dim2=2).all() and not keep.triu(1).any()
    # query 7 keeps itself and one earlier key, at distance d with probability (1 + d)^-1 / sum_d' (1 + d')^-1
    w = torch.tensor([1 / (1 + d) for d in range(1, 8)], dtype=torch.float64)
    expected = w / w.sum()
    freq = keep[:, 7, :7].double().mean(0).flip(0)  # distance 1 first
    assert torch.allclose(freq, expected, atol=0.025)
    uniform = sample_keep(4000, 12, SSAConfig(fraction=0.25, locality=0.0), step=2)[:, 7, :7].double().mean(0)
    assert torch.allclose(uniform, torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.025)


def test_draws_are_deterministic_per_step():
    cfg = SSAConfig(fraction=0.5)
    assert torch.equal(sample_keep(2, 9, cfg, 4), sample_keep(2, 9, cfg, 4))
    assert not torch.equal(sample_keep(2, 9, cfg, 4), sample_keep(2, 9, cfg, 5))


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), float("inf")])
def test_fraction_outside_the_unit_interval_is_refused(fraction):
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        SSAConfig(fraction=fraction)
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        kept_counts(5, fraction)


def test_attention_flops_count_kept_keys():
    brute = sum(4 * 8 * (q + 1) for q in range(13)) * 2 * 3  # every visible key, 2 heads, 3 layers
    assert attention_flops(13, 8, 2, 3, 1.0) == brute
    kept = sum(max(1, math.ceil(0.25 * (q + 1))) for q in range(13))
    assert attention_flops(13, 8, 2, 3, 0.25) == 4 * 8 * kept * 2 * 3


def test_ssa_verb_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["ssa", "--fraction", "0.5", "--steps", "8", "--evaluations", "2", "--d-model", "16", "--half-len", "4",
            "--vocab", "16", "--batch", "4", "--n-eval", "8", "--ensemble", "2", "--json", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    seq = 9
    kept = sum(max(1, math.ceil(0.5 * (q + 1))) for q in range(seq))
    assert summary["attention_flops_ratio"] == pytest.approx(seq * (seq + 1) / 2 / kept)
    for key in ("dense_loss", "ssa_dense_inference_loss", "ssa_single_subsampled_loss", "ssa_ensemble_loss"):
        assert 0 < summary[key] < 10
    from workbench.store import Store

    store = Store(tmp_path / "runs")
    losses = store.load("ssa", store.latest("ssa").run_id).table("losses")
    assert sorted(losses["k"].unique().tolist()) == [0, 1, 2]


def test_ssa_verb_refuses_a_bad_fraction(capsys):
    assert main(["ssa", "--fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--fraction" in err and len(err.strip().splitlines()) == 1
