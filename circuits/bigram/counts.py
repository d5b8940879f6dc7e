"""The bigram distribution p(next | current) of a text, counted over a model's tokenizer, stored sparse.

Counts come from token rows (what the model reads: ``[BOS] + text``), pair by pair along each row, streamed batch by
batch: only the distinct pairs seen are kept (sorted codes ``current * V + next`` with their counts), so memory grows
with the number of distinct pairs, never with the token count.

Smoothing (a Dirichlet prior toward the unigram distribution, so every row is a full distribution with no zeros)::

    p(n | c) = (C(c, n) + alpha * u(n)) / (C(c) + alpha),     u(n) = (U(n) + 1) / (sum U + V)

with C(c, n) the pair counts, C(c) = sum_n C(c, n) the row total, U(n) how often n follows anything (add-one smoothed
into u). Only rows whose current token was seen at least ``min_count`` times are used as targets (:meth:`kept`).
Nothing is ever made dense over V x V: cross-entropies against a row gather the row's few seen entries and add the
unigram term as one dot product.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["BigramCounter", "BigramTable", "count_bigrams"]


class BigramCounter:
    """Streaming pair counter: :meth:`add` rows of token ids (with an optional mask of real tokens), :meth:`table`.

    Pairs are buffered and folded into the sorted (code, count) arrays every ``chunk`` pairs, so memory stays at
    the distinct pairs plus one chunk.
    """

    def __init__(self, vocab_size: int, chunk: int = 1 << 20) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.chunk = int(chunk)
        self.codes = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)
        self._pending: list[torch.Tensor] = []
        self._n_pending = 0
        self.n_pairs = 0

    def add(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Count the consecutive pairs of each row of ``tokens`` [rows, seq] (or one row [seq]); ``mask`` [rows, seq]
        (1 = a real token): a pair counts when both of its tokens are real."""
        tokens = torch.as_tensor(tokens).long().cpu()
        if tokens.dim() == 1:
            tokens = tokens[None]
        cur, nxt = tokens[:, :-1], tokens[:, 1:]
        if (tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size)):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
        keep = torch.ones_like(cur, dtype=torch.bool)
        if mask is not None:
            mask = torch.as_tensor(mask).bool().cpu().reshape(tokens.shape)
            keep = mask[:, :-1] & mask[:, 1:]
        codes = (cur * self.vocab_size + nxt)[keep]
        self.n_pairs += int(codes.numel())
        self._pending.append(codes)
        self._n_pending += int(codes.numel())
        if self._n_pending >= self.chunk:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        new, new_counts = torch.unique(torch.cat(self._pending), return_counts=True)
        self._pending, self._n_pending = [], 0
        codes, inverse = torch.unique(torch.cat([self.codes, new]), return_inverse=True)
        counts = torch.zeros(codes.numel(), dtype=torch.long)
        counts.index_add_(0, inverse, torch.cat([self.counts, new_counts]))
        self.codes, self.counts = codes, counts

    def table(self, *, smoothing: float = 1.0, min_count: int = 5) -> BigramTable:
        """The smoothed table of everything counted so far."""
        self._fold()
        return BigramTable(self.vocab_size, self.codes.clone(), self.counts.clone(), float(smoothing), int(min_count))


def count_bigrams(rows: Iterable[torch.Tensor | list[int]], vocab_size: int, *, smoothing: float = 1.0,
                  min_count: int = 5) -> BigramTable:
    """The bigram table of ``rows`` (each a sequence of token ids; pairs never cross rows)."""
    counter = BigramCounter(vocab_size)
    for row in rows:
        counter.add(torch.as_tensor(row, dtype=torch.long))
    return counter.table(smoothing=smoothing, min_count=min_count)


@dataclass
class BigramTable:
    """Sparse pair counts and the smoothed bigram distribution.

    codes: LongTensor [nnz] sorted ``current * vocab_size + next``; counts: LongTensor [nnz] their counts (> 0).
    smoothing: alpha (> 0) of the unigram prior; min_count: rows seen fewer times are not targets.
    """

    vocab_size: int
    codes: torch.Tensor
    counts: torch.Tensor
    smoothing: float = 1.0
    min_count: int = 5

    def __post_init__(self) -> None:
        if not self.smoothing > 0:
            raise ValueError(f"smoothing must be > 0 (every row a full distribution), got {self.smoothing}")
        V = self.vocab_size
        dev = self.codes.device
        self.row_of = self.codes // V                      # [nnz]
        self.col_of = self.codes % V                       # [nnz]
        self.row_total = torch.zeros(V, dtype=torch.long, device=dev).index_add_(0, self.row_of, self.counts)  # [V]
        col_total = torch.zeros(V, dtype=torch.long, device=dev).index_add_(0, self.col_of, self.counts)
        self.unigram = (col_total.double() + 1.0) / (col_total.sum().double() + V)                         # [V]
        self.row_ptr = torch.searchsorted(self.codes, torch.arange(V + 1, device=dev) * V)                # [V + 1]
        self._entropy = torch.full((V,), float("nan"), dtype=torch.float64, device=dev)  # filled as rows are asked

    @property
    def n_tokens(self) -> int:
        """Pairs counted (each row of text of length n gives n - 1)."""
        return int(self.counts.sum())

    def to(self, device: torch.device | str) -> BigramTable:
        """The same table on ``device`` (itself when it is there already)."""
        if self.codes.device == torch.device(device):
            return self
        return BigramTable(self.vocab_size, self.codes.to(device), self.counts.to(device), self.smoothing,
                           self.min_count)

    def kept(self, current: torch.Tensor) -> torch.Tensor:
        """Bool, shape of ``current``: the current token's row was seen at least ``min_count`` times."""
        return self.row_total[current] >= self.min_count

    def count(self, current: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """C(current, next), LongTensor of the broadcast shape (0 for pairs never seen)."""
        code = current.long() * self.vocab_size + nxt.long()
        pos = torch.searchsorted(self.codes, code.reshape(-1)).clamp(max=max(self.codes.numel() - 1, 0))
        if self.codes.numel() == 0:
            return torch.zeros_like(code)
        hit = self.codes[pos] == code.reshape(-1)
        return torch.where(hit, self.counts[pos], torch.zeros_like(pos)).reshape(code.shape)

    def log_prob(self, current: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """log p(next | current), float64 of the broadcast shape (smoothed, always finite)."""
        c = self.count(current, nxt).double()
        total = self.row_total[current.long()].double()
        a = self.smoothing
        return torch.log((c + a * self.unigram[nxt.long()]) / (total + a))

    def dense_rows(self, current: torch.Tensor) -> torch.Tensor:
        """The smoothed rows p(. | current) as a dense float64 [len(current), V] (for small sets of rows)."""
        current = current.long().reshape(-1)
        a = self.smoothing
        total = self.row_total[current].double()[:, None]
        out = (a * self.unigram)[None].expand(len(current), -1) / (total + a)
        out = out.clone()
        for i, c in enumerate(current.tolist()):
            lo, hi = int(self.row_ptr[c]), int(self.row_ptr[c + 1])
            out[i, self.col_of[lo:hi]] += self.counts[lo:hi].double() / (total[i, 0] + a)
        return out

    def cross_entropy(self, log_q: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """-sum_n p(n | current_i) log_q[i, n] for each row i: ``log_q`` [P, V] (log-probabilities, any float dtype,
        differentiable), ``current`` [P] -> [P] in log_q's dtype. Never builds p densely."""
        current = current.long()
        a = self.smoothing
        total = self.row_total[current].to(log_q.dtype)                                       # [P]
        lo, hi = self.row_ptr[current], self.row_ptr[current + 1]
        lengths = hi - lo                                                                     # [P]
        which = torch.repeat_interleave(torch.arange(len(current), device=log_q.device), lengths)
        starts = torch.repeat_interleave(lo - torch.cumsum(lengths, 0) + lengths, lengths)
        entry = starts + torch.arange(int(lengths.sum()), device=log_q.device)               # [nnz_batch]
        seen = log_q[which, self.col_of[entry]] * self.counts[entry].to(log_q.dtype)
        sparse = torch.zeros(len(current), dtype=log_q.dtype, device=log_q.device).index_add(0, which, seen)
        prior = log_q @ self.unigram.to(log_q.dtype)                                          # [P]
        return -(sparse + a * prior) / (total + a)

    def entropy(self, current: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """H(p(. | current_i)) for each i, float64 of ``current``'s shape (each distinct row computed once, ``chunk``
        rows at a time, and remembered)."""
        current = current.long()
        rows = torch.unique(current.reshape(-1))
        todo = rows[torch.isnan(self._entropy[rows])]
        for start in range(0, len(todo), chunk):
            p = self.dense_rows(todo[start:start + chunk])
            self._entropy[todo[start:start + chunk]] = -(p * p.log()).sum(-1)
        return self._entropy[current]
