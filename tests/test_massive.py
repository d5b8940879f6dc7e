"""probes.massive: streamed residual statistics against a brute-force computation, the intervention, SmolLM2's dim 507."""

from __future__ import annotations

import pytest
import torch

from probes.massive import MassiveCounter, massive_intervention, massive_mask, measure_massive
from probes.thresholds import heldout_loss
from workbench.data import token_batches

DOCS = [" ".join(f"t{(5 * i + j * j) % 64}" for j in range(30 + 3 * i)) for i in range(20)]


def _batches(model, n=300):
    return list(token_batches(DOCS, model.tokenizer, seq_len=24, batch_size=4, max_tokens=n))


def test_stats_equal_brute_force(tiny_gpt2):
    batches = _batches(tiny_gpt2)  # the last batch has a short row and filler rows
    stats = measure_massive(tiny_gpt2, batches, abs_threshold=0.01, ratio_threshold=3.0, progress=False)
    L, d = tiny_gpt2.cfg.n_layers, tiny_gpt2.cfg.d_model
    tops, medians, seqs = [], [], []
    max_first, max_rest = torch.zeros(L, d), torch.zeros(L, d)
    massive = torch.zeros(L, d, 2, dtype=torch.long)
    for b in batches:
        _, cache = tiny_gpt2.run_with_cache(b.tokens)
        for r in range(b.tokens.shape[0]):
            n = int(b.attention_mask[r].sum())
            if n == 0:
                continue
            seqs.append(1)
            h = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][r, :n] for layer in range(L)])  # [L, n, d]
            mag = h.abs().flatten(1)
            tops.append(mag.sort(-1, descending=True).values[:, :3])
            med = mag.median(-1).values
            medians.append(med)
            max_first = torch.maximum(max_first, h[:, 0].abs())
            if n > 1:
                max_rest = torch.maximum(max_rest, h[:, 1:].abs().amax(1))
            hit = (h.abs() > 0.01) & (h.abs() > 3.0 * med[:, None, None])
            massive[..., 0] += hit[:, 0]
            massive[..., 1] += hit[:, 1:].sum(1)
    assert stats.n_seqs == len(seqs) == 13
    assert torch.allclose(stats.top_mean, torch.stack(tops).mean(0), atol=1e-5)
    assert torch.allclose(stats.median_mean, torch.stack(medians).mean(0), atol=1e-6)
    assert torch.equal(stats.max_abs_first, max_first) and torch.equal(stats.max_abs_rest, max_rest)
    assert torch.equal(stats.massive_first, massive[..., 0]) and torch.equal(stats.massive_rest, massive[..., 1])
    assert stats.massive_counts().sum() > 0
    overall = torch.maximum(max_first, max_rest).amax(-1)
    assert torch.allclose(stats.record_value[:, 0], overall)
    for i in range(L):  # the record's coordinates point at its value
        seq, pos, dim = int(stats.record_seq[i, 0]), int(stats.record_pos[i, 0]), int(stats.record_dim[i, 0])
        b, r = divmod(seq, 4)
        _, cache = tiny_gpt2.run_with_cache(batches[b].tokens)
        assert cache[f"blocks.{i}.hook_resid_post"][r, pos, dim].abs() == pytest.approx(float(stats.record_value[i, 0]))
        assert int(stats.record_token[i, 0]) == int(batches[b].tokens[r, pos])


def test_intervention_matches_hand_edit(tiny_gpt2):
    batches = _batches(tiny_gpt2)
    stats = measure_massive(tiny_gpt2, batches, abs_threshold=0.01, ratio_threshold=3.0, progress=False)
    held = _batches(tiny_gpt2, 150)
    out = massive_intervention(tiny_gpt2, stats, held, layers=[1])
    assert out["changed_zero"] > 0 and out["changed_random"] == out["changed_zero"]
    state = {}

    def zero(act, hook):
        act = act.clone()
        for r in range(act.shape[0]):
            n = int(state["mask"][r].sum())
            a = act[r, :n]
            a[massive_mask(a, a.abs().flatten().median(), 0.01, 3.0)] = 0
        return act

    ref = heldout_loss(tiny_gpt2, held, [("blocks.1.hook_resid_post", zero)], on_batch=lambda m: state.update(mask=m))
    assert out["loss_zero"] == pytest.approx(ref, rel=1e-6)
    assert out["loss_clean"] == pytest.approx(heldout_loss(tiny_gpt2, held), rel=1e-6)
    with pytest.raises(ValueError, match="layers 0..1"):
        massive_intervention(tiny_gpt2, stats, held, layers=[7])
    with pytest.raises(ValueError, match="no evaluation batch"):
        massive_intervention(tiny_gpt2, stats, [], layers=[1])


def test_bad_input(tiny_gpt2):
    with pytest.raises(ValueError, match="has no hook"):
        measure_massive(tiny_gpt2, _batches(tiny_gpt2), hook="blocks.{layer}.hook_nope")
    with pytest.raises(ValueError, match="no batch"):
        measure_massive(tiny_gpt2, [], progress=False)
    with pytest.raises(ValueError, match="non-negative"):
        MassiveCounter([0], 32, abs_threshold=-1)


def test_smollm2_massive_dimension_on_first_token(smollm2):
    batches = list(token_batches("wiki", smollm2.tokenizer, seq_len=24, batch_size=2, max_tokens=48))
    stats = measure_massive(smollm2, batches, layers=[4, 15, 25], progress=False)
    assert stats.record_dim[1:, 0].tolist() == [507, 507] and stats.record_pos[1:, 0].tolist() == [0, 0]
    assert (stats.record_value[1:, 0] > 10_000).all() and (stats.ratio()[1:] > 1000).all()
    assert stats.massive_layers() == [15, 25] and stats.massive_dims()[0] == 507
    out = massive_intervention(smollm2, stats, batches[:1], layers=[15])
    assert out["loss_zero"] > out["loss_clean"] + 2.0  # zeroing breaks the model
    assert abs(out["loss_mean"] - out["loss_clean"]) < 0.1  # the mean value barely matters
    assert abs(out["loss_random"] - out["loss_clean"]) < 0.1
