"""Benchmark: training from activation shards on disk, its peak memory as the token count grows, and its speed
against the same rows held in memory.

Run: ``.venv/bin/python bench/shards.py [--width 64] [--budgets 1048576 4194304] [--rounds 3] [--dir DIR] [--quick]``.
Prints a table, then one JSON object as its last line.

Shards: one hook (``blocks.0.hook_resid_post``) of a random one-layer Llama of width ``--width`` (so the harvest is
cheap) is written once per budget with :func:`circuits.dictionaries.shards.write_shards` (float32, 65,536 rows a
shard), under ``--dir`` (kept and reused) or a temporary folder. Memory: a fresh process per budget and mode reads
every row through :class:`~circuits.dictionaries.shard_buffer.ShardBuffer` ("read": every training batch of every
block) or trains a TopK SAE (k 16, expansion 4, batch 4,096) on every row ("train"), and reports its peak resident
memory while it reads or trains (the kernel's high-water mark, reset after the imports, :class:`bench.memory.PeakMemory`;
``ru_maxrss`` is not used: a child keeps the parent's high-water mark across ``exec``) and its working memory above
its resident size after the imports. Target: the peak at the largest budget within 10% of the peak at the smallest.
Throughput: in one process, training on the smallest budget's rows from the shards and from a
:class:`~circuits.dictionaries.buffer.TensorBuffer` holding the same rows in memory (same blocks and order),
interleaved in rounds (:func:`bench.timing.compare`); the ratio is the shards' tokens/s over the in-memory ones
(median of the per-round ratios). ``--quick``: width 32, budgets of 65,536 and 262,144 tokens, 8,192-row shards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.memory import PeakMemory, child_json  # noqa: E402
from bench.timing import LoadWatch, compare, emit  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
BATCH, PER_BLOCK = 4096, 4


def _model(folder: Path, width: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    if not (folder / "config.json").exists():
        config = LlamaConfig(vocab_size=65, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                             bos_token_id=64, eos_token_id=64, pad_token_id=64)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
        make_tokenizer(64).save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def write(root: Path, width: int, budget: int, shard_rows: int) -> Path:
    """The shard folder of ``budget`` tokens (written once; a finished folder is reused)."""
    from circuits.dictionaries.buffer import random_source
    from circuits.dictionaries.shards import write_shards

    model = _model(root / f"model-{width}", width)
    folder = root / f"shards-{width}-{budget}-{shard_rows}"
    src = random_source(64, seq_len=128, batch_size=64, n_batches=-(-budget // (64 * 128)), seed=1)
    write_shards(model, src, [HOOK], folder, shard_rows=shard_rows, max_tokens=budget, progress=True,
                 source_description="uniform random tokens, 64 x 128 a batch, seed 1")
    return folder


def _train(buffer, tokens: int):
    from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries

    spec = DictSpec(HOOK, activation="topk", k=16, expansion=4)
    cfg = TrainDictConfig(tokens=tokens, batch_size=BATCH, lr=1e-3, warmup_steps=10, checkpoint_seconds=None,
                          log_every=50)
    return train_dictionaries(None, None, [spec], cfg, progress=False, buffer=buffer)


def child(folder: str, mode: str) -> dict:
    """Child mode: read or train through every row of ``folder``; peak and working memory."""
    import torch

    from circuits.dictionaries.shard_buffer import ShardBuffer

    buf = ShardBuffer(folder, batch_size=BATCH, shards_per_block=PER_BLOCK)
    torch.zeros(1).sum()  # torch's lazy initialisation before the baseline
    rows = 0
    with PeakMemory() as mem:
        if mode == "read":
            for block in buf.blocks():
                for i in range(block.n_batches):
                    rows += int(block.batch(i)[HOOK].shape[0])
        else:
            rows = _train(buf, buf.tokens // BATCH * BATCH).tokens
    return {"mode": mode, "tokens": buf.tokens, "rows": rows, **mem.result.to_json()}


def throughput(folder: Path, rounds: int, watch: LoadWatch) -> dict:
    import torch

    from circuits.dictionaries.buffer import TensorBuffer
    from circuits.dictionaries.shard_buffer import ShardBuffer

    shards = ShardBuffer(folder, batch_size=BATCH, shards_per_block=PER_BLOCK)
    order = [s for b in range(shards.blocks_per_epoch) for s in shards.block_shards(b)]
    rows = {HOOK: torch.cat([shards.read_shard(s, HOOK) for s in order])}
    rows_per_block = PER_BLOCK * int(shards.manifest["shard_rows"])
    memory = TensorBuffer(rows, batch_size=BATCH, block_rows=rows_per_block)
    tokens = shards.tokens // BATCH * BATCH
    comp = compare({"in-memory": lambda: _train(memory, tokens), "shards": lambda: _train(shards, tokens)},
                   rounds=rounds, load=watch)
    a, b = comp.results["in-memory"].dictionaries, comp.results["shards"].dictionaries
    same = all(torch.equal(p, q) for lab in a for p, q in zip(a[lab].parameters(), b[lab].parameters(), strict=True))
    ratio = statistics.median(m / s for m, s in zip(comp["in-memory"].seconds, comp["shards"].seconds, strict=True))
    return {"tokens": tokens, "ratio": ratio, "same_weights": same,
            "tokens_per_s": {k: tokens / comp[k].median for k in ("in-memory", "shards")}, **comp.to_json("in-memory")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1 << 20, 1 << 22])
    ap.add_argument("--shard-rows", type=int, default=65_536)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="keep the model and shards here (reused by the next run)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        emit(child(*args.child))
        return
    if args.quick:
        args.width, args.budgets, args.shard_rows, args.rounds = 32, [65_536, 262_144], 8192, 2
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="bench-shards-")
    root = Path(args.dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    watch = LoadWatch()
    folders = {b: write(root, args.width, b, args.shard_rows) for b in sorted(args.budgets)}
    memory = {}
    for mode in ("read", "train"):
        for budget, folder in folders.items():
            memory[f"{mode}-{budget}"] = child_json([sys.executable, __file__, "--child", str(folder), mode])
            watch.sample()
    small, large = min(folders), max(folders)
    rel = {m: memory[f"{m}-{large}"]["peak_mb"] / memory[f"{m}-{small}"]["peak_mb"] - 1
           for m in ("read", "train")}
    speed = throughput(folders[small], args.rounds, watch)
    print(f"{'mode':<6} {'tokens':>9} {'peak RSS MiB':>13} {'working MiB':>12}")
    for m in memory.values():
        print(f"{m['mode']:<6} {m['tokens']:>9} {m['peak_mb']:>13.1f} {m['working_mb']:>12.1f}")
    for m, r in rel.items():
        flag = "" if abs(r) <= 0.10 else "  warning: more than 10% apart"
        print(f"{m}: peak RSS at {large} tokens is {100 * r:+.1f}% of that at {small}{flag}")
    print(f"training tokens/s from shards / in memory: {speed['ratio']:.3f} (in memory "
          f"{speed['tokens_per_s']['in-memory']:.0f}, shards {speed['tokens_per_s']['shards']:.0f}; same weights: "
          f"{speed['same_weights']}); load: {watch.describe()}")
    emit({"bench": "shards", "width": args.width, "shard_rows": args.shard_rows, "memory": memory,
          "peak_rss_growth": rel, "within_10_percent": all(abs(r) <= 0.10 for r in rel.values()),
          "throughput": speed, "load": watch.to_json()})
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
