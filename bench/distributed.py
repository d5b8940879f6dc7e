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

Sharded against in-memory data parallelism (where the activation-shard writer and reader,
``circuits.dictionaries.shards`` / ``shard_buffer``, are part of the checkout; otherwise skipped with a note): one
hook of a random one-layer Llama of width ``--d-in`` is written to shards (:func:`write_shard_folder`), then TopK
trains on 2 ranks x 1 thread from the shards (each rank reads its part of every global batch from the memory-mapped
files, ``ShardBuffer(part=...)``) and from the same rows held in memory (``TensorBuffer(part=...)``).

Measured on this 2-core machine (load average 1.07, not flagged), defaults (d_in 256, d_sae 2,048, batch 1,024, 8
steps): tokens/s ReLU 1 proc x 2 threads 20,050, x 1 thread 12,033, 2 ranks x 1 thread 15,756 (cost ratio 1.26 to 2
threads, 0.76 to 1 thread); TopK 36,031 / 22,249 / 24,400 (1.50, 0.91); TopK on 2 ranks from shards 24,029 against
23,093 from memory (0.96). Two gloo ranks on two cores trail one process with two threads (the all-reduces, a second
Python process and the per-rank fixed costs of a short run on the same two cores), and gain on one thread.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402
from circuits.dictionaries.buffer import TensorBuffer  # noqa: E402
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries  # noqa: E402

KINDS = ("relu", "topk")
SHARD_HOOK = "blocks.0.hook_resid_post"
#: rank-0 commands to rank 1: stop, train from memory, from the shards, from the shards' rows held in memory
STOP, MEMORY, SHARDS, SHARD_ROWS = 0, 1, 2, 3


def _rows(n: int, d_in: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(n, 4 * d_in, generator=gen) - 1.5)
    return {"x": codes @ torch.randn(4 * d_in, d_in, generator=gen) / d_in ** 0.5}


def _spec(kind: str, d_sae: int, hook: str = "x") -> DictSpec:
    if kind == "relu":
        return DictSpec(hook, activation="relu", d_sae=d_sae, l1=1e-3, name="relu")
    return DictSpec(hook, activation="topk", k=32, d_sae=d_sae, name="topk")


def _cfg(a: argparse.Namespace) -> TrainDictConfig:
    return TrainDictConfig(tokens=a.batch * a.steps, batch_size=a.batch, lr=4e-4, warmup_steps=1, log_every=10**6,
                           checkpoint_seconds=None, dead_tokens=2 * a.batch)


def _train_dp(kind: str, a: argparse.Namespace, rows, part, shards: str | None = None) -> None:
    """One data-parallel run of this rank: from ``rows`` in memory, or from the shard folder ``shards``."""
    from circuits.dictionaries.distributed import train_distributed

    if shards is None:
        buffer, hook = TensorBuffer(rows, batch_size=a.batch, part=part), next(iter(rows))
    else:
        from circuits.dictionaries.shard_buffer import ShardBuffer

        buffer, hook = ShardBuffer(shards, batch_size=a.batch, seed=0, part=part), SHARD_HOOK
    train_distributed(None, None, [_spec(kind, a.d_in * a.expansion, hook)], _cfg(a), mode="data", buffer=buffer,
                      progress=False)


def _rank1(port: int, a: argparse.Namespace, shards: str | None) -> None:
    """Rank 1: one thread, waits for (command, kind) broadcast by rank 0, trains its half of each global batch."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    dist.init_process_group("gloo")
    rows = _rows(a.batch * a.steps, a.d_in)
    held = shard_rows(shards) if shards else None
    cmd = torch.zeros(2, dtype=torch.int64)
    while True:
        dist.broadcast(cmd, 0)
        what, kind = int(cmd[0]), KINDS[int(cmd[1])]
        if what == STOP:
            break
        if what == SHARDS:
            _train_dp(kind, a, None, (1, 2), shards)
        else:
            _train_dp(kind, a, held if what == SHARD_ROWS else rows, (1, 2))
    dist.destroy_process_group()


def write_shard_folder(root: Path, a: argparse.Namespace) -> tuple[str | None, str | None]:
    """(shard folder, note): ``SHARD_HOOK`` of a random one-layer Llama of width ``--d-in`` over random tokens, at
    least the benchmark's token count, in shards of 2 global batches; (None, why) without the shard writer."""
    try:
        from circuits.dictionaries.shards import write_shards
    except ImportError:
        return None, "sharded rows skipped: circuits.dictionaries.shards (the shard writer) is not in this checkout"
    from transformers import AutoModelForCausalLM, LlamaConfig

    from circuits.dictionaries.buffer import random_source
    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    config = LlamaConfig(vocab_size=65, hidden_size=a.d_in, intermediate_size=2 * a.d_in, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, bos_token_id=64,
                         eos_token_id=64, pad_token_id=64)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(root / "model")
    make_tokenizer(64).save_pretrained(root / "model")
    model = load_model(str(root / "model"), device="cpu")
    batches = -(-a.batch * a.steps // (16 * 64)) + 1
    write_shards(model, random_source(64, seq_len=64, batch_size=16, n_batches=batches, bos_id=64), [SHARD_HOOK],
                 root / "shards", shard_rows=2 * a.batch, progress=False)
    return str(root / "shards"), None


def shard_rows(folder: str) -> dict[str, torch.Tensor]:
    """Every row of the shard folder, in memory ``{SHARD_HOOK: [N, d_in]}`` (float32)."""
    from circuits.dictionaries.shard_format import read_manifest

    files = [Path(folder) / s["file"] for s in read_manifest(folder)["shards"]]
    return {SHARD_HOOK: torch.cat([load_file(str(f))[SHARD_HOOK].float() for f in files])}


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
    tmp = tempfile.TemporaryDirectory()
    shards, note = write_shard_folder(Path(tmp.name), a)
    child = mp.get_context("spawn").Process(target=_rank1, args=(port, a, shards))
    child.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    rows, held = _rows(a.batch * a.steps, a.d_in), None
    tokens = a.batch * a.steps
    d_sae = a.d_in * a.expansion

    def single(kind: str, threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            train_dictionaries(None, None, [_spec(kind, d_sae)], _cfg(a),
                               buffer=TensorBuffer(rows, batch_size=a.batch), progress=False)
        return run

    def ranks(kind: str, what: int = MEMORY):
        def run() -> None:
            torch.set_num_threads(1)
            dist.broadcast(torch.tensor([what, KINDS.index(kind)], dtype=torch.int64), 0)
            if what == SHARDS:
                _train_dp(kind, a, None, (0, 2), shards)
            else:
                _train_dp(kind, a, held if what == SHARD_ROWS else rows, (0, 2))
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
        if shards is not None:
            held = shard_rows(shards)
            mem, disk = "topk 2 ranks, rows in memory", "topk 2 ranks, rows from shards"
            cmp = compare({mem: ranks("topk", SHARD_ROWS), disk: ranks("topk", SHARDS)}, rounds=a.rounds, load=watch)
            print(table(cmp, mem, work=tokens))
            out["shards"] = {**cmp.to_json(mem), "ratio_shards_over_memory": cmp.ratio(disk, mem)}
        else:
            print(note)
    finally:
        dist.broadcast(torch.tensor([STOP, 0], dtype=torch.int64), 0)
        dist.destroy_process_group()
        child.join()
        tmp.cleanup()
    emit({"bench": "distributed", "d_in": a.d_in, "d_sae": d_sae, "batch": a.batch, "steps": a.steps,
          "tokens": tokens, "results": out, "shards": note, "load": watch.to_json(),
          "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
