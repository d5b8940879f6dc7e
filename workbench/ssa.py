"""Stochastically subsampled self-attention (SSA; Hwang et al. 2023, "The Information Pathways Hypothesis").

At each training step every query attends to a random subset of its visible keys: itself always, plus
``ceil(fraction * (q + 1)) - 1`` of the earlier keys drawn without replacement with probability proportional to
``(1 + distance) ** -locality`` (nearby keys more likely; ``locality`` 0 is uniform sampling). Drawn with the
Gumbel top-k trick from a generator seeded by ``(seed, step)``, so a run is deterministic and resumable. One subset
per sequence and query, shared by every layer and head (this project's choice). ``fraction`` 1 keeps every key.

Applied through an additive mask in the workbench attention function (:mod:`workbench.attention_override`) at
training time only. This masked implementation computes every score and then drops some, so it saves no time and no
memory; :func:`attention_flops` gives the analytic cost an implementation that gathers only the kept keys would pay.
At inference the model runs dense, or as an ensemble of subsampled sub-models (:func:`ensemble_logprobs`: the
average of their probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from workbench.attention_override import attention_modules, override, set_override
from workbench.errors import ConfigError


@dataclass(frozen=True)
class SSAConfig:
    """Fraction of visible keys kept per query, in (0, 1]; the locality exponent (>= 0); the seed of the draws."""

    fraction: float = 0.25
    locality: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if not (math.isfinite(self.locality) and self.locality >= 0):
            raise ConfigError(f"SSA locality must be a finite number >= 0, got {self.locality!r}")


def check_fraction(fraction: float) -> None:
    """ConfigError unless ``0 < fraction <= 1``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0 < fraction <= 1):
        raise ConfigError(f"SSA fraction must be in (0, 1] (the share of visible keys each query keeps), got {fraction!r}")


def kept_counts(seq: int, fraction: float) -> torch.Tensor:
    """Keys kept by each query position q (0-based) of a causal sequence: max(1, ceil(fraction * (q + 1))); [seq]."""
    check_fraction(fraction)
    q = torch.arange(seq, dtype=torch.float64)
    return torch.clamp(torch.ceil(fraction * (q + 1) - 1e-9), min=1).long()


def sample_keep(batch: int, seq: int, cfg: SSAConfig, step: int, device: Any = None) -> torch.Tensor:
    """Boolean keep mask [batch, seq (query), seq (key)]: causal, each query keeps itself and ``kept_counts - 1``
    earlier keys drawn (locality-biased) without replacement."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7)
    q = torch.arange(seq)[:, None]
    k = torch.arange(seq)[None, :]
    dist = q - k
    earlier = dist >= 1
    logw = -cfg.locality * torch.log1p(dist.clamp(min=0).double())
    u = torch.rand(batch, seq, seq, generator=gen, dtype=torch.float64).clamp(min=1e-12)
    score = torch.where(earlier, logw - torch.log(-torch.log(u)), torch.tensor(-math.inf, dtype=torch.float64))
    rank = score.argsort(-1, descending=True).argsort(-1)
    extra = (kept_counts(seq, cfg.fraction) - 1)[:, None]
    keep = (earlier & (rank < extra)) | (dist == 0)
    return keep.to(device)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 where ``keep``, -inf elsewhere; [batch, 1, query, key] for the attention scores."""
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    return torch.where(keep, zero, torch.tensor(-math.inf, dtype=dtype, device=keep.device))[:, None]


def set_mask(model: Any, keep: torch.Tensor | None) -> None:
    """Make every attention layer of ``model`` attend only to ``keep`` [batch, q, k] (None: dense again)."""
    mask = None if keep is None else additive_mask(keep)
    set_override(model, keep is not None)
    for attn in attention_modules(model):
        attn.workbench_score_mask = mask


class SSAIntervention:
    """SSA during training (an intervention of :func:`workbench.train.train_causal_lm`); evaluations run dense."""

    def __init__(self, cfg: SSAConfig):
        self.cfg = cfg
        self.model = None

    def attach(self, model: Any) -> None:
        self.model = model

    def begin_step(self, step: int, tokens: torch.Tensor) -> None:
        set_mask(self.model, sample_keep(tokens.shape[0], tokens.shape[1], self.cfg, step, tokens.device))

    def begin_eval(self, step: int) -> None:
        set_mask(self.model, None)

    def detach(self) -> None:
        if self.model is not None:
            set_mask(self.model, None)


def subsampled_logits(model: Any, tokens: torch.Tensor, cfg: SSAConfig, draw: int) -> torch.Tensor:
    """Logits [batch, seq, vocab] of one sub-model: every layer attends to the keys of draw ``draw``."""
    keep = sample_keep(tokens.shape[0], tokens.shape[1], cfg, step=10_000_000 + draw, device=tokens.device)
    try:
        with override(model):
            set_mask(model, keep)
            return model(input_ids=tokens).logits
    finally:
        set_mask(model, None)


def ensemble_logprobs(model: Any, tokens: torch.Tensor, cfg: SSAConfig, k: int) -> torch.Tensor:
    """log of the mean over ``k`` subsampled sub-models of their next-token probabilities; [batch, seq, vocab]."""
    probs = None
    for draw in range(k):
        p = subsampled_logits(model, tokens, cfg, draw).float().softmax(-1)
        probs = p if probs is None else probs + p
    return (probs / k).log()


def attention_flops(seq: int, d_head: int, n_heads: int, n_layers: int, fraction: float = 1.0) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of the score (QK^T) and value (AV) matmuls of one causal sequence,
    counting only the kept keys: 4 * d_head * sum_q kept(q) per head and layer."""
    kept = int(kept_counts(seq, fraction).sum())
    return 4 * d_head * kept * n_heads * n_layers
