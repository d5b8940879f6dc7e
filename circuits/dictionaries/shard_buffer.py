"""Reading activation shards as a training buffer: memory-mapped, shuffled across shards, a few shards at a time.

Epoch ``e`` visits the shards in a seeded random order (``numpy.random.default_rng((seed, e))``) and groups them
``shards_per_block`` at a time: group ``g`` is buffer block ``e * blocks_per_epoch + g``. A block's rows are its
shards' rows concatenated in that order, visited in the permutation :class:`~circuits.dictionaries.buffer.TensorBuffer`
uses (``torch.randperm`` seeded with ``seed * 1_000_003 + block``). Block indices and orders are pure functions of
(seed, block), so a resume position (block, batch) means the same whatever the world size, and every row is visited
once per epoch. Memory is bounded by one block (``shards_per_block`` shards) whatever the token count: each shard is
memory-mapped only while its rows are read, then unmapped.

``part=(rank, world)``: rank ``r`` of ``W`` reads from disk only its rows ``[r*B/W, (r+1)*B/W)`` of every global
batch ``B``, plus the block's first :data:`HEAD_ROWS` rows (the trainer's data-dependent initialisation and resume
fingerprint read the head of ``Block.rows``: every rank sees there what a single process sees). Its blocks hold the
head, then the rank's other rows in visiting order, with ``perm`` pointing at the rank's rows and ``batch_size``
B/W: ``Block.batch(i)`` is this rank's slice of global batch ``i`` (the blocks need no field beyond those of an
ordinary block).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuits.dictionaries.buffer import Block
from circuits.dictionaries.shard_format import (
    ShardError,
    ShardFormatError,
    ShardMismatchError,
    check_shard,
    model_fingerprint,
    read_manifest,
)
from circuits.dictionaries.train import init_from_data
from workbench.analysis import model_spec

#: rows of a block's head every rank holds in ``Block.rows`` (those ``init_from_data`` reads)
HEAD_ROWS = int(inspect.signature(init_from_data).parameters["rows"].default)
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class ShardBuffer:
    """Shuffled blocks of activations read from a shard folder (see the module docstring).

    folder: a shard folder; batch_size: rows of a (global) training batch; seed: the order's seed; shards_per_block:
    shards read into one block; hooks: the hooks to read (default all); part: ``(rank, world)`` to read one data-
    parallel rank's rows (world must divide batch_size); expect_model: a model spec, or a loaded model (its spec,
    weight fingerprint and hook widths are then compared too); epochs: passes over the shards.

    Raises ShardFormatError (not a shard folder, another format or version, a missing or truncated shard, foreign
    tensors, an unfinished write) and ShardMismatchError (another model, a hook the folder lacks, widths that
    differ), each naming what differs and what was expected.
    """

    def __init__(self, folder: Path | str, *, batch_size: int, seed: int = 0, shards_per_block: int = 4,
                 hooks: Sequence[str] | None = None, part: tuple[int, int] | None = None, expect_model: Any = None,
                 epochs: int = 1) -> None:
        for name, value in (("batch_size", batch_size), ("shards_per_block", shards_per_block), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ShardError(f"ShardBuffer {name} must be an integer >= 1, got {value!r}")
        if part is not None:
            rank, world = part if isinstance(part, (tuple, list)) and len(part) == 2 else (-1, 0)
            if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
                raise ShardError(f"part must be (rank, world) with 0 <= rank < world, got {part!r}")
            if batch_size % world:
                raise ShardError(f"the world size {world} must divide batch_size {batch_size}")
        self.folder = Path(folder)
        self.batch_size, self.seed, self.shards_per_block, self.epochs, self.part = (
            batch_size, seed, shards_per_block, epochs, part)
        man = self.manifest = read_manifest(self.folder)
        if not man["complete"]:
            raise ShardFormatError(f"{self.folder}: the write did not finish ({len(man['shards'])} shards, "
                                   f"{man['tokens']} tokens so far); resume it with `workbench harvest-shards` and "
                                   "the same settings")
        if not man["shards"]:
            raise ShardFormatError(f"{self.folder}: the manifest lists no shard")
        self.hooks = list(man["hooks"]) if hooks is None else list(dict.fromkeys(hooks))
        missing = [h for h in self.hooks if h not in man["hooks"]]
        if missing:
            raise ShardMismatchError(f"{self.folder} holds no activations of {missing}; it holds {man['hooks']}")
        self.rows_of = [int(s["rows"]) for s in man["shards"]]
        self.layouts = [check_shard(self.folder / s["file"], man, n) for s, n in zip(man["shards"], self.rows_of,
                                                                                    strict=True)]
        if expect_model is not None:
            self._check_model(expect_model)
        self.reads: list[tuple[int, list[int]]] = []  # (block, shards read): what each block read from disk

    def _check_model(self, expect: Any) -> None:
        man = self.manifest
        spec = expect if isinstance(expect, str) else model_spec(expect)
        if spec is not None and man.get("model") is not None and man["model"] != spec:
            raise ShardMismatchError(f"{self.folder} was written from model {man['model']!r}, expected {spec!r}")
        if isinstance(expect, str):
            return
        fp = model_fingerprint(expect)
        if man.get("model_fingerprint") not in (None, fp):
            raise ShardMismatchError(f"{self.folder} was written from other weights of {man.get('model')!r} "
                                     f"(weight fingerprint {man['model_fingerprint']}, this model's {fp}): another "
                                     "checkpoint or model")
        from circuits.dictionaries.saelens_io import hook_widths

        widths = hook_widths(expect, self.hooks)
        differ = {h: (self.widths()[h], w) for h, w in widths.items() if self.widths()[h] != w}
        if differ:
            raise ShardMismatchError(f"{self.folder}: hook widths differ from the model's: " + ", ".join(
                f"{h} is {a} wide in the shards, {b} in the model" for h, (a, b) in differ.items()))

    @property
    def tokens(self) -> int:
        """Rows (real tokens) in one epoch."""
        return sum(self.rows_of)

    @property
    def blocks_per_epoch(self) -> int:
        return -(-len(self.rows_of) // self.shards_per_block)

    def widths(self) -> dict[str, int]:
        return {h: int(self.manifest["widths"][h]) for h in self.hooks}

    def shard_order(self, epoch: int) -> list[int]:
        """The order epoch ``epoch`` visits the shards in (a pure function of seed and epoch)."""
        return [int(i) for i in np.random.default_rng((self.seed, epoch)).permutation(len(self.rows_of))]

    def block_shards(self, index: int) -> list[int]:
        """The shards block ``index`` reads, in their order within the block."""
        epoch, group = divmod(index, self.blocks_per_epoch)
        g = self.shards_per_block
        return self.shard_order(epoch)[group * g : (group + 1) * g]

    def permutation(self, index: int, n_rows: int) -> torch.Tensor:
        """The visiting order of block ``index`` [n_rows] (the same as TensorBuffer's and ActivationBuffer's)."""
        return torch.randperm(n_rows, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index))

    def blocks(self, start_block: int = 0) -> Iterator[Block]:
        """Blocks ``start_block``, ``start_block + 1``, ... to the end of the last epoch."""
        for index in range(start_block, self.blocks_per_epoch * self.epochs):
            yield self.block(index)

    def block(self, index: int) -> Block:
        """Block ``index``: the whole block, or with ``part`` this rank's rows (see the module docstring)."""
        shards = self.block_shards(index)
        self.reads.append((index, shards))
        n = sum(self.rows_of[s] for s in shards)
        perm = self.permutation(index, n)
        if self.part is None:
            rows = {h: self._read_block(shards, h, n) for h in self.hooks}
            return Block(index=index, rows=rows, perm=perm, batch_size=self.batch_size)
        rank, world = self.part
        local = self.batch_size // world
        n_batches = n // self.batch_size
        mine = perm[: n_batches * self.batch_size].view(n_batches, self.batch_size)[:, rank * local:(rank + 1) * local]
        mine = mine.reshape(-1)
        head = min(n, HEAD_ROWS)
        extra = mine >= head  # the rank's rows outside the head, read after it in visiting order
        where = mine.clone()
        where[extra] = head + torch.arange(int(extra.sum()))
        wanted = torch.cat([torch.arange(head), mine[extra]])
        rows = {h: self._gather(shards, h, wanted) for h in self.hooks}
        return Block(index=index, rows=rows, perm=where, batch_size=local)

    def _map(self, shard: int, hook: str) -> np.memmap:
        dt, shape, offset = self.layouts[shard][hook]
        return np.memmap(self.folder / self.manifest["shards"][shard]["file"], dtype=_NP[dt], mode="r",
                         offset=offset, shape=shape)

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        if self.manifest["dtype"] == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.float() if t.dtype != torch.float32 else t

    def read_shard(self, shard: int, hook: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """All rows of one hook of one shard [rows, width] float32, read into ``out`` when given (the map is closed
        before returning)."""
        mm = self._map(shard, hook)
        try:
            if out is None:
                return self._tensor(np.array(mm))
            if self.manifest["dtype"] == "float32":
                np.copyto(out.numpy(), mm)
            else:
                out.copy_(self._tensor(np.array(mm)))
            return out
        finally:
            mm._mmap.close()

    def _read_block(self, shards: list[int], hook: str, n: int) -> torch.Tensor:
        """The block's rows of one hook [n, width] float32: its shards read one after the other into one tensor."""
        out = torch.empty(n, self.widths()[hook], dtype=torch.float32)
        lo = 0
        for s in shards:
            self.read_shard(s, hook, out[lo : lo + self.rows_of[s]])
            lo += self.rows_of[s]
        return out

    def _gather(self, shards: list[int], hook: str, wanted: torch.Tensor) -> torch.Tensor:
        """Rows ``wanted`` (indices into the block's concatenated shards) of one hook [len(wanted), width] float32,
        reading from each shard only the rows asked."""
        out = torch.empty(wanted.numel(), self.widths()[hook], dtype=torch.float32)
        lo = 0
        for s in shards:
            hi = lo + self.rows_of[s]
            sel = ((wanted >= lo) & (wanted < hi)).nonzero().squeeze(1)
            if sel.numel():
                mm = self._map(s, hook)
                try:
                    out[sel] = self._tensor(mm[(wanted[sel] - lo).numpy()])
                finally:
                    mm._mmap.close()
            lo = hi
        return out
