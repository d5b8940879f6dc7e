"""The ViT as an ensemble of paths: class-token logits by path length, path pruning and EnsembleScale.

"Revisiting Vision Transformer from the View of Path Ensemble" (ICCV 2023) reads a residual ViT as an ensemble of
paths of different lengths, prunes the (long) paths that hurt, and reweights the rest with one learned scale per
path group (EnsembleScale). Here the paths are grouped by length exactly: with LayerNorm scales, attention patterns
and MLP ratios frozen from the clean run (:mod:`circuits.vision.frozen`), the class token's logits are
``sum_k c_k`` over lengths ``k = 0..2L`` (:func:`circuits.paths.decompose.decompose`), so

- pruning a set P of lengths gives the logits ``sum_{k not in P} c_k`` (the norms stay frozen at their clean values);
- EnsembleScale gives ``sum_k w_k c_k`` with ``w`` [2L + 1] fitted by L-BFGS to the cross-entropy on held-out images
  (``w = 1`` is the model itself);
- greedy pruning drops, one at a time, the length whose removal raises the held-out accuracy most, while one does.

Lengths are chosen on held-out images and scored on others (the test split), as the paper selects on a validation set.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from circuits.paths.decompose import decompose
from circuits.vision.frozen import VisionInputError, freeze_vit

__all__ = ["accuracy", "check_lengths", "fit_scales", "greedy_prune", "length_logits", "length_table", "mix",
           "prune_table"]


def length_logits(model: Any, images: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, float]:
    """The class token's logits split by path length: ``(parts [2L + 1, B, C], completeness error)``; ``parts.sum(0)``
    is the model's logits (the error is max |sum - clean| / max |clean|, clean recomputed in ``dtype``)."""
    frozen = freeze_vit(model, images, dtype)
    decomp = decompose(frozen)
    parts = torch.stack([decomp.logits(k)[:, 0] for k in range(len(decomp.counts))])
    clean = frozen.clean_logits[:, 0]
    error = float((parts.sum(0) - clean).abs().max() / clean.abs().max().clamp_min(1e-30))
    return parts, error


def mix(parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * parts[k]``: parts [K, B, C], weights [K] -> logits [B, C]."""
    return torch.einsum("k,kbc->bc", weights.to(parts), parts)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of logits [B, C] whose argmax is the label [B]."""
    return float((logits.argmax(-1) == labels.to(logits.device)).double().mean())


def loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy (nats) of logits [B, C] against labels [B]."""
    return float(F.cross_entropy(logits.double(), labels.to(logits.device)))


def check_lengths(lengths: list[int] | None, n_sublayers: int) -> list[int]:
    """Sorted distinct path lengths, each in ``0..n_sublayers``; :class:`VisionInputError` naming the range otherwise."""
    out = sorted(set(int(k) for k in (lengths or [])))
    bad = [k for k in out if not 0 <= k <= n_sublayers]
    if bad:
        raise VisionInputError(f"--prune {', '.join(map(str, bad))}: path lengths of this model run 0..{n_sublayers} "
                               f"({n_sublayers} sublayers)")
    if len(out) == n_sublayers + 1:
        raise VisionInputError(f"--prune drops every path length 0..{n_sublayers}: nothing is left to classify with")
    return out


def keep_mask(n_parts: int, dropped: list[int]) -> torch.Tensor:
    """Weights [K]: 1, and 0 at the dropped lengths."""
    w = torch.ones(n_parts, dtype=torch.float64)
    w[dropped] = 0.0
    return w


def greedy_prune(parts: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Lengths to drop, chosen greedily on (held-out) parts [K, B, C]: at each step drop the length whose removal
    raises the accuracy most (ties: the lower loss); stop when no removal raises it."""
    K = parts.shape[0]
    dropped: list[int] = []
    best = accuracy(parts.sum(0), labels)
    while len(dropped) < K - 1:
        trials = []
        for k in range(K):
            if k in dropped:
                continue
            logits = mix(parts, keep_mask(K, [*dropped, k]))
            trials.append((accuracy(logits, labels), -loss(logits, labels), k))
        acc, _, k = max(trials)
        if acc <= best:
            break
        best = acc
        dropped.append(k)
    return sorted(dropped)


def fit_scales(parts: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """EnsembleScale: one weight per length [K] (from 1) minimising the cross-entropy of ``mix(parts, w)`` on
    (held-out) parts [K, B, C], by L-BFGS with ``steps`` iterations."""
    parts = parts.detach().double()
    w = torch.ones(parts.shape[0], dtype=torch.float64, device=parts.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    target = labels.to(parts.device)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(mix(parts, w), target)
        value.backward()
        return value

    opt.step(closure)
    return w.detach()


def length_table(parts: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """Per length k: paths C(n, k), the mean contribution to the true class's logit, the mean centred-logit norm,
    the accuracy of c_k alone, of the lengths up to k, and of the model without length k."""
    K = parts.shape[0]
    n = K - 1
    idx = torch.arange(parts.shape[1], device=parts.device)
    y = labels.to(parts.device)
    rows = []
    for k in range(K):
        c = parts[k]
        rows.append({
            "length": k, "n_paths": math.comb(n, k), "true_logit": float(c[idx, y].mean()),
            "logit_norm": float((c - c.mean(-1, keepdim=True)).norm(dim=-1).mean()),
            "accuracy_alone": accuracy(c, y), "accuracy_up_to": accuracy(parts[: k + 1].sum(0), y),
            "accuracy_without": accuracy(mix(parts, keep_mask(K, [k])), y),
        })
    return pd.DataFrame(rows)


def prune_table(parts: torch.Tensor, labels: torch.Tensor, fit_parts: torch.Tensor, fit_labels: torch.Tensor, *,
                prune: list[int] | None = None, steps: int = 100) -> tuple[pd.DataFrame, torch.Tensor]:
    """Accuracy and loss on (parts [K, B, C], labels) and on the held-out (fit) images for: the full model, each
    single length dropped, the paths up to each length kept, the greedy pruning chosen on held-out images, the
    lengths ``prune`` (default: the longest), and EnsembleScale fitted on held-out images.
    Returns (table, EnsembleScale weights [K])."""
    K = parts.shape[0]
    n = K - 1
    scales = fit_scales(fit_parts, fit_labels, steps)
    greedy = greedy_prune(fit_parts, fit_labels)
    custom = check_lengths([n] if prune is None else prune, n)
    rows: list[tuple[str, str, torch.Tensor]] = [("full model", "-", torch.ones(K, dtype=torch.float64))]
    rows += [(f"drop length {k}", str(k), keep_mask(K, [k])) for k in range(K)]
    rows += [(f"keep lengths <= {k}", ",".join(map(str, range(k + 1, K))), keep_mask(K, list(range(k + 1, K))))
             for k in range(n)]
    rows.append(("greedy pruning (held-out)", ",".join(map(str, greedy)) or "-", keep_mask(K, greedy)))
    rows.append((f"--prune {','.join(map(str, custom))}", ",".join(map(str, custom)), keep_mask(K, custom)))
    rows.append(("EnsembleScale (held-out)", "-", scales))
    full = accuracy(parts.sum(0), labels)
    out = []
    for method, dropped, w in rows:
        logits = mix(parts, w)
        acc = accuracy(logits, labels)
        out.append({"method": method, "dropped": dropped, "accuracy": acc, "loss": loss(logits, labels),
                    "delta_accuracy": acc - full, "heldout_accuracy": accuracy(mix(fit_parts, w), fit_labels)})
    return pd.DataFrame(out), scales
