"""The exact split of the residual stream (hence the logits) by path length, by dynamic programming over sublayers.

With the frozen affine sublayers ``x -> M_i x + b_i`` (:mod:`circuits.paths.frozen`), the residual is a sum over
paths, a path being the set of sublayers it passes through (``2^n`` paths, ``C(n, k)`` of length ``k``). Keep one
residual part per length: ``r^(0)`` = embedding; after sublayer ``i``: ``r^(k) += M_i r^(k-1)`` for ``k >= 1`` and
``b_i`` is added to ``r^(1)`` (a bias starts a path at its own sublayer). A path of length ``k`` applies the first of
its sublayers affinely and the others linearly. The length-``k`` logits are ``c_k = readout(r^(k))``; the readout's
own constant (final norm bias through ``W_U``, plus ``b_U``) belongs to length 0 (the path that passes through no
sublayer). ``sum_k c_k`` is the clean logits (completeness). With ``max_length = K`` lengths above ``K`` are kept
together in one last part, which keeps completeness and costs ``O(n K)`` sublayer applications instead of ``O(n^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.paths.frozen import FrozenRun, PathInputError, freeze

__all__ = ["LogitTarget", "PathDecomposition", "decompose", "path_counts"]


def path_counts(n: int, max_length: int | None = None) -> list[int]:
    """Number of paths of each length ``0..n`` (``C(n, k)``); with ``max_length`` the lengths above it are summed last."""
    counts = [math.comb(n, k) for k in range(n + 1)]
    if max_length is not None and max_length < n:
        counts = counts[: max_length + 1] + [sum(counts[max_length + 1:])]
    return counts


@dataclass
class LogitTarget:
    """What a path contributes to: ``mean_b sum_j signs[b, j] * logits[b, positions[b], token_ids[b, j]]``.

    positions: LongTensor [batch]; token_ids: LongTensor [batch, m]; signs: FloatTensor [batch, m]. The target logit
    is m = 1, sign +1; a logit difference is m = 2, signs (+1, -1).
    """

    positions: torch.Tensor
    token_ids: torch.Tensor
    signs: torch.Tensor

    @classmethod
    def top_prediction(cls, clean_logits: torch.Tensor, position: int = -1) -> LogitTarget:
        """The clean run's top token at ``position`` of every row. clean_logits: [batch, pos, vocab]."""
        b, p, _ = clean_logits.shape
        pos = torch.full((b,), position % p, dtype=torch.long)
        return cls(pos, clean_logits[torch.arange(b), pos].argmax(-1).cpu()[:, None], torch.ones(b, 1))

    @classmethod
    def from_task(cls, task: Any) -> LogitTarget:
        """The logit difference ``correct - incorrect`` at each example's answer position."""
        ids = torch.stack([task.correct, task.incorrect], dim=1)
        return cls(task.answer_positions.long(), ids.long(), torch.tensor([[1.0, -1.0]]).expand(ids.shape[0], 2).clone())

    def direction(self, W_U: torch.Tensor) -> torch.Tensor:
        """The readout direction per row: [batch, d] = mean-weighted sum of the signed unembedding columns."""
        cols = W_U[:, self.token_ids.to(W_U.device)]  # [d, batch, m]
        return torch.einsum("dbm,bm->bd", cols, self.signs.to(W_U)) / self.positions.shape[0]

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The target of logits [..., batch, pos, vocab] -> [...]."""
        b = torch.arange(self.positions.shape[0])
        picked = logits[..., b, self.positions, :]  # [..., batch, vocab]
        vals = torch.gather(picked, -1, self.token_ids.to(logits.device).expand(*picked.shape[:-1], -1))
        return (vals * self.signs.to(logits)).sum(-1).mean(-1)


@dataclass
class PathDecomposition:
    """The residual split by path length.

    parts: [K, batch, pos, d] with ``K = n + 1`` (lengths 0..n) or ``max_length + 2`` (the last part holds every
    longer path); counts: number of paths per part; frozen: the frozen run (readout, clean logits).
    """

    parts: torch.Tensor
    counts: list[int]
    frozen: FrozenRun
    max_length: int | None

    @property
    def labels(self) -> list[str]:
        """Length labels of the parts: "0", "1", ... and ">K" for the lumped part."""
        out = [str(k) for k in range(len(self.counts))]
        if self.max_length is not None and self.max_length < self.frozen.n:
            out[-1] = f">{self.max_length}"
        return out

    def logits(self, k: int) -> torch.Tensor:
        """c_k, the logits of part ``k`` (the readout constant in part 0): [batch, pos, vocab]."""
        return self.frozen.readout(self.parts[k], constant=(k == 0))

    def total_logits(self) -> torch.Tensor:
        """sum_k c_k (equals the clean logits): [batch, pos, vocab]."""
        return self.frozen.readout(self.parts.sum(0), constant=True)

    def completeness_error(self) -> float:
        """max |sum_k c_k - clean logits| / max |clean logits|."""
        total = sum(self.logits(k) for k in range(len(self.counts)))
        clean = self.frozen.clean_logits.to(total)
        return float((total - clean).abs().max() / clean.abs().max())

    def target_contributions(self, target: LogitTarget) -> torch.Tensor:
        """Each part's contribution to the target: [K] (sums to the clean target)."""
        u = target.direction(self.frozen.W_U)  # [batch, d]
        b = torch.arange(u.shape[0])
        x = self.frozen.final(self.parts)[:, b, target.positions.to(self.parts.device)]  # [K, batch, d]
        out = torch.einsum("kbd,bd->k", x, u.to(x))
        const = target.score_logits(self.frozen.readout_bias.expand(*self.frozen.clean_logits.shape))
        out[0] += const
        return out

    def logit_norms(self) -> torch.Tensor:
        """Mean over positions of each part's centred logit-vector norm ``||c_k - mean_vocab c_k||``: [K]."""
        out = []
        for k in range(len(self.counts)):
            c = self.logits(k)
            out.append((c - c.mean(-1, keepdim=True)).norm(dim=-1).mean())
        return torch.stack(out)

    def cumulative_losses(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token loss (nats) with only the paths up to each length (the last entry is the clean loss): [K]."""
        tokens = self.frozen.tokens if tokens is None else tokens
        cum = torch.zeros_like(self.frozen.clean_logits)
        out = []
        for k in range(len(self.counts)):
            cum = cum + self.logits(k)
            out.append(next_token_loss(cum, tokens))
        return torch.stack(out)

    def length_stats(self) -> dict[str, Any]:
        """One pass over the lengths (each ``c_k`` computed once): ``logit_norm`` [K] (as :meth:`logit_norms`),
        ``cumulative_loss`` [K] (as :meth:`cumulative_losses`) and ``completeness_error`` (as
        :meth:`completeness_error`)."""
        cum = torch.zeros_like(self.frozen.clean_logits, dtype=self.parts.dtype)
        norms, losses = [], []
        for k in range(len(self.counts)):
            c = self.logits(k)
            norms.append((c - c.mean(-1, keepdim=True)).norm(dim=-1).mean())
            cum = cum + c
            losses.append(next_token_loss(cum, self.frozen.tokens))
        clean = self.frozen.clean_logits.to(cum)
        error = float((cum - clean).abs().max() / clean.abs().max())
        return {"logit_norm": torch.stack(norms), "cumulative_loss": torch.stack(losses), "completeness_error": error}

    def cumulative_metric(self, metric: Any) -> torch.Tensor:
        """``metric`` (logits [batch, pos, vocab] -> number or [batch]) of the logits of the paths up to each length,
        e.g. a task's metric (mean over the batch): [K]. The last entry is the clean run's value."""
        cum = torch.zeros_like(self.frozen.clean_logits)
        out = []
        for k in range(len(self.counts)):
            cum = cum + self.logits(k).to(cum)
            out.append(torch.as_tensor(metric(cum)).float().mean())
        return torch.stack(out)

    def reweighted_loss(self, weights: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token loss with part ``k`` scaled by ``weights[k]`` (weights [K]; differentiable)."""
        tokens = self.frozen.tokens if tokens is None else tokens
        mixed = torch.einsum("k,kbpd->bpd", weights.to(self.parts), self.parts)
        logits = self.frozen.readout(mixed) + weights[0].to(self.parts) * self.frozen.readout_bias
        return next_token_loss(logits, tokens)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``. logits: [batch, pos, vocab]."""
    if tokens.shape[1] < 2:
        raise PathInputError("a next-token loss needs at least two tokens")
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -lp.gather(-1, tokens[:, 1:, None].to(lp.device)).mean()


def decompose(
    model_or_frozen: Any,
    tokens: torch.Tensor | str | list[str] | None = None,
    *,
    max_length: int | None = None,
    stop_at: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PathDecomposition:
    """Split the residual stream by path length.

    model_or_frozen: a ``TransformerBridge`` (then ``tokens`` is required: a prompt, prompts or ids [batch, pos]) or a
    :class:`FrozenRun`. max_length: keep lengths ``0..max_length`` apart and lump longer paths (>= 1; default: all).
    stop_at: decompose the residual entering sublayer ``stop_at`` (0 <= stop_at <= n) instead of the final one, to
    split a later component's input. dtype: compute in this dtype (e.g. float64: long paths of large models cancel
    each other by orders of magnitude, and float64 keeps their sum exact). Returns parts [K, batch, pos, d].
    """
    frozen = model_or_frozen if isinstance(model_or_frozen, FrozenRun) else None
    if frozen is None:
        if tokens is None:
            raise PathInputError("decompose(model, tokens): tokens are required with a model")
        frozen = freeze(model_or_frozen, tokens)
    if dtype is not None and dtype != frozen.embed.dtype:
        frozen = frozen.to(dtype)
    n = frozen.n
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
        raise PathInputError(f"max_length must be an integer >= 1 (or None for all {n} lengths), got {max_length!r}")
    stop = n if stop_at is None else stop_at
    if not 0 <= stop <= n:
        raise PathInputError(f"stop_at must be between 0 and {n} (the number of sublayers), got {stop_at}")
    lumped = max_length is not None and max_length < n
    n_parts = max_length + 2 if lumped else n + 1
    parts = torch.zeros(n_parts, *frozen.embed.shape, dtype=frozen.embed.dtype, device=frozen.embed.device)
    parts[0] = frozen.embed
    with torch.no_grad():
        for i in tqdm(range(stop), desc="paths", disable=not progress):
            top = min(i, n_parts - 1)  # parts 0..top may be non-zero before sublayer i
            out = frozen.sublayers[i].apply(parts[: top + 1])
            if lumped and top == n_parts - 1:
                parts[1:] += out[:-1]
                parts[-1] += out[-1]
            else:
                parts[1: top + 2] += out
            parts[1] += frozen.sublayers[i].bias
    counts = path_counts(stop, max_length if lumped else None)
    counts = counts + [0] * (n_parts - len(counts))
    return PathDecomposition(parts, counts, frozen, max_length if lumped else None)
