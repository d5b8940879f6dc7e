"""Streaming harvest: consumers see exactly what run_with_cache sees, nothing more is kept."""

from __future__ import annotations

import pytest
import torch

from workbench.harvest import harvest
from workbench.induction_toy import induction_tokens


class Collect:
    """Keeps copies of what it receives (a test consumer; real consumers keep summaries)."""

    def __init__(self, hooks):
        self.hooks = list(hooks)
        self.seen: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        self.masks: list[torch.Tensor] = []

    def consume(self, name, activation, mask):
        self.seen[name].append(activation.detach().clone())
        if name == self.hooks[0]:
            self.masks.append(mask.clone())


def _batches(cfg, n_batches, batch=4):
    return [induction_tokens(batch, cfg.half_len, cfg.vocab, seed=s) for s in range(n_batches)]


def test_consumers_match_run_with_cache(tiny_toy):
    _, cfg, model = tiny_toy
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post", "logits"]
    consumer = Collect(hooks)
    batches = _batches(cfg, 3)
    stats = harvest(model, batches, [consumer], progress=False)
    assert stats.batches == 3 and stats.tokens == sum(b.numel() for b in batches)
    for i, tokens in enumerate(batches):
        logits, cache = model.run_with_cache(tokens)
        for name in hooks[:-1]:
            torch.testing.assert_close(consumer.seen[name][i], cache[name], rtol=0, atol=0)
        torch.testing.assert_close(consumer.seen["logits"][i], logits, rtol=0, atol=0)


def test_early_stop_budget_and_mask(tiny_toy):
    _, cfg, model = tiny_toy
    consumer = Collect(["blocks.0.attn.hook_z"])
    fired = []
    model_out = Collect(["blocks.1.hook_resid_post"])  # a second consumer proves both are fed
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: fired.append(1))]):
        harvest(model, _batches(cfg, 2), [consumer], progress=False)
    assert fired == [], "the forward pass went past the last requested hook"
    per_batch = 4 * (1 + 2 * cfg.half_len)
    stats = harvest(model, _batches(cfg, 10), [consumer, model_out], max_tokens=2 * per_batch + 1, progress=False)
    assert stats.batches == 3 and len(model_out.seen["blocks.1.hook_resid_post"]) == 3

    from workbench.data import TokenBatch

    tokens = _batches(cfg, 1)[0]
    mask = torch.ones_like(tokens)
    mask[0, -5:] = 0
    masked = Collect(["blocks.0.hook_resid_post"])
    stats = harvest(model, [TokenBatch(tokens=tokens, attention_mask=mask)], [masked], progress=False)
    assert stats.tokens == tokens.numel() - 5
    assert torch.equal(masked.masks[0], mask)


def test_bad_input_is_named(tiny_toy):
    _, cfg, model = tiny_toy
    with pytest.raises(ValueError, match="no hook 'blocks.9.hook_resid_post'"):
        harvest(model, _batches(cfg, 1), [Collect(["blocks.9.hook_resid_post"])], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        harvest(model, [], [Collect(["blocks.0.hook_resid_post"])], progress=False)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        harvest(model, [torch.zeros(5, dtype=torch.long)], [Collect(["blocks.0.hook_resid_post"])], progress=False)
    with pytest.raises(ValueError, match="at least one consumer"):
        harvest(model, _batches(cfg, 1), [], progress=False)
