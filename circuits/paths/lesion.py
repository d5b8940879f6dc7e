"""Lesion studies (Veit et al. 2016): delete sublayers from the real network and measure the next-token loss.

Deleting a sublayer sets its output (``blocks.L.hook_attn_out`` or ``blocks.L.hook_mlp_out``) to zero, so the residual
skips it, as deleting a residual block does. Sublayers are numbered in order: ``2L`` for attention of block ``L``,
``2L + 1`` for its MLP (attention-only models: ``L``). With a :class:`~circuits.paths.frozen.FrozenRun` the same
deletion is also applied to the frozen path ensemble (every path through a deleted sublayer removed), which shows
how much of the lesion effect the frozen linear picture explains.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from circuits.frozen.facts import ModelFacts
from circuits.paths.decompose import next_token_loss
from circuits.paths.frozen import FrozenRun, PathInputError, model_device, validate_tokens

__all__ = ["frozen_lesion_loss", "lesion_curve", "lesion_loss", "lesion_random", "lesion_single", "sublayer_names"]


def sublayer_names(model: Any) -> list[str]:
    """``["attn0", "mlp0", "attn1", ...]``: the sublayers in order (no MLPs for attention-only models)."""
    facts = ModelFacts.of(model)
    kinds = ("attn", "mlp") if facts.has_mlp else ("attn",)
    return [f"{kind}{layer}" for layer in range(facts.n_layers) for kind in kinds]


def _hook_name(name: str) -> str:
    kind, layer = ("attn", name[4:]) if name.startswith("attn") else ("mlp", name[3:])
    return f"blocks.{layer}.hook_{kind}_out"


def _zero(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
    return torch.zeros_like(act)


def lesion_loss(model: Any, tokens: torch.Tensor, deleted: list[int]) -> float:
    """Next-token loss (nats) of ``model`` on tokens [batch, pos] with the sublayers ``deleted`` (indices) zeroed."""
    names = sublayer_names(model)
    bad = [i for i in deleted if not 0 <= i < len(names)]
    if bad:
        raise PathInputError(f"sublayer indices {bad} out of range: the model has {len(names)} sublayers (0..{len(names) - 1})")
    hooks = [(_hook_name(names[i]), _zero) for i in deleted]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens.to(model_device(model)))
    return float(next_token_loss(logits, tokens))


def frozen_lesion_loss(frozen: FrozenRun, deleted: list[int]) -> float:
    """Next-token loss of the frozen path ensemble without every path through the ``deleted`` sublayers."""
    skip = set(deleted)
    x = frozen.embed
    with torch.no_grad():
        for i in range(frozen.n):
            if i not in skip:
                x = x + frozen.affine(i, x)
        return float(next_token_loss(frozen.readout(x, constant=True), frozen.tokens))


def lesion_single(model: Any, tokens: Any, *, frozen: FrozenRun | None = None, progress: bool = False) -> pd.DataFrame:
    """Loss when deleting each single sublayer.

    Columns: sublayer (index), name, kind, layer, loss, delta (loss minus the clean loss), and frozen_loss when
    ``frozen`` is given. tokens: a prompt or ids [batch, pos].
    """
    tokens = validate_tokens(model, tokens)
    names = sublayer_names(model)
    clean = lesion_loss(model, tokens, [])
    rows = []
    for i in tqdm(range(len(names)), desc="single lesions", disable=not progress):
        loss = lesion_loss(model, tokens, [i])
        row = {"sublayer": i, "name": names[i], "kind": "attn" if names[i].startswith("attn") else "mlp",
               "layer": int(names[i].lstrip("atnmlp")), "loss": loss, "delta": loss - clean}
        if frozen is not None:
            row["frozen_loss"] = frozen_lesion_loss(frozen, [i])
        rows.append(row)
    return pd.DataFrame(rows)


def lesion_random(model: Any, tokens: Any, *, ks: list[int] | None = None, draws: int = 4, seed: int = 0,
                  frozen: FrozenRun | None = None, progress: bool = False) -> pd.DataFrame:
    """Loss when deleting ``k`` sublayers drawn at random (without replacement), ``draws`` times for each ``k``.

    ks: defaults to ``1..n``. Columns: k, draw, deleted (comma-separated indices), loss, and frozen_loss when ``frozen``
    is given; the clean loss is the row k = 0.
    """
    tokens = validate_tokens(model, tokens)
    n = len(sublayer_names(model))
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    if draws < 1 or any(not 0 <= k <= n for k in ks):
        raise PathInputError(f"draws must be >= 1 and every k between 0 and {n} sublayers; got draws={draws}, ks={ks}")
    rng = random.Random(seed)
    jobs = [(0, 0, [])] + [(k, d, sorted(rng.sample(range(n), k))) for k in ks for d in range(draws)]
    rows = []
    for k, d, deleted in tqdm(jobs, desc="random lesions", disable=not progress):
        row = {"k": k, "draw": d, "deleted": ",".join(map(str, deleted)), "loss": lesion_loss(model, tokens, deleted)}
        if frozen is not None:
            row["frozen_loss"] = frozen_lesion_loss(frozen, deleted)
        rows.append(row)
    return pd.DataFrame(rows)


def lesion_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of the loss per ``k`` from :func:`lesion_random`'s table (columns k, mean, std, draws
    and frozen_mean where the frozen loss was measured)."""
    agg = {"mean": ("loss", "mean"), "std": ("loss", "std"), "draws": ("loss", "size")}
    if "frozen_loss" in table:
        agg["frozen_mean"] = ("frozen_loss", "mean")
    return table.groupby("k").agg(**agg).reset_index().fillna({"std": 0.0})
