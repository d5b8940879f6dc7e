"""What a bigram subnetwork does, measured on held-out text rows.

For any mask set (None: the full model) one streamed pass gives:

- ``bigram_ce``: mean cross-entropy of the model's next-token distribution against the bigram row of the current
  token (positions whose row is kept), ``bigram_kl`` = that minus the rows' entropy;
- ``corr``: Pearson correlation between the model's log-probability of the actual next token and the bigram
  log-probability log p(next | current) (the paper's surprisal correlation), over positions with a real next token
  and a kept row;
- ``lm_loss``: the next-token cross-entropy (nats) over every real next token.

Also: per-matrix kept counts, and a random mask with the same number of kept weights in every masked matrix
(hence in every layer and sublayer), the control of the ablation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from circuits.bigram.counts import BigramTable
from circuits.bigram.masks import MaskGroup, masked_logits

__all__ = ["complement", "evaluate_masks", "kept_rows", "pack_masks", "random_like", "unpack_masks"]


def _pearson(s: dict[str, float]) -> float | None:
    n = s["n"]
    if n < 2:
        return None
    cov = s["xy"] / n - s["x"] / n * s["y"] / n
    vx = s["xx"] / n - (s["x"] / n) ** 2
    vy = s["yy"] / n - (s["y"] / n) ** 2
    if vx <= 0 or vy <= 0:
        return None
    return float(cov / (vx * vy) ** 0.5)


@torch.no_grad()
def evaluate_masks(model: Any, table: BigramTable, batches: Iterable[Any],
                   masks: dict[str, torch.Tensor] | None = None) -> dict[str, float | None]:
    """bigram_ce, bigram_kl, corr, lm_loss (see the module) and the position counts, for the model with ``masks``
    applied (None: unmasked), over ``batches`` (``tokens``, ``attention_mask`` [batch, seq])."""
    device = next(model.parameters()).device
    table = table.to(device)
    sums = dict(ce=0.0, h=0.0, n_bigram=0, lm=0.0, n_lm=0)
    corr = dict(n=0, x=0.0, y=0.0, xx=0.0, yy=0.0, xy=0.0)
    for batch in batches:
        tokens = batch.tokens.to(device)
        real = batch.attention_mask.to(device).bool()
        logits = model(tokens) if masks is None else masked_logits(model, tokens, masks)
        log_q = torch.log_softmax(logits.double(), dim=-1)                             # [B, T, V]
        use = real & table.kept(tokens)
        if use.any():
            sums["ce"] += float(table.cross_entropy(log_q[use], tokens[use]).sum())
            sums["h"] += float(table.entropy(tokens[use]).sum())
            sums["n_bigram"] += int(use.sum())
        nxt_real = real[:, :-1] & real[:, 1:]                                          # [B, T-1]
        lp = log_q[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]                      # [B, T-1]
        sums["lm"] -= float(lp[nxt_real].sum())
        sums["n_lm"] += int(nxt_real.sum())
        pick = nxt_real & table.kept(tokens[:, :-1])
        x = lp[pick]
        y = table.log_prob(tokens[:, :-1][pick], tokens[:, 1:][pick])
        corr["n"] += int(x.numel())
        for key, value in (("x", x), ("y", y), ("xx", x * x), ("yy", y * y), ("xy", x * y)):
            corr[key] += float(value.sum())
    nb, nl = sums["n_bigram"], sums["n_lm"]
    return {"bigram_ce": sums["ce"] / nb if nb else None,
            "bigram_kl": (sums["ce"] - sums["h"]) / nb if nb else None,
            "corr": _pearson(corr), "lm_loss": sums["lm"] / nl if nl else None,
            "bigram_positions": nb, "lm_positions": nl, "corr_positions": corr["n"]}


def complement(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """1 - mask for every matrix: the model with the subnetwork's weights zeroed."""
    return {n: 1.0 - m for n, m in masks.items()}


def random_like(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random 0/1 mask with exactly as many ones as ``masks`` in every matrix (positions drawn uniformly)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in masks.items():
        k = int(m.sum())
        flat = torch.zeros(m.numel())
        flat[torch.randperm(m.numel(), generator=gen)[:k]] = 1.0
        out[n] = flat.reshape(m.shape).to(m.device)
    return out


def kept_rows(groups: list[MaskGroup], masks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per masked matrix: name, label, layer, kind, sublayer, shape ("576x1536"), size, kept, fraction."""
    rows = []
    for g in groups:
        kept = int(masks[g.name].sum())
        rows.append({"name": g.name, "label": g.label, "layer": g.layer, "kind": g.kind, "sublayer": g.sublayer,
                     "shape": "x".join(map(str, g.shape)), "size": g.size, "kept": kept, "fraction": kept / g.size})
    return rows


def pack_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each 0/1 mask as uint8 bytes of 8 flattened entries (first entry in the highest bit), on the CPU: one bit
    per weight, whatever the kept fraction."""
    out = {}
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    for n, m in masks.items():
        flat = (m.reshape(-1) > 0).to(torch.uint8).cpu()
        flat = torch.cat([flat, torch.zeros((-len(flat)) % 8, dtype=torch.uint8)])
        out[n] = (flat.reshape(-1, 8) * weights).sum(-1, dtype=torch.uint8)
    return out


def unpack_masks(packed: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The float 0/1 masks of :func:`pack_masks`, reshaped to ``shapes`` (a run's ``kept`` table has them)."""
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    out = {}
    for n, b in packed.items():
        size = int(torch.Size(shapes[n]).numel())
        flat = ((b[:, None] & bits) > 0).reshape(-1)[:size]
        out[n] = flat.float().reshape(shapes[n])
    return out
