"""A shuffled activation buffer fed by the streaming harvest, resumable block by block.

The token stream is cut into *blocks* of ``block_batches`` token batches. Each block is run through the model once
(all requested hooks in the same forward pass, stopping after the last one), the real tokens' activations are
stored (in memory, or in a memory-mapped file under ``spill_dir``), and the rows are visited in a random order drawn
from ``torch.Generator().manual_seed(seed * 1_000_003 + block)``. Memory is bounded by one block per hook.

Everything is a pure function of (model, token source, block index): to resume at block ``b``, batch ``i``, the
buffer skips ``b * block_batches`` token batches without running the model, harvests block ``b`` again and starts
at batch ``i`` with the same permutation, so a resumed run sees exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.harvest import harvest

#: a function returning a fresh iterator over token batches (``TokenBatch`` or LongTensor [batch, seq])
TokenSource = Callable[[], Iterable[Any]]


@dataclass
class Block:
    """One harvested block: ``rows[hook]`` [n_rows, width] and the visiting order ``perm`` [n_rows]."""

    index: int
    rows: dict[str, torch.Tensor]
    perm: torch.Tensor
    batch_size: int

    @property
    def n_rows(self) -> int:
        return int(self.perm.numel())

    @property
    def n_batches(self) -> int:
        """Full training batches in this block (the remainder, fewer than ``batch_size`` rows, is not used)."""
        return self.n_rows // self.batch_size

    def batch(self, i: int) -> dict[str, torch.Tensor]:
        """Training batch ``i``: ``{hook: [batch_size, width]}``, the same rows for every hook."""
        idx = self.perm[i * self.batch_size : (i + 1) * self.batch_size]
        return {h: r.index_select(0, idx) for h, r in self.rows.items()}


class _Collector:
    """Harvest consumer that appends the real tokens' activations of each hook into growing storage."""

    def __init__(self, hooks: Sequence[str], capacity: int, spill_dir: Path | None, dtype: torch.dtype) -> None:
        self.hooks = list(hooks)
        self.capacity = capacity
        self.spill_dir = spill_dir
        self.dtype = dtype
        self.store: dict[str, torch.Tensor] = {}
        self.filled: dict[str, int] = {h: 0 for h in hooks}

    def _alloc(self, hook: str, width: int) -> torch.Tensor:
        if self.spill_dir is None:
            return torch.empty(self.capacity, width, dtype=self.dtype, device="cpu")  # host memory
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{hook}.f32"
        arr = np.memmap(path, dtype=np.float32, mode="w+", shape=(self.capacity, width))
        return torch.from_numpy(arr)

    def consume(self, name: str, activation: torch.Tensor, mask: torch.Tensor) -> None:
        act = activation.reshape(*activation.shape[:2], -1)[mask.bool()].to("cpu", self.dtype)
        if name not in self.store:
            self.store[name] = self._alloc(name, act.shape[-1])
        start = self.filled[name]
        end = start + act.shape[0]
        if end > self.store[name].shape[0]:
            raise RuntimeError(f"activation buffer overflow at {name}: {end} rows > capacity {self.capacity}")
        self.store[name][start:end] = act
        self.filled[name] = end


class ActivationBuffer:
    """Shuffled blocks of activations of several hooks from one model.

    model: a hooked bridge; source: :data:`TokenSource`; hooks: hook names (all harvested in the same forwards);
    block_batches: token batches per block; batch_size: rows per training batch; seed: permutation seed;
    spill_dir: keep blocks in memory-mapped files there instead of RAM.
    """

    def __init__(
        self, model, source: TokenSource, hooks: Sequence[str], *, block_batches: int = 16, batch_size: int = 4096,
        seed: int = 0, spill_dir: Path | str | None = None, device: str | None = None,
    ) -> None:
        if block_batches < 1 or batch_size < 1:
            raise ValueError(f"block_batches and batch_size must be positive, got {block_batches}, {batch_size}")
        if not hooks:
            raise ValueError("the activation buffer needs at least one hook")
        self.model, self.source, self.hooks = model, source, list(dict.fromkeys(hooks))
        self.block_batches, self.batch_size, self.seed = block_batches, batch_size, seed
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.device = device

    def permutation(self, block: int, n_rows: int) -> torch.Tensor:
        """The visiting order of block ``block`` (a pure function of seed, block and size)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + block)
        return torch.randperm(n_rows, generator=gen, device="cpu")

    def blocks(self, start_block: int = 0) -> Iterator[Block]:
        """Blocks ``start_block``, ``start_block + 1``, ... until the token source ends."""
        stream = iter(self.source())
        for _ in islice(stream, start_block * self.block_batches):
            pass
        index = start_block
        while True:
            chunk = list(islice(stream, self.block_batches))
            if not chunk:
                return
            yield self._harvest(index, chunk)
            index += 1

    def _harvest(self, index: int, chunk: list[Any]) -> Block:
        capacity = sum(int(b.numel() if isinstance(b, torch.Tensor) else b.tokens.numel()) for b in chunk)
        collector = _Collector(self.hooks, capacity, self.spill_dir, torch.float32)
        harvest(self.model, chunk, [collector], progress=False, device=self.device)
        n = min(collector.filled.values())
        rows = {h: collector.store[h][:n] for h in self.hooks}
        return Block(index=index, rows=rows, perm=self.permutation(index, n), batch_size=self.batch_size)


class TensorBuffer:
    """Activations already in memory, served like :class:`ActivationBuffer`: ``rows`` {hook: [N, width]} cut into
    blocks of ``block_rows`` rows, each visited in its seeded random order (for benchmarks and notebooks)."""

    def __init__(self, rows: dict[str, torch.Tensor], *, batch_size: int = 4096, block_rows: int | None = None,
                 seed: int = 0, epochs: int = 1) -> None:
        sizes = {int(r.shape[0]) for r in rows.values()}
        if len(sizes) != 1:
            raise ValueError(f"every hook needs the same number of rows, got {sorted(sizes)}")
        self.rows, self.batch_size, self.seed, self.epochs = rows, batch_size, seed, epochs
        self.n = sizes.pop()
        self.block_rows = block_rows or self.n
        self.hooks = list(rows)

    def widths(self) -> dict[str, int]:
        return {h: int(r.shape[-1]) for h, r in self.rows.items()}

    def blocks(self, start_block: int = 0) -> Iterator[Block]:
        per_epoch = -(-self.n // self.block_rows)
        for index in range(start_block, per_epoch * self.epochs):
            lo = (index % per_epoch) * self.block_rows
            chunk = {h: r[lo : lo + self.block_rows] for h, r in self.rows.items()}
            n = next(iter(chunk.values())).shape[0]
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + index)
            yield Block(index=index, rows=chunk, perm=torch.randperm(n, generator=gen, device="cpu"),
                        batch_size=self.batch_size)


def corpus_source(
    tokenizer, corpus: str = "wiki", *, seq_len: int = 128, batch_size: int = 8, split: str = "train", seed: int = 0,
    max_tokens: int | None = None,
) -> TokenSource:
    """A :data:`TokenSource` over a bundled corpus (see ``workbench.data.token_batches``), restartable at will."""
    from workbench.data import token_batches

    def make() -> Iterator[Any]:
        return token_batches(corpus, tokenizer, seq_len=seq_len, batch_size=batch_size, split=split, seed=seed,
                             max_tokens=max_tokens)

    _check_readable(tokenizer, corpus, next(iter(make()), None))  # checks the arguments now, and the first batch
    return make


#: a corpus whose first batch is more than this fraction unknown tokens draws an UnreadableCorpusWarning
MAX_UNKNOWN_FRACTION = 0.5


class UnreadableCorpusWarning(UserWarning):
    """Most tokens of a corpus are the tokenizer's unknown token: the model sees (nearly) the same input everywhere."""


def _check_readable(tokenizer, corpus: str, batch) -> None:
    """Warn when the tokenizer cannot read the corpus: most real tokens of its first batch are the unknown token (a
    toy model's word-level vocabulary maps natural text to one id, so the model would see a constant input and a
    dictionary trained on it learns nothing; training and evaluation then say so too)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if batch is None or unk is None:
        return
    tokens, mask = batch.tokens[:, 1:], batch.attention_mask[:, 1:].bool()  # the first column is the BOS
    real = int(mask.sum())
    share = float((tokens[mask] == unk).sum()) / real if real else 0.0
    if share > MAX_UNKNOWN_FRACTION:
        warnings.warn(UnreadableCorpusWarning(
            f"corpus {corpus!r} is not text this tokenizer reads: {share:.0%} of the tokens of its first batch are the "
            f"unknown token {getattr(tokenizer, 'unk_token', unk)!r} (id {unk}), so the model would see the same "
            "input at every position; give a token source in the model's own vocabulary (for example "
            "circuits.dictionaries.buffer.random_source or the model's task batches)"), stacklevel=3)


def random_source(vocab_size: int, *, seq_len: int = 32, batch_size: int = 16, n_batches: int = 64, seed: int = 0,
                  bos_id: int | None = None) -> TokenSource:
    """A :data:`TokenSource` of uniformly random tokens [batch_size, seq_len] (optionally BOS-first), for toy models."""

    def make() -> Iterator[torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for _ in range(n_batches):
            t = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen, device="cpu")
            if bos_id is not None:
                t[:, 0] = bos_id
            yield t

    return make
