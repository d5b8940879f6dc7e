"""Shards in the command line's runs: ``workbench harvest-shards`` (write), ``train-dict --shards`` (train from a
shard folder instead of the live harvest) and ``eval-dict --shards`` (add the reconstruction metrics over a shard
folder to the held-out ones)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

#: the metrics eval-dict adds per dictionary when given shards (``shards_<name>``)
SHARD_METRICS = ("tokens", "l0", "fvu", "mse", "dead_fraction")


def training_buffer(model: Any, folder: str, hooks: Sequence[str], *, batch_size: int, seed: int,
                    tokens: int) -> tuple[Any, list[str]]:
    """A :class:`~circuits.dictionaries.shard_buffer.ShardBuffer` over ``folder`` for training ``tokens`` tokens on
    ``hooks`` of ``model`` (checked: written from this model, with these hooks and widths), reading as many epochs
    as ``tokens`` needs; with the warnings to show. ConfigError naming ``--shards`` otherwise."""
    from circuits.dictionaries.shard_buffer import ShardBuffer
    from circuits.dictionaries.shard_format import ShardError

    try:
        buffer = ShardBuffer(folder, batch_size=batch_size, seed=seed, hooks=hooks, expect_model=model)
    except ShardError as exc:
        raise ConfigError(f"--shards {folder}: {exc}") from exc
    buffer.epochs = max(1, math.ceil(tokens / buffer.tokens))
    warnings = []
    if buffer.epochs > 1:
        warnings.append(f"--tokens {tokens} exceeds the {buffer.tokens} tokens of the shards in {folder}: training "
                        f"reads them {buffer.epochs} times (epochs), each in another order")
    return buffer, warnings


def add_shard_metrics(result: Any, dictionaries: Mapping[str, Any], folder: str, model: Any,
                      progress: bool = False) -> None:
    """Add ``shards_<metric>`` columns (and summary entries) of each dictionary's reconstruction over the shard
    folder to a ``dictionary`` run's result (metrics table row order = ``dictionaries`` order)."""
    from circuits.dictionaries.shard_eval import evaluate_on_shards
    from circuits.dictionaries.shard_format import ShardError

    try:
        got = evaluate_on_shards(dictionaries, folder, expect_model=model, progress=progress,
                                 device=str(model.W_E.device))
    except ShardError as exc:
        raise ConfigError(f"--shards {folder}: {exc}") from exc
    table = result.tables["metrics"]
    for name in SHARD_METRICS:
        table[f"shards_{name}"] = [got[lab][name] for lab in dictionaries]
    for lab in dictionaries:
        if isinstance(result.summary.get(lab), dict):
            result.summary[lab].update({f"shards_{n}": got[lab][n] for n in ("l0", "fvu", "dead_fraction")})
    result.lines.append(f"on the shards in {folder} ({got[next(iter(got))]['tokens']} tokens):")
    for lab, m in got.items():
        fvu = "-" if m["fvu"] is None else f"{m['fvu']:.3f}"
        result.lines.append(f"  {lab:<58} L0 {m['l0']:.2f}  FVU {fvu}  dead {m['dead_fraction']:.2f}")


def check_shard_folder(value: str | None) -> None:
    """ConfigError unless ``value`` (the ``--shards`` option) is None or an existing folder."""
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--shards {value} {'is a file' if path.exists() else 'does not exist'}; give a shard "
                          "folder written by `workbench harvest-shards`")


def harvest_command(args: Any) -> tuple[dict[str, Any], str]:
    """``workbench harvest-shards``: load the model, write the shards, return (JSON payload, text)."""
    import torch

    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.shard_format import ShardError
    from circuits.dictionaries.shards import write_shards
    from workbench.data.budget import check_corpus
    from workbench.limits import check_context
    from workbench.models import load_model

    hooks = [h for part in args.hooks for h in part.split(",") if h]
    try:
        check_corpus(args.corpus)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    model = load_model(args.model, device=args.device)
    check_context(model, args.seq_len, f"--seq-len {args.seq_len}")
    source = corpus_source(model.tokenizer, args.corpus, seq_len=args.seq_len, batch_size=args.batch_size,
                           split=args.split, seed=args.seed)
    text = (f"corpus {args.corpus}, split {args.split}, seq_len {args.seq_len}, batch_size {args.batch_size}, "
            f"seed {args.seed}")
    try:
        done = write_shards(model, source, hooks, args.out, shard_rows=args.shard_rows, dtype=getattr(torch, args.dtype),
                            seed=args.seed, max_tokens=args.tokens, device=str(model.W_E.device),
                            progress=not args.quiet, source_description=text)
    except ShardError as exc:
        raise ConfigError(f"--out {args.out}: {exc}") from exc
    man = done.manifest
    warnings = []
    if done.tokens < args.tokens:
        warnings.append(f"the corpus ran out after {done.tokens} of the {args.tokens} tokens asked (--tokens)")
    payload = {"folder": str(Path(args.out).resolve()), "tokens": done.tokens, "shards": done.n_shards,
               "hooks": man["hooks"], "widths": man["widths"], "dtype": man["dtype"], "resumed": done.resumed,
               "warnings": warnings}
    lines = [f"{done.n_shards} shards, {done.tokens} tokens of {', '.join(man['hooks'])} ({man['dtype']}) in "
             f"{payload['folder']}" + (" (resumed)" if done.resumed else "")]
    lines += [f"warning: {w}" for w in warnings]
    lines.append(f"train on them: workbench train-dict --model {args.model} --shards {args.out} --hook "
                 f"{man['hooks'][0]} ...")
    return payload, "\n".join(lines)
