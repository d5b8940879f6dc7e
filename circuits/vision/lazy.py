"""Lazy neurons in a ViT ("The Lazy Neuron Phenomenon", Li et al. 2023): how many MLP neurons are active per layer.

The counts are :class:`probes.sparsity.SparsityCounter`'s (the same counters the language-model ``sparsity`` verb
streams), fed from the ViT bridge's hooks ``blocks.L.mlp.hook_post`` and ``blocks.L.mlp.hook_pre`` batch by batch;
every position (class token and patches) of every image is one token. Active means ``a != 0`` for ReLU (the paper's
metric: 6.3% of ViT-B/16's MLP activations are nonzero), and pre-activation > 0 or ``|a| > tau`` for GELU, which has
no exact zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuits.vision.frozen import as_images
from probes.sparsity import SparsityCounter, SparsityStats, activation_kind

__all__ = ["sparsity_table", "vit_sparsity"]


def vit_sparsity(model: Any, images: torch.Tensor, taus: Sequence[float] = (0.01, 0.1), *, batch_size: int = 256
                 ) -> SparsityStats:
    """Counts of active MLP neurons of every layer over ``images`` [B, C, S, S] (every position is a token)."""
    images = as_images(model, images)
    layers = list(range(int(model.cfg.n_layers)))
    counter = SparsityCounter(layers, sorted(float(t) for t in taus))
    names = set(counter.hooks)
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in images.split(batch_size):
            _, cache = model.run_with_cache(batch.to(device), names_filter=lambda n: n in names)
            for name in counter.hooks:
                act = cache[name]
                counter.consume(name, act, torch.ones(act.shape[:2], dtype=torch.long, device=act.device))
    return counter.stats(activation_kind(model))


def sparsity_table(stats: SparsityStats) -> pd.DataFrame:
    """One row per layer: the fraction of nonzero activations, of positive pre-activations, of ``|a| > tau`` for
    each tau, and of dead neurons (never positive); ``active`` is the nonzero fraction for ReLU and the positive
    pre-activation fraction otherwise."""
    relu = stats.activation == "relu"
    nonzero, positive, above = stats.fraction_nonzero(), stats.fraction_pre_positive(), stats.fraction_above()
    dead = stats.dead().double().mean(-1)
    rows = []
    for i, layer in enumerate(stats.layers):
        row = {"layer": layer, "active": float(nonzero[i] if relu else positive[i]), "nonzero": float(nonzero[i]),
               "pre_positive": float(positive[i])}
        row.update({f"above_{tau:g}": float(above[i, j]) for j, tau in enumerate(stats.taus)})
        row.update({"dead": float(dead[i]), "d_mlp": stats.d_mlp, "tokens": stats.n_tokens})
        rows.append(row)
    return pd.DataFrame(rows)
