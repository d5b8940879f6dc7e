"""Induction: a random token sequence followed by the same sequence again (``BOS + A + A``).

A model with induction heads predicts the second copy from the first. The corrupted sequence is
``BOS + A + B`` with ``B`` random and different from ``A`` at every position, so nothing repeats.
"""

from __future__ import annotations

import torch

from workbench.data.task_base import Task
from workbench.data.tokens import Tokenizer, bos_id, special_token_ids, tokenizer_name, vocab_size


def sample_tokens(allowed: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """LongTensor [*shape] drawn uniformly from the 1-D id tensor ``allowed`` (one ``torch.randint`` call)."""
    return allowed[torch.randint(0, len(allowed), shape, generator=generator)]


def induction_batch(
    batch: int, half_len: int, vocab_size: int, generator: torch.Generator, bos_id: int
) -> torch.Tensor:
    """Repeated random tokens: LongTensor [batch, 1 + 2 * half_len] = ``[bos_id] + A + A``.

    ``A`` [batch, half_len] is uniform over the ids of ``[0, vocab_size)`` other than ``bos_id``: one
    ``torch.randint(0, m, (batch, half_len), generator=generator)`` call (``m`` such ids) picks among them in
    increasing order, i.e. ``r`` maps to ``r + (r >= bos_id)``. A seeded generator gives the same batch everywhere.
    """
    if batch < 1 or half_len < 1:
        raise ValueError(f"batch and half_len must be positive, got {batch} and {half_len}")
    allowed = torch.tensor([i for i in range(vocab_size) if i != bos_id], dtype=torch.long)
    if len(allowed) < 2:
        raise ValueError(f"vocab_size {vocab_size} leaves fewer than two ids besides bos_id {bos_id}")
    first = sample_tokens(allowed, (batch, half_len), generator)
    bos = torch.full((batch, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, first, first], dim=1)


def make_induction(
    tokenizer: Tokenizer,
    *,
    n: int = 64,
    seed: int = 0,
    half_len: int = 20,
    seq_len: int | None = None,
    vocab_range: tuple[int, int] | None = None,
    prepend_bos: bool = True,
) -> Task:
    """The induction task: clean ``[BOS] + A + A``, corrupted ``[BOS] + A + B``; [n, 1 + 2 * half_len] each.

    half_len (alias ``seq_len``): length of the random half. vocab_range: ``(low, high)`` ids to draw from,
    default the whole vocabulary; special tokens are always left out. Without a BOS (or with
    ``prepend_bos=False``) the rows are ``A + A`` and every position below is one less.

    Metric ``log_prob``: per example, the mean log-probability of the correct next token over the repeated half
    where induction can predict it: logits at positions ``1 + half_len .. 2 * half_len - 1`` (with BOS)
    predicting ``A[1:]``. ``answer_positions`` is the last of them (``seq - 2``), ``correct`` the clean last
    token and ``incorrect`` the corrupted last token, for a single-position logit difference.

    When the tokenizer's only special token is its BOS and ``vocab_range`` is the whole vocabulary, the clean
    tokens equal ``induction_batch(n, half_len, len(tokenizer), torch.Generator().manual_seed(seed), bos)``.
    """
    half_len = seq_len if seq_len is not None else half_len
    if n < 1 or half_len < 2:
        raise ValueError(f"induction needs n >= 1 and half_len >= 2, got n={n}, half_len={half_len}")
    low, high = vocab_range if vocab_range is not None else (0, vocab_size(tokenizer))
    specials = special_token_ids(tokenizer)
    allowed = torch.tensor(
        [i for i in range(max(low, 0), min(high, vocab_size(tokenizer))) if i not in specials]
    )
    if len(allowed) < 2:
        raise ValueError(
            f"vocab_range {(low, high)} leaves fewer than two ordinary tokens in {tokenizer_name(tokenizer)}"
        )
    generator = torch.Generator().manual_seed(seed)
    index_a = torch.randint(0, len(allowed), (n, half_len), generator=generator)
    shift = torch.randint(1, len(allowed), (n, half_len), generator=generator)
    first, other = allowed[index_a], allowed[(index_a + shift) % len(allowed)]
    bos = bos_id(tokenizer) if prepend_bos else None
    head = (
        torch.full((n, 1), bos, dtype=torch.long)
        if bos is not None
        else torch.empty((n, 0), dtype=torch.long)
    )
    clean = torch.cat([head, first, first], dim=1)
    corrupted = torch.cat([head, first, other], dim=1)
    offset = head.shape[1]
    score_positions = torch.arange(offset + half_len, offset + 2 * half_len - 1)
    last = clean.shape[1] - 2
    return Task(
        name="induction",
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_positions=torch.full((n,), last, dtype=torch.long),
        correct=clean[:, -1].clone(),
        incorrect=corrupted[:, -1].clone(),
        prompts=[tokenizer.decode(row[offset:]) for row in clean],
        corrupted_prompts=[tokenizer.decode(row[offset:]) for row in corrupted],
        metric_name="log_prob",
        description=(
            f"Induction: {half_len} random tokens repeated once. Metric: mean log-probability of the correct next "
            f"token at positions {int(score_positions[0])}..{int(score_positions[-1])} (the repeated half, from its "
            "second token on). Corrupted: the second half replaced by different random tokens."
        ),
        score_positions=score_positions,
        info={
            "half_len": half_len,
            "vocab_range": (int(low), int(high)),
            "n_allowed_ids": len(allowed),
            "seed": seed,
        },
    )
