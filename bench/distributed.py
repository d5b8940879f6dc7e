"""Benchmark: data-parallel dictionary training on 2 gloo ranks against one process, on this machine's CPUs.

Run: ``.venv/bin/python bench/distributed.py [--d-in 256] [--expansion 8] [--batch 1024] [--steps 8] [--rounds 3]
[--quick]``. Prints a table per activation, then one JSON object as its last line. ``--quick``: d_in 64, batch 256,
4 steps, 2 rounds.

Rows (ReLU + L1, and TopK k = 32 + AuxK), the same random activations, global batch and token count in each:

- ``1 proc x 2 threads``: :func:`circuits.dictionaries.train.train_dictionaries` in this process with 2 torch threads;
- ``1 proc x 1 thread``: the same with 1 thread (the work of one rank, twice over: the ideal 2-rank ratio to it is 0.5);
- ``2 ranks x 1 thread``: :func:`circuits.dictionaries.distributed.train_distributed` (``mode="data"``): this process
  is rank 0 and a spawned process rank 1 (gloo over loopback), each with 1 thread and half of every global batch,
  gradients averaged by DistributedDataParallel.

The rank-1 process is started once (before the timing) and waits for a command per run, so the rows time training,
not process start-up. The rows run interleaved in rounds (:func:`bench.timing.compare`); ``cost ratio`` is the
median per-round ratio of seconds to the one-process row, with the load average recorded (a run whose load rose
above the core count is flagged unreliable). On two cores the point is the overhead of the all-reduces and the
reduced statistics: a ratio near 1 means data parallelism costs little beyond the split itself.

Sharded against in-memory training: :func:`shard_modes` is the hook for the activation-shard reader
(``circuits.dictionaries.shard_buffer.ShardBuffer``); where that module is absent the rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402
from circuits.dictionaries.buffer import TensorBuffer  # noqa: E402
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries  # noqa: E402

KINDS = ("relu", "topk")


def _rows(n: int, d_in: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(n, 4 * d_in, generator=gen) - 1.5)
    return {"x": codes @ torch.randn(4 * d_in, d_in, generator=gen) / d_in ** 0.5}


def _spec(kind: str, d_sae: int) -> DictSpec:
    if kind == "relu":
        return DictSpec("x", activation="relu", d_sae=d_sae, l1=1e-3, name="relu")
    return DictSpec("x", activation="topk", k=32, d_sae=d_sae, name="topk")


def _cfg(a: argparse.Namespace) -> TrainDictConfig:
    return TrainDictConfig(tokens=a.batch * a.steps, batch_size=a.batch, lr=4e-4, warmup_steps=1, log_every=10**6,
                           checkpoint_seconds=None, dead_tokens=2 * a.batch)


def _train_dp(kind: str, a: argparse.Namespace, rows, part) -> None:
    from circuits.dictionaries.distributed import train_distributed

    buffer = TensorBuffer(rows, batch_size=a.batch, part=part)
    train_distributed(None, None, [_spec(kind, a.d_in * a.expansion)], _cfg(a), mode="data", buffer=buffer,
                      progress=False)


def _rank1(port: int, a: argparse.Namespace) -> None:
    """Rank 1: one thread, waits for (run?, kind) broadcast by rank 0, trains its half of each global batch."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    dist.init_process_group("gloo")
    rows = _rows(a.batch * a.steps, a.d_in)
    cmd = torch.zeros(2, dtype=torch.int64)
    while True:
        dist.broadcast(cmd, 0)
        if int(cmd[0]) == 0:
            break
        _train_dp(KINDS[int(cmd[1])], a, rows, (1, 2))
    dist.destroy_process_group()


def shard_modes(a: argparse.Namespace, rows) -> tuple[dict, str | None]:
    """Rows training from activation shards against the same rows in memory (hook for the shard reader): (modes,
    note). Returns no modes and a note where ``circuits.dictionaries.shard_buffer`` is absent."""
    try:
        from circuits.dictionaries.shard_buffer import ShardBuffer  # noqa: F401
    except ImportError:
        return {}, "sharded rows skipped: circuits.dictionaries.shard_buffer (ShardBuffer) is not on this branch"
    return {}, "sharded rows: the shard reader is present but this benchmark does not write shards yet"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.d_in, a.batch, a.steps, a.rounds = 64, 256, 4, 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = mp.get_context("spawn").Process(target=_rank1, args=(port, a))
    child.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    rows = _rows(a.batch * a.steps, a.d_in)
    tokens = a.batch * a.steps
    d_sae = a.d_in * a.expansion

    def single(kind: str, threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            train_dictionaries(None, None, [_spec(kind, d_sae)], _cfg(a),
                               buffer=TensorBuffer(rows, batch_size=a.batch), progress=False)
        return run

    def ranks(kind: str):
        def run() -> None:
            torch.set_num_threads(1)
            dist.broadcast(torch.tensor([1, KINDS.index(kind)], dtype=torch.int64), 0)
            _train_dp(kind, a, rows, (0, 2))
        return run

    watch, out = LoadWatch(), {}
    try:
        for kind in KINDS:
            base = f"{kind} 1 proc x 2 threads"
            one, dp = f"{kind} 1 proc x 1 thread", f"{kind} 2 ranks x 1 thread"
            cmp = compare({base: single(kind, 2), one: single(kind, 1), dp: ranks(kind)}, rounds=a.rounds,
                          load=watch)
            print(table(cmp, base, work=tokens))
            out[kind] = {**cmp.to_json(base), "ratio_2ranks_over_1proc_2threads": cmp.ratio(dp, base),
                         "ratio_2ranks_over_1proc_1thread": cmp.ratio(dp, one),
                         "tokens_per_s": {lab: tokens / t.median for lab, t in cmp.timings.items()}}
        modes, note = shard_modes(a, rows)
        if note:
            print(note)
    finally:
        dist.broadcast(torch.tensor([0, 0], dtype=torch.int64), 0)
        dist.destroy_process_group()
        child.join()
    emit({"bench": "distributed", "d_in": a.d_in, "d_sae": d_sae, "batch": a.batch, "steps": a.steps,
          "tokens": tokens, "results": out, "shards": note, "load": watch.to_json(),
          "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
