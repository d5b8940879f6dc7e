"""Fixed-length token batches cut from a corpus, tokenized lazily, document by document.

Documents are shuffled with a seed, tokenized one at a time (no special tokens), each followed by the
tokenizer's EOS when it has one, concatenated into one stream and cut into rows of ``seq_len``. With
``prepend_bos`` (and a tokenizer that has a BOS) each row is ``[BOS] + seq_len - 1`` stream tokens, which is what
transformer-lens ``model.to_tokens`` gives for a text. Only as many documents are tokenized as the batches
that are actually consumed need.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from workbench.data.corpora import load_documents
from workbench.data.tokens import Tokenizer, bos_id, encode, eos_id, pad_id


@dataclass
class TokenBatch:
    """One batch of rows.

    tokens: LongTensor [batch, seq] token ids (padding positions hold the pad id).
    attention_mask: LongTensor [batch, seq], 1 for a real token (BOS included), 0 for padding; every row's real
        tokens come first (right padding).
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Number of real (unmasked) tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> TokenBatch:
        """The same batch on ``device``."""
        return TokenBatch(self.tokens.to(device), self.attention_mask.to(device))


def token_batches(
    name: str | Sequence[str],
    tokenizer: Tokenizer,
    *,
    seq_len: int = 128,
    batch_size: int = 8,
    split: str = "train",
    max_tokens: int | None = None,
    prepend_bos: bool = True,
    seed: int = 0,
    shuffle: bool = True,
    pad_final_batch: bool = True,
) -> Iterator[TokenBatch]:
    """Batches of ``tokens``/``attention_mask`` [batch_size, seq_len] cut from a corpus.

    name: a corpus name (see ``CORPORA``) or a sequence of documents (``split`` is then ignored).
    tokenizer: any Hugging Face ``PreTrainedTokenizerBase``.
    seq_len: row length including the BOS (>= 2). batch_size: rows per batch (>= 1).
    max_tokens: stop once this many real tokens (mask ones, BOS included) have been yielded; the last row is
        cut short to land on it exactly, unless the budget left is too small for a row (BOS plus one token).
    prepend_bos: start every row with the tokenizer's BOS (ignored when it has none).
    seed / shuffle: documents are visited in ``random.Random(seed)`` order (corpus order when not shuffled).
    pad_final_batch: the last batch, when short of rows, is filled with fully masked rows so every batch is
        [batch_size, seq_len]; with False it just has fewer rows. The last row of the stream is right-padded
        and masked either way.

    Arguments are checked when called (not on the first ``next``): ValueError for seq_len < 2, batch_size < 1,
    max_tokens < 1 (< 2 with a BOS), an unknown corpus or split, or an empty corpus/split.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive (or None for the whole corpus), got {max_tokens}")
    if isinstance(name, str):
        documents = load_documents(name, split)
        label = f"corpus {name!r} (split {split!r})"
    else:
        documents = list(name)
        label = "the given documents"
    if not any(doc.strip() for doc in documents):
        raise ValueError(f"{label} has no documents to tokenize")
    order = list(range(len(documents)))
    if shuffle:
        random.Random(seed).shuffle(order)
    bos = bos_id(tokenizer) if prepend_bos else None
    if max_tokens is not None and bos is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 when rows start with a BOS token, got {max_tokens}")
    rows = _rows(
        (documents[i] for i in order),
        tokenizer,
        seq_len - (bos is not None),
        eos_id(tokenizer),
        max_tokens,
        bos,
    )
    return _batches(rows, bos, seq_len, batch_size, pad_id(tokenizer), pad_final_batch)


def _rows(
    documents: Iterator[str],
    tokenizer: Tokenizer,
    body_len: int,
    eos: int | None,
    max_tokens: int | None,
    bos: int | None,
) -> Iterator[list[int]]:
    """Stream tokens of the documents and cut them into rows of ``body_len`` (the last may be shorter)."""
    extra = 1 if bos is not None else 0
    budget = max_tokens
    buffer: list[int] = []
    for doc in documents:
        ids = encode(tokenizer, doc)
        if not ids:
            continue
        buffer.extend(ids)
        if eos is not None:
            buffer.append(eos)
        start = 0
        while len(buffer) - start >= body_len:
            row = buffer[start : start + body_len]
            start += body_len
            if budget is not None:
                row = row[: budget - extra]
                if not row:
                    return
                budget -= len(row) + extra
            yield row
            if budget is not None and budget <= extra:
                return
        del buffer[:start]
    if buffer:
        if budget is not None:
            buffer = buffer[: budget - extra]
        if buffer:
            yield buffer


def _batches(
    rows: Iterator[list[int]],
    bos: int | None,
    seq_len: int,
    batch_size: int,
    pad: int,
    pad_final_batch: bool,
) -> Iterator[TokenBatch]:
    pending: list[list[int]] = []
    for row in rows:
        pending.append(([bos] if bos is not None else []) + row)
        if len(pending) == batch_size:
            yield _to_batch(pending, seq_len, batch_size, pad, bos)
            pending = []
    if pending:
        yield _to_batch(pending, seq_len, batch_size if pad_final_batch else len(pending), pad, bos)


def _to_batch(rows: list[list[int]], seq_len: int, n_rows: int, pad: int, bos: int | None) -> TokenBatch:
    tokens = torch.full((n_rows, seq_len), pad, dtype=torch.long)
    mask = torch.zeros((n_rows, seq_len), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    if bos is not None:
        tokens[len(rows) :, 0] = bos  # filler rows still look like rows (all masked)
    return TokenBatch(tokens, mask)
