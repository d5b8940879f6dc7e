"""probes.sparsity and probes.thresholds: streamed counts equal a brute-force count from a full activation cache."""

from __future__ import annotations

import pytest
import torch

from probes.sparsity import SparsityCounter, check_budget, corpus_sparsity, measure_sparsity
from probes.thresholds import heldout_loss, next_token_loss_sum, performance_thresholds, topk_losses
from workbench.data import token_batches

DOCS = [" ".join(f"t{(7 * i + j * j) % 64}" for j in range(40 + i)) for i in range(30)]


@pytest.fixture(scope="module")
def relu_folder(tmp_path_factory):
    """A random GPT-style model with ReLU MLPs saved as a Hugging Face folder: 2 layers, d_model 32, d_mlp 128."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from workbench.induction_toy import make_tokenizer

    config = GPT2Config(vocab_size=65, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=64,
                        eos_token_id=64, activation_function="relu")
    folder = tmp_path_factory.mktemp("relu-toy")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
    make_tokenizer(config.vocab_size - 1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def relu_toy(relu_folder):
    """The ReLU toy's bridge."""
    from workbench.models import load_model

    return load_model(str(relu_folder), device="cpu")


def _batches(model, n=2048, seq_len=32, batch_size=4):
    return list(token_batches(DOCS, model.tokenizer, seq_len=seq_len, batch_size=batch_size, max_tokens=n))


def test_relu_sparsity_equals_brute_force(relu_toy):
    batches = _batches(relu_toy, n=1000)  # the last batch is partly padding
    stats = measure_sparsity(relu_toy, batches, taus=(0.0, 0.05, 0.5), progress=False)
    assert stats.activation == "relu"
    nonzero = torch.zeros(2, relu_toy.cfg.d_mlp, dtype=torch.long)
    above = torch.zeros(2, 3, relu_toy.cfg.d_mlp, dtype=torch.long)
    n = 0
    for b in batches:
        _, cache = relu_toy.run_with_cache(b.tokens)
        real = b.attention_mask.bool()
        n += int(real.sum())
        for layer in range(2):
            a = cache[f"blocks.{layer}.mlp.hook_post"][real]
            nonzero[layer] += (a != 0).sum(0)
            for j, tau in enumerate((0.0, 0.05, 0.5)):
                above[layer, j] += (a.abs() > tau).sum(0)
    assert stats.n_tokens == n == 1000
    assert torch.equal(stats.nonzero, nonzero)
    assert torch.equal(stats.above_tau, above)
    assert torch.equal(stats.positive_pre, nonzero)  # ReLU: a != 0 exactly when the pre-activation is > 0
    frac = nonzero.double().sum(-1) / (n * relu_toy.cfg.d_mlp)
    assert torch.allclose(stats.fraction_nonzero(), frac, rtol=0, atol=1e-15)
    assert 0.2 < stats.overall_nonzero() < 0.8  # a random ReLU network: about half of the units active
    assert torch.equal(stats.dead(), nonzero == 0)
    counts, edges = stats.frequency_histogram(bins=10)
    assert int(counts.sum()) == 2 * relu_toy.cfg.d_mlp and edges.shape == (11,)


def test_gated_model_counts_gate_preactivations(tiny_llama):
    batches = _batches(tiny_llama, n=256)
    stats = measure_sparsity(tiny_llama, batches, taus=(0.01,), layers=[1], progress=False)
    assert stats.activation.startswith("gated")
    pos = nonzero = 0
    for b in batches:
        _, cache = tiny_llama.run_with_cache(b.tokens)
        gate = cache["blocks.1.mlp.gate.hook_out"][b.attention_mask.bool()]
        pos = pos + (gate > 0).sum(0)
        nonzero = nonzero + (cache["blocks.1.mlp.hook_post"][b.attention_mask.bool()] != 0).sum(0)
    assert torch.equal(stats.positive_pre[0], pos)
    assert torch.equal(stats.nonzero[0], nonzero)
    assert float(stats.fraction_nonzero()[0]) > 0.9  # SiLU-gated: zeros only where the input itself is zero


def test_corpus_sparsity_splits_and_bad_input(relu_toy):
    out = corpus_sparsity(relu_toy, DOCS, max_tokens=512, seq_len=32, batch_size=4, progress=False)
    assert set(out) == {"given"} and out["given"].n_tokens == 512
    with pytest.raises(ValueError, match="below one batch"):
        corpus_sparsity(relu_toy, DOCS, max_tokens=64, seq_len=32, batch_size=4)
    with pytest.raises(ValueError, match="corpus is empty"):
        corpus_sparsity(relu_toy, ["", "  "], max_tokens=512, seq_len=32, batch_size=4)
    with pytest.raises(ValueError, match="layers 0..1"):
        measure_sparsity(relu_toy, _batches(relu_toy, 256), layers=[5])
    with pytest.raises(ValueError, match="has no hook"):
        measure_sparsity(relu_toy, _batches(relu_toy, 256), post="blocks.{layer}.mlp.hook_nothing")
    with pytest.raises(ValueError, match="no batch"):
        measure_sparsity(relu_toy, [], progress=False)
    with pytest.raises(ValueError, match="increasing"):
        SparsityCounter([0], taus=(0.5, 0.1))
    check_budget(None, 8, 128)


def test_loss_helper_matches_cross_entropy(relu_toy):
    b = _batches(relu_toy, n=200)[-1]
    logits = relu_toy(b.tokens).detach()
    s, n = next_token_loss_sum(logits, b.tokens, b.attention_mask)
    keep = (b.attention_mask[:, 1:] * b.attention_mask[:, :-1]).bool()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][keep].double(), b.tokens[:, 1:][keep], reduction="sum")
    assert n == int(keep.sum()) and abs(s - float(ref)) < 1e-3


def test_thresholds_bound_the_loss_rise(relu_toy):
    calib = _batches(relu_toy, n=512)
    held = _batches(relu_toy, n=256)
    table = performance_thresholds(relu_toy, calib, held, calib_tokens=512, max_rise=0.01, progress=False)
    per_layer = table[table.layer >= 0]
    assert len(per_layer) == 4 and set(per_layer.method) == {"quantile", "channel"}
    assert (per_layer.rise <= 0.01 + 1e-9).all()
    assert ((per_layer.active_fraction > 0) & (per_layer.active_fraction <= 1)).all()
    # recompute one chosen cutoff by hand: zeroing |a| < cutoff on that layer gives the reported loss
    row = per_layer[(per_layer.method == "quantile") & (per_layer["quantile"] > 0)].iloc[0]
    name = f"blocks.{int(row.layer)}.mlp.hook_post"
    loss = heldout_loss(relu_toy, held, [(name, lambda a, hook: a * (a.abs() >= row.cutoff))])
    assert abs(loss - row.loss) < 1e-4
    topk = topk_losses(relu_toy, held, [1, 16, 128], progress=False)
    assert topk.loss.iloc[-1] == pytest.approx(topk.clean_loss.iloc[0], abs=1e-5)  # k = d_mlp changes nothing
    assert topk.loss.iloc[0] > topk.loss.iloc[-1]
    with pytest.raises(ValueError, match="1..128"):
        topk_losses(relu_toy, held, [0])
    with pytest.raises(ValueError, match="threshold method"):
        performance_thresholds(relu_toy, calib, held, methods=["cats"])


def test_cli_sparsity_and_massive(relu_folder, tmp_path, monkeypatch, capsys):
    import json

    from workbench.store import Store
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    base = ["--model", str(relu_folder), "--corpus", "news", "--seq-len", "32", "--batch-size", "4"]
    assert main(["sparsity", *base, "--tokens", "256", "--topk", "1,128", "--eval-tokens", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = Store().load("sparsity", out["run"]["run_id"])
    assert out["summary"]["activation"] == "relu" and out["summary"]["tokens_train"] == 256
    assert set(run.table("layers").split) == {"train", "heldout"} and len(run.table("topk")) == 2
    assert main(["massive", *base, "--tokens", "256", "--abs-threshold", "0.01", "--ratio-threshold", "3",
                 "--eval-tokens", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "loss_zero" in out["summary"] and Store().load("massive", out["run"]["run_id"]).table("layers").shape[0] == 2
    assert main(["sparsity", *base, "--tokens", "64"]) == 2
    assert "below one batch" in capsys.readouterr().err
    assert main(["massive", *base, "--layers", "9"]) == 2
    assert "layers 0..1" in capsys.readouterr().err
    assert main(["sparsity", "--model", str(relu_folder), "--corpus", "nope", "--seq-len", "32", "--batch-size", "4",
                 "--tokens", "256"]) == 2
    assert "unknown corpus" in capsys.readouterr().err
