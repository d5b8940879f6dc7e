"""Reconstruction metrics of dictionaries over a shard folder, without the model (METHODS.md section 1, "Metrics").

For each dictionary, over the shard rows read in order (batch by batch, memory bounded by one batch): L0 (mean
active latents per token), FVU = SSE / total variance of the target (per-dimension variance summed, float64 sums),
MSE per token, per-latent firing frequencies and the dead fraction (latents that never fired). The spliced-loss
metrics need the model: :func:`circuits.dictionaries.evaluate.evaluate_dictionaries` computes them on text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.shard_buffer import ShardBuffer
from circuits.dictionaries.shard_format import ShardMismatchError


@torch.no_grad()
def evaluate_on_shards(dictionaries: Mapping[str, Dictionary], folder: Path | str, *, batch_size: int = 4096,
                       max_tokens: int | None = None, device: str | None = None, expect_model: Any = None,
                       progress: bool = True) -> dict[str, dict[str, Any]]:
    """``{label: {"tokens", "l0", "fvu", "mse", "dead_fraction", "frequencies"}}`` of each dictionary over the rows
    of the shard folder (at most ``max_tokens``), read shard by shard in the folder's order. ``fvu`` is None for a
    constant target. ``frequencies`` is a [d_sae] float tensor. ShardMismatchError when a dictionary's hooks are not
    in the folder or their widths differ."""
    if not dictionaries:
        raise ValueError("evaluate_on_shards needs at least one dictionary")
    hooks = sorted({d.hook_in for d in dictionaries.values()} | {d.hook_out for d in dictionaries.values()})
    buf = ShardBuffer(folder, batch_size=1, hooks=hooks, expect_model=expect_model)
    widths = buf.widths()
    for lab, d in dictionaries.items():
        if widths[d.hook_in] != d.d_in or widths[d.hook_out] != d.d_out:
            raise ShardMismatchError(f"dictionary {lab} reads {d.hook_in} ({d.d_in} wide) and writes {d.hook_out} "
                                     f"({d.d_out} wide), the shards hold {widths[d.hook_in]} and "
                                     f"{widths[d.hook_out]}")
    device = device or "cpu"
    dicts = {lab: d.to(device) for lab, d in dictionaries.items()}
    acc = {lab: {"n": 0, "active": 0.0, "sse": 0.0, "sumsq": 0.0, "tsum": torch.zeros(d.d_out, dtype=torch.float64),
                 "fires": torch.zeros(d.d_sae, dtype=torch.float64)} for lab, d in dicts.items()}
    total = buf.tokens if max_tokens is None else min(buf.tokens, max_tokens)
    bar = tqdm(total=total, desc="eval-shards", unit="tok", disable=not progress)
    seen = 0
    for shard in range(len(buf.rows_of)):
        rows = {h: buf.read_shard(shard, h) for h in hooks}
        n = min(buf.rows_of[shard], total - seen)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            for lab, d in dicts.items():
                a = acc[lab]
                x, y = rows[d.hook_in][lo:hi].to(device), rows[d.hook_out][lo:hi].to(device)
                out, z = d(x)
                yd = y.double()
                a["n"] += hi - lo
                a["active"] += float((z > 0).sum())
                a["fires"] += (z > 0).sum(0).double().cpu()
                a["sse"] += float((yd - out.double()).pow(2).sum())
                a["sumsq"] += float(yd.pow(2).sum())
                a["tsum"] += yd.sum(0).cpu()
            bar.update(hi - lo)
        seen += n
        if seen >= total:
            break
    bar.close()
    out = {}
    for lab, a in acc.items():
        n = max(1, a["n"])
        var = a["sumsq"] - float(a["tsum"].pow(2).sum()) / n
        freq = (a["fires"] / n).float()
        out[lab] = {"tokens": a["n"], "l0": a["active"] / n, "mse": a["sse"] / n,
                    "fvu": a["sse"] / var if var > 1e-12 * max(a["sumsq"], 1e-300) else None,
                    "dead_fraction": float((freq == 0).float().mean()), "frequencies": freq}
    return out
