"""Writing activations to disk as fixed-size safetensors shards (format: :mod:`circuits.dictionaries.shard_format`).

:func:`write_shards` streams the token source through the model once (every hook in the same forwards, each forward
stopping after the last hook), keeps the real tokens' activations in storage dtype and cuts them into shards of
exactly ``shard_rows`` rows (the last may be shorter). Each shard is written atomically, then the manifest (also
atomically) records it with the position in the token stream where the next shard starts (batch index, row within
that batch). A killed write therefore resumes after its last complete shard: the token batches before that position
are skipped without running the model, the batch it lies in is harvested again and its first rows dropped, and the
shards come out byte-identical to those of an uninterrupted write. Memory stays bounded by one shard plus one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import TokenSource
from circuits.dictionaries.shard_format import (
    DTYPES,
    FORMAT,
    MANIFEST,
    VERSION,
    ShardError,
    ShardMismatchError,
    dtype_name,
    model_fingerprint,
    read_manifest,
    shard_name,
    tokens_fingerprint,
)
from circuits.dictionaries.train import NonFiniteActivationError
from workbench.analysis import model_spec
from workbench.atomic import clean_stale_tmp, write_bytes, write_json
from workbench.harvest import check_hooks, harvest

#: manifest settings a resumed write must share with the interrupted one
RESUME_KEYS = ("model", "model_fingerprint", "hooks", "dtype", "shard_rows", "seed", "source", "source_fingerprint",
               "max_tokens")


@dataclass
class ShardManifest:
    """What a shard folder holds: its folder, the manifest (a JSON dict), and whether this call resumed a write."""

    folder: Path
    manifest: dict[str, Any]
    resumed: bool = False

    @property
    def tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])


class _BatchRows:
    """Harvest consumer keeping one batch's real-token activations per hook, checked finite, in storage dtype."""

    def __init__(self, hooks: Sequence[str], dtype: torch.dtype) -> None:
        self.hooks, self.dtype = list(hooks), dtype
        self.rows: dict[str, torch.Tensor] = {}
        self.batch = 0

    def consume(self, name: str, activation: torch.Tensor, mask: torch.Tensor) -> None:
        act = activation.reshape(*activation.shape[:2], -1)[mask.bool()]
        if not bool(torch.isfinite(act).all()):
            bad = int((~torch.isfinite(act)).any(-1).sum())
            raise NonFiniteActivationError(f"the activations at {name} hold NaN or Inf values ({bad} of "
                                           f"{act.shape[0]} tokens of token batch {self.batch}); refusing to write "
                                           "them to shards: check the model's weights and inputs")
        self.rows[name] = act.to("cpu", self.dtype)


def _settings(model, hooks: list[str], dtype: str, shard_rows: int, seed: int, source_text: str,
              first_batch: Any, max_tokens: int | None) -> dict[str, Any]:
    return {"model": model_spec(model), "model_fingerprint": model_fingerprint(model), "hooks": hooks, "dtype": dtype,
            "shard_rows": shard_rows, "seed": seed, "source": source_text,
            "source_fingerprint": tokens_fingerprint(first_batch), "max_tokens": max_tokens}


def _start(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an interrupted (or finished) write with the same settings, None for a fresh folder;
    ShardMismatchError naming the settings that differ, ShardError for a folder holding other files."""
    if not (folder / MANIFEST).exists():
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".tmp-")] if folder.is_dir() else []
        if others:
            raise ShardError(f"{folder} holds other files ({', '.join(sorted(others)[:3])}) and no {MANIFEST}; write "
                             "shards into a new or empty folder")
        return None
    man = read_manifest(folder)
    diffs = [f"{k}: folder {man.get(k)!r}, now {v!r}" for k, v in settings.items() if man.get(k) != v]
    if diffs:
        raise ShardMismatchError(f"{folder} holds shards written with other settings ({'; '.join(diffs)}); write "
                                 "into another folder, or resume with the same model, hooks and token source")
    return man


def write_shards(
    model, source: TokenSource, hooks: Sequence[str], folder: Path | str, *, shard_rows: int = 65_536,
    dtype: torch.dtype | str = torch.float32, seed: int = 0, max_tokens: int | None = None,
    device: str | None = None, progress: bool = True, source_description: str = "token source",
) -> ShardManifest:
    """Harvest ``hooks`` of ``model`` over ``source`` into shards of ``shard_rows`` rows under ``folder``.

    Each shard holds one tensor per hook ``[rows, width]`` in ``dtype`` (float32, bfloat16 or float16), the same
    token positions for every hook; at most ``max_tokens`` real tokens are written (the source's end otherwise).
    ``seed`` is the token source's seed and ``source_description`` says what the source is (both recorded; a
    resume must give the same). A folder with an unfinished write of the same settings is resumed after its last
    complete shard; a finished one is returned as is. Returns :class:`ShardManifest`.

    Raises ShardError (a folder holding other files, settings out of range), ShardMismatchError (a folder written
    with other settings, naming them), NonFiniteActivationError (naming the hook) and ValueError (unknown hooks).
    """
    hooks = list(dict.fromkeys(hooks))
    if not hooks:
        raise ShardError("write_shards needs at least one hook")
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise ShardError(f"shard_rows must be an integer >= 1, got {shard_rows!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ShardError(f"max_tokens must be an integer >= 1 or None (the whole source), got {max_tokens!r}")
    name = dtype_name(dtype)
    check_hooks(model, hooks)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ShardError(f"{folder} is a file; give a folder for the shards")
    first = next(iter(source()), None)
    if first is None:
        raise ShardError("the token source gave no batch (empty corpus or split?)")
    settings = _settings(model, hooks, name, shard_rows, seed, source_description, first, max_tokens)
    man = _start(folder, settings)
    resumed = man is not None
    if man is None:
        man = {"format": FORMAT, "version": VERSION, **settings, "widths": {}, "shards": [], "tokens": 0,
               "next": [0, 0], "complete": False}
    if man["complete"]:
        return ShardManifest(folder, man, resumed=True)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder)
    if not resumed:
        write_json(folder / MANIFEST, man)  # a write killed before its first shard resumes too
    lost = [s["file"] for s in man["shards"] if not (folder / s["file"]).is_file()]
    if lost:
        raise ShardError(f"{folder}: shards listed in the manifest are missing ({', '.join(lost[:3])}); the write "
                         "cannot resume: write into a new folder")
    writer = _Writer(folder, man, DTYPES[name][0], shard_rows, max_tokens, progress)
    stream = iter(source())
    for _ in islice(stream, man["next"][0]):
        pass
    collector = _BatchRows(hooks, DTYPES[name][0])
    feed = writer.feed(stream, collector)
    try:
        if writer.has_more(stream):
            harvest(model, feed, [collector], progress=False, device=device)
        writer.finish()
    finally:
        writer.bar.close()
    return ShardManifest(folder, man, resumed=resumed)


class _Writer:
    """Cuts the stream of batch rows into shards, writing each shard and then the manifest atomically."""

    def __init__(self, folder: Path, man: dict[str, Any], dtype: torch.dtype, shard_rows: int,
                 max_tokens: int | None, progress: bool) -> None:
        self.folder, self.man, self.dtype, self.shard_rows, self.max_tokens = folder, man, dtype, shard_rows, max_tokens
        self.pending: list[dict[str, torch.Tensor]] = []
        self.n_pending = 0
        self.start = list(man["next"])  # (batch, row) where the pending rows begin
        self.written = sum(int(s["rows"]) for s in man["shards"])
        self.peek: list[Any] = []
        self.bar = tqdm(total=max_tokens, initial=self.written, desc="harvest-shards", unit="tok", disable=not progress)

    def has_more(self, stream: Iterator[Any]) -> bool:
        """Whether the stream holds another batch still to write (that batch is kept for :meth:`feed`)."""
        self.peek = list(islice(stream, 1))
        return bool(self.peek) and not self._full()

    def _full(self) -> bool:
        return self.max_tokens is not None and self.written + self.n_pending >= self.max_tokens

    def feed(self, stream: Iterator[Any], collector: _BatchRows) -> Iterator[Any]:
        """The batches for the harvest; each batch's rows are taken as soon as its forward pass is done."""
        index, offset = self.start
        for batch in _chain(self.peek, stream):
            collector.batch, collector.rows = index, {}
            yield batch
            self._add({h: collector.rows[h][offset:] for h in collector.hooks}, index, offset)
            index, offset = index + 1, 0
            if self._full():
                return

    def _add(self, rows: dict[str, torch.Tensor], index: int, offset: int) -> None:
        """Take the rows of batch ``index`` (its first ``offset`` rows already dropped); write every full shard."""
        n_batch = int(next(iter(rows.values())).shape[0])
        n = n_batch if self.max_tokens is None else min(n_batch, self.max_tokens - self.written - self.n_pending)
        rows = {h: r[:n] for h, r in rows.items()}
        if not self.man["widths"]:
            self.man["widths"] = {h: int(r.shape[-1]) for h, r in rows.items()}
        self.pending.append(rows)
        self.n_pending += n
        self.bar.update(n)
        while self.n_pending >= self.shard_rows:
            rest = self.n_pending - self.shard_rows  # the last `rest` kept rows of this batch begin the next shard
            nxt = [index + 1, 0] if rest == 0 and n == n_batch else [index, offset + n - rest]
            self._write(self.shard_rows, nxt)

    def _write(self, n: int, nxt: list[int]) -> None:
        hooks = list(self.pending[0])
        joined = {h: torch.cat([p[h] for p in self.pending]) for h in hooks}
        shard = {h: joined[h][:n].contiguous() for h in hooks}
        index = len(self.man["shards"])
        name = shard_name(index)
        write_bytes(self.folder / name, save_bytes(shard))
        self.man["shards"].append({"file": name, "rows": n, "start": list(self.start)})
        self.written += n
        self.n_pending -= n
        self.pending = [{h: joined[h][n:] for h in hooks}] if self.n_pending else []
        self.start = list(nxt)
        self.man.update(tokens=self.written, next=list(nxt))
        write_json(self.folder / MANIFEST, self.man)

    def finish(self) -> None:
        """Write the last (shorter) shard and mark the folder complete."""
        if self.n_pending:
            self._write(self.n_pending, list(self.start))
        self.man["complete"] = True
        write_json(self.folder / MANIFEST, self.man)


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest
