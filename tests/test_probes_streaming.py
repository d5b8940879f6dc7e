"""The fast paths of the streamed probe counters against plain computations: column counts, the row median, and the
massive-activation sums and per-token counts (padding, short rows and several batches included)."""

from __future__ import annotations

from collections import Counter

import torch

from probes.massive import MassiveCounter, massive_mask, row_median
from probes.sparsity import SparsityCounter, count_above, count_nonzero
from workbench.data import TokenBatch, token_batches

DOCS = [" ".join(f"t{(3 * i + j * j) % 64}" for j in range(20 + 5 * i)) for i in range(12)]


def test_column_counts_are_exact_beyond_a_byte():
    a = torch.randn(700, 9)
    a[:, 0] = 1.0  # 700 hits in one column: more than a byte holds
    a[:, 1] = 0.0
    a[::3, 2] = 0.0
    assert torch.equal(count_above(a, 0.0), (a > 0).sum(0))
    assert torch.equal(count_above(a.abs(), torch.tensor(0.5)), (a.abs() > 0.5).sum(0))
    assert torch.equal(count_nonzero(a), (a != 0).sum(0))
    assert int(count_nonzero(a)[0]) == 700 and int(count_nonzero(a)[1]) == 0
    assert count_above(a, 0.0).dtype == torch.long


def test_row_median_equals_torch_median():
    gen = torch.Generator().manual_seed(0)
    for m in (1, 2, 7, 8, 1001):
        x = torch.randn(5, m, generator=gen).abs()
        x[0] = x[0].round()  # ties
        assert torch.equal(row_median(x), x.median(dim=1).values)
    x = torch.randn(3, 10, generator=gen)
    x[1, 4] = float("nan")
    assert torch.equal(row_median(x).isnan(), x.median(dim=1).values.isnan())


def test_sparsity_counts_with_padding_equal_plain_counts():
    counter = SparsityCounter([0], taus=(0.0, 0.2, 1.0))
    gen = torch.Generator().manual_seed(1)
    nonzero = above = 0
    for pad in (0, 5):
        a = torch.relu(torch.randn(3, 8, 6, generator=gen))
        mask = torch.ones(3, 8, dtype=torch.long)
        if pad:
            mask[1, -pad:] = 0
            a[1, -pad:] = 7.0  # padding must not count
        counter.consume("blocks.0.mlp.hook_post", a, mask)
        counter.consume("blocks.0.mlp.hook_pre", a - 0.1, mask)
        real = a[mask.bool()]
        nonzero = nonzero + (real != 0).sum(0)
        above = above + torch.stack([(real.abs() > t).sum(0) for t in (0.0, 0.2, 1.0)])
    stats = counter.stats()
    assert stats.n_tokens == 24 + 19
    assert torch.equal(stats.nonzero[0], nonzero) and torch.equal(stats.above_tau[0], above)


def test_massive_sums_and_tokens_equal_brute_force(tiny_gpt2):
    batches = list(token_batches(DOCS, tiny_gpt2.tokenizer, seq_len=16, batch_size=3, max_tokens=200))
    tokens = batches[-1].tokens.clone()
    mask = torch.zeros_like(tokens)
    mask[0, :9] = 1
    mask[1, :1] = 1  # a one-token row
    batches.append(TokenBatch(tokens=tokens, attention_mask=mask))
    L, d = tiny_gpt2.cfg.n_layers, tiny_gpt2.cfg.d_model
    counter = MassiveCounter(list(range(L)), d, abs_threshold=0.02, ratio_threshold=2.5)
    count = torch.zeros(L, d, 2, dtype=torch.long)
    sums = torch.zeros(L, d, 2, dtype=torch.float64)
    per_token: Counter[int] = Counter()
    with torch.no_grad():
        for b in batches:
            _, cache = tiny_gpt2.run_with_cache(b.tokens)
            counter.set_tokens(b.tokens)
            for layer in range(L):
                h = cache[f"blocks.{layer}.hook_resid_post"]
                counter.consume(f"blocks.{layer}.hook_resid_post", h, b.attention_mask)
                for r, n in enumerate(b.attention_mask.sum(1).tolist()):
                    if n == 0:
                        continue
                    a = h[r, :n]
                    hit = massive_mask(a, a.abs().flatten().median(), 0.02, 2.5)
                    count[layer, :, 0] += hit[0]
                    count[layer, :, 1] += hit[1:].sum(0)
                    sums[layer, :, 0] += (a[0] * hit[0]).double()
                    sums[layer, :, 1] += (a[1:] * hit[1:]).double().sum(0)
                    for pos in range(1, n):
                        if hit[pos].any():
                            per_token[int(b.tokens[r, pos])] += int(hit[pos].sum())
    stats = counter.stats()
    assert count.sum() > 0 and len(per_token) > 1
    assert torch.equal(stats.massive_first, count[..., 0]) and torch.equal(stats.massive_rest, count[..., 1])
    torch.testing.assert_close(stats.massive_sum, sums, rtol=1e-12, atol=1e-12)
    assert stats.token_counts == dict(per_token)
