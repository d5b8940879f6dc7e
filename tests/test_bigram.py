"""Bigram subnetworks: the masked forward against exact identities, the bigram table against direct counts, the
training against its own starting loss, resume against an uninterrupted run, and the verb end to end."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch
import torch.nn.functional as F

from circuits.bigram.analysis import BigramConfig
from circuits.bigram.counts import BigramCounter, count_bigrams
from circuits.bigram.evaluate import evaluate_masks, pack_masks, random_like, unpack_masks
from circuits.bigram.masks import find_groups, masked_logits
from circuits.bigram.train import hard_masks, train_masks
from workbench.analysis import ConfigError
from workbench.data import TokenBatch, token_batches


def _tokens(n_rows: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (n_rows, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_all_ones_mask_reproduces_the_logits_exactly(fixture, request):
    model = request.getfixturevalue(fixture)
    groups = find_groups(model)
    tokens = _tokens()
    ones = {g.name: torch.ones(g.shape) for g in groups}
    with torch.no_grad():
        assert torch.equal(masked_logits(model, tokens, ones), model(tokens))


def test_groups_cover_every_used_matrix_and_skip_the_unused(tiny_gpt2, tiny_llama):
    gpt = {(g.layer, g.kind, g.sublayer) for g in find_groups(tiny_gpt2)}
    assert gpt == {(layer, k, s) for layer in (0, 1) for k, s in
                   [("attn", "q"), ("attn", "k"), ("attn", "v"), ("attn", "o"), ("mlp", "in"), ("mlp", "out")]}
    llama = find_groups(tiny_llama)
    assert {g.sublayer for g in llama} == {"q", "k", "v", "o", "in", "gate", "out"}
    assert sum(g.size for g in llama) == 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 64 * 32)


def _bias_only_gpt2(model, tokens):
    """GPT-2 with every attention and MLP matrix zero, from its parameters by hand: each attention block adds its
    output bias (the values are the value bias, averaged by rows that sum to one, then multiplied by a zero matrix),
    each MLP its output bias; then the final LayerNorm and the unembedding."""
    p = {n.replace("._original_component", ""): v.detach().double() for n, v in model.named_parameters()}
    x = p["transformer.wte.weight"][tokens] + p["transformer.wpe.weight"][torch.arange(tokens.shape[1])]
    for layer in range(2):
        x = x + p[f"transformer.h.{layer}.attn.o.bias"] + p[f"transformer.h.{layer}.mlp.c_proj.bias"]
    x = F.layer_norm(x, (32,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps=1e-5)
    return x @ p["lm_head.weight"].T


def _embedding_only_llama(model, tokens):
    """Llama with every matrix zero: the embedding, the final RMSNorm and the unembedding."""
    p = {n.replace("._original_component", ""): v.detach().double() for n, v in model.named_parameters()}
    x = p["model.embed_tokens.weight"][tokens]
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * p["model.norm.weight"]
    return x @ p["lm_head.weight"].T


@pytest.mark.parametrize(("fixture", "reference"), [("tiny_gpt2", _bias_only_gpt2),
                                                    ("tiny_llama", _embedding_only_llama)])
def test_all_zeros_mask_leaves_the_bias_only_output(fixture, reference, request):
    model = request.getfixturevalue(fixture)
    tokens = _tokens(seed=1)
    zeros = {g.name: torch.zeros(g.shape) for g in find_groups(model)}
    with torch.no_grad():
        before = model(tokens)
        got = torch.log_softmax(masked_logits(model, tokens, zeros).double(), -1)
        assert torch.equal(model(tokens), before)   # the model's own weights are left as they were
    want = torch.log_softmax(reference(model, tokens), -1)
    assert (got - want).abs().max() < 1e-4
    # the output no longer depends on the context: the same token gives the same row wherever it stands (no
    # positions in Llama)
    if fixture == "tiny_llama":
        assert torch.allclose(got[0, 3], got[1, 3]) or tokens[0, 3] != tokens[1, 3]


def test_bigram_table_equals_a_direct_count(tiny_llama):
    docs = ["t1 t2 t3 t1 t2 t4", "t2 t3 t3 t3 t1", "t5 t1 t2"] * 3
    counter = BigramCounter(65, chunk=7)   # tiny chunks: several folds
    rows = []
    for b in token_batches(docs, tiny_llama.tokenizer, seq_len=6, batch_size=2, shuffle=False):
        counter.add(b.tokens, b.attention_mask)
        rows += [r[m.bool()].tolist() for r, m in zip(b.tokens, b.attention_mask, strict=True)]
    table = counter.table(smoothing=0.5, min_count=3)
    direct = collections.Counter(p for r in rows for p in zip(r[:-1], r[1:], strict=True))
    assert {(int(c) // 65, int(c) % 65): int(n) for c, n in zip(table.codes, table.counts, strict=True)} == direct
    assert table.n_tokens == sum(max(len(r) - 1, 0) for r in rows) == counter.n_pairs
    # the smoothed rows, by hand in float64
    col = collections.Counter(b for (_, b), n in direct.items() for _ in range(n))
    total = sum(direct.values())
    u = torch.tensor([(col[v] + 1) / (total + 65) for v in range(65)], dtype=torch.float64)
    for cur in range(65):
        row_total = sum(n for (a, _), n in direct.items() if a == cur)
        dense = torch.tensor([(direct[(cur, v)] + 0.5 * u[v]) / (row_total + 0.5) for v in range(65)],
                             dtype=torch.float64)
        assert torch.allclose(table.dense_rows(torch.tensor([cur]))[0], dense)
        assert bool(table.kept(torch.tensor(cur))) == (row_total >= 3)
    cur, nxt = torch.tensor([1, 2, 9, 64]), torch.tensor([2, 3, 9, 1])
    want = torch.stack([table.dense_rows(cur[i:i + 1])[0, nxt[i]].log() for i in range(4)])
    assert torch.allclose(table.log_prob(cur, nxt), want)
    log_q = torch.log_softmax(torch.randn(4, 65, dtype=torch.float64), -1)
    assert torch.allclose(table.cross_entropy(log_q, cur), -(table.dense_rows(cur) * log_q).sum(-1))
    p = table.dense_rows(cur)
    assert torch.allclose(table.entropy(cur), -(p * p.log()).sum(-1))
    assert count_bigrams([[1, 2, 1, 2]], 65).count(torch.tensor(1), torch.tensor(2)) == 2


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
def test_budget_outside_zero_one_is_refused(budget):
    with pytest.raises(ConfigError, match="--budget"):
        BigramConfig(budget=budget).check()


def test_hard_masks_respect_the_budget():
    logits = {"a": torch.tensor([[3.0, -1.0], [2.0, 0.5]]), "b": torch.tensor([1.0, -2.0, 4.0])}
    assert sum(int(m.sum()) for m in hard_masks(logits).values()) == 5
    capped = hard_masks(logits, budget=3 / 7)
    assert capped["a"].tolist() == [[1.0, 0.0], [1.0, 0.0]] and capped["b"].tolist() == [0.0, 0.0, 1.0]
    masks = {"a": (torch.rand(5, 7) > 0.5).float(), "b": (torch.rand(3, 8) > 0.3).float()}
    packed = pack_masks(masks)
    assert packed["a"].dtype == torch.uint8 and packed["a"].numel() == 5 and packed["b"].numel() == 3
    back = unpack_masks(packed, {"a": (5, 7), "b": (3, 8)})
    assert all(torch.equal(back[n], masks[n]) for n in masks)


def _markov_stream(seed: int = 0):
    """Rows of a fixed random Markov chain over t0..t15 (each token has two likely successors)."""
    gen = torch.Generator().manual_seed(123)
    succ = torch.randint(0, 16, (16, 2), generator=gen)

    def stream():
        g = torch.Generator().manual_seed(seed)
        while True:
            rows = torch.zeros((8, 16), dtype=torch.long)
            rows[:, 0] = torch.randint(0, 16, (8,), generator=g)
            for t in range(1, 16):
                rows[:, t] = succ[rows[:, t - 1], torch.randint(0, 2, (8,), generator=g)]
            yield TokenBatch(rows, torch.ones_like(rows))
    return stream


@pytest.fixture(scope="module")
def markov_table():
    counter = BigramCounter(65)
    stream = _markov_stream(seed=99)()
    for _ in range(20):
        b = next(stream)
        counter.add(b.tokens, b.attention_mask)
    return counter.table(min_count=5)


@pytest.fixture(scope="module")
def markov_llama(tmp_path_factory):
    """A tiny Llama (1 layer, d_model 32, tied embeddings: the direct path alone cannot hold the asymmetric bigram
    map) trained for 150 steps on the Markov chain, through the bridge."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=65, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=64,
                         eos_token_id=64, pad_token_id=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    stream = _markov_stream(seed=5)()
    for _ in range(150):
        rows = next(stream).tokens
        loss = model(rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("markov-llama")
    model.eval().save_pretrained(folder)
    make_tokenizer(64).save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def test_mask_training_lowers_the_bigram_loss(markov_llama, markov_table):
    groups = find_groups(markov_llama)
    out = train_masks(markov_llama, markov_table, groups, _markov_stream(), steps=40, lr=0.1, lam=2.0,
                      beta_final=50.0)
    first, last = out.history[0]["loss"], out.history[-1]["loss"]
    assert last < first - 0.3
    assert out.history[-1]["kept_soft"] < 0.5 * out.history[0]["kept_soft"]
    held = [next(_markov_stream(seed=7)())]
    masks = hard_masks(out.logits)
    sub = evaluate_masks(markov_llama, markov_table, held, masks)
    empty = evaluate_masks(markov_llama, markov_table, held, {n: torch.zeros_like(m) for n, m in masks.items()})
    assert sub["bigram_kl"] < empty["bigram_kl"] - 0.3 and sub["corr"] > empty["corr"]
    control = random_like(masks, seed=0)
    assert all(int(control[n].sum()) == int(masks[n].sum()) for n in masks)


def test_a_resumed_training_equals_an_uninterrupted_one(tiny_gpt2, markov_table, tmp_path):
    groups = find_groups(tiny_gpt2)
    options = dict(steps=6, lr=0.1, lam=0.5, beta_final=20.0, budget=0.5)
    whole = train_masks(tiny_gpt2, markov_table, groups, _markov_stream(), **options)
    part = train_masks(tiny_gpt2, markov_table, groups, _markov_stream(), workdir=tmp_path, stop_after=2, **options)
    assert len(part.history) == 2
    rest = train_masks(tiny_gpt2, markov_table, groups, _markov_stream(), workdir=tmp_path, **options)
    assert rest.resumed_from == 2 and rest.history == whole.history and rest.lam == whole.lam
    for n in whole.logits:
        assert torch.equal(rest.logits[n], whole.logits[n])


def test_the_verb_prints_strict_json(tiny_llama, tmp_path, monkeypatch, capsys):
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["bigram", "--model", tiny_llama.workbench_spec, "--device", "cpu", "--corpus", "news", "--steps", "4",
            "--bigram-tokens", "2048", "--seq-len", "16", "--batch-size", "2", "--eval-tokens", "128",
            "--control-draws", "2", "--budget", "0.1", "--l0-lambda", "0", "--json", "--quiet"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = payload["summary"]
    assert s["n_kept"] <= 0.1 * s["n_masked"] and math.isclose(s["kept_fraction"], s["n_kept"] / s["n_masked"])
    assert (s["budget_cut"] > 0) == any("budget" in w for w in s.get("warnings", []))
    assert s["lm_loss_full"] > 0 and s["n_masked"] == sum(g.size for g in find_groups(tiny_llama))
    assert payload["run"]["kind"] == "bigram"
    from circuits.bigram.analysis import load_subnetwork
    from workbench.store import Store

    run = Store(tmp_path / "runs").load("bigram", payload["run"]["run_id"])
    stored = load_subnetwork(run)
    kept = run.table("kept")
    assert {n: int(m.sum()) for n, m in stored.items()} == dict(zip(kept["name"], kept["kept"], strict=True))
    assert sum(int(m.sum()) for m in stored.values()) == s["n_kept"]
    assert main([*argv[:-2], "--budget", "0", "--json"]) == 2
    assert "--budget" in capsys.readouterr().err
