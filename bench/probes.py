"""Benchmark: streaming sparsity + massive statistics against the naive way (cache every hook, then compute).

Run: ``.venv/bin/python bench/probes.py [--model toy/gpt-relu-d128-l4] [--tokens 65536] [--naive-gb 8] [--rounds 5]
[--threads 1] [--quick]``. Prints tables, then one JSON object as its last line.

The streaming way is one harvest with a :class:`probes.sparsity.SparsityCounter` and a
:class:`probes.massive.MassiveCounter` on every layer. The naive way is transformer-lens' ``run_with_cache`` with no
names filter on every batch, all caches kept, then the same statistics computed from the kept activations (and
checked equal to the streamed ones). A third mode, the bare forward pass (no hook, no statistic), shows where the
time goes.

The naive cache is estimated from one batch by its distinct tensors (hook names that alias one tensor, or views of
one storage, counted once); the naive way runs at the largest budget (a whole number of batches, at most
``--tokens``) whose cache fits in ``--naive-gb`` and in three quarters of the memory the system has available.

Throughput: the three modes over the same batches at that budget, interleaved in rounds in one process
(:func:`bench.timing.compare`); ratios are median per-round ratios. Memory: each (mode, budget) in a fresh process,
its peak resident memory above its own resident size after loading the model and the batches
(:class:`bench.memory.PeakMemory`): the streaming way at the naive budget and at ``--tokens``, the naive way and the
bare forward at the naive budget; where the naive budget is below ``--tokens`` the naive way's working memory there
is extrapolated linearly (per token), and said so. ``--quick``: 8,192 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# this file is named like the ``probes`` package: keep its own folder off the import path, the checkout on it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from bench.memory import PeakMemory, available_mb, child_json  # noqa: E402
from bench.timing import LoadWatch, compare, emit, table  # noqa: E402

SEQ, BATCH = 128, 8
MODES = ("bare", "stream", "naive")


def _batches(model, n_tokens: int):
    from workbench.data import token_batches

    return list(token_batches("wiki", model.tokenizer, seq_len=SEQ, batch_size=BATCH, max_tokens=n_tokens))


def run_mode(mode: str, model, batches: list, split: list[float] | None = None) -> dict:
    """One pass of ``mode`` over ``batches``; the statistics' checksums (none for ``bare``). ``split`` collects the
    naive way's caching seconds."""
    from probes.massive import MassiveCounter
    from probes.sparsity import SparsityCounter
    from workbench.harvest import harvest

    L = model.cfg.n_layers
    sparsity = SparsityCounter(list(range(L)))
    massive = MassiveCounter(list(range(L)), model.cfg.d_model)
    if mode == "bare":  # the forward pass alone, no hook, no statistic: what the streaming way cannot go below
        with torch.no_grad():
            for b in batches:
                model(b.tokens, return_type="logits")
        return {}
    if mode == "stream":
        class Feed:  # hands the massive counter each batch's tokens
            def __iter__(self):
                for b in batches:
                    massive.set_tokens(b.tokens)
                    yield b
        harvest(model, Feed(), [sparsity, massive], progress=False)
    elif mode == "naive":
        t0 = time.perf_counter()
        caches = []
        with torch.no_grad():
            for b in batches:
                _, cache = model.run_with_cache(b.tokens)
                caches.append((b, cache))
        if split is not None:
            split.append(time.perf_counter() - t0)
        for b, cache in caches:  # then compute from the kept caches
            massive.set_tokens(b.tokens)
            for name in sparsity.hooks:
                sparsity.consume(name, cache[name], b.attention_mask)
            for name in massive.hooks:
                massive.consume(name, cache[name], b.attention_mask)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return {"nonzero_sum": int(sparsity.stats().nonzero.sum()),
            "max_abs": float(massive.max_first.max().maximum(massive.max_rest.max()))}


def child(mode: str, spec: str, budget: int) -> dict:
    """Child mode: the working memory of one pass of ``mode`` over ``budget`` tokens, above the loaded process."""
    from workbench.models import load_model

    model = load_model(spec, device="cpu")
    batches = _batches(model, budget)
    with PeakMemory() as mem:
        checks = run_mode(mode, model, batches)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    return {"mode": mode, "budget": budget, "tokens": tokens, **mem.result.to_json(), **checks}


def cache_bytes(tensors) -> tuple[int, int]:
    """(distinct, every-name) bytes of a cache's tensors: storages shared by several names counted once, and the
    sum over names as if each were its own copy."""
    storages: dict[int, int] = {}
    every = 0
    for t in tensors:
        every += t.numel() * t.element_size()
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(storages.values()), every


def cache_bytes_per_token(model) -> tuple[float, float, int]:
    """Bytes one token's full ``run_with_cache`` holds (distinct tensors; every name), measured on one batch, and the
    number of hook names cached."""
    b = _batches(model, SEQ * BATCH)[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(b.tokens)
    distinct, every = cache_bytes(cache.values())
    return distinct / b.tokens.numel(), every / b.tokens.numel(), len(cache)


def naive_budget(per_token: float, tokens: int, naive_gb: float, available: float | None) -> int:
    """The largest whole number of batches, at most ``tokens`` (and at least one batch), whose naive cache fits in
    ``naive_gb`` GiB and in three quarters of ``available`` MiB."""
    limit = naive_gb * 2**30
    if available is not None:
        limit = min(limit, 0.75 * available * 2**20)
    fits = int(limit / per_token) // (SEQ * BATCH) * (SEQ * BATCH)
    return max(SEQ * BATCH, min(tokens // (SEQ * BATCH) * (SEQ * BATCH), fits))


def throughput(model, budget: int, rounds: int, watch: LoadWatch):
    """The three modes over the same ``budget`` tokens, interleaved; checks the streamed statistics equal the naive
    ones. Returns the comparison, the real tokens per pass and the naive way's caching seconds per call."""
    batches = _batches(model, budget)
    split: list[float] = []
    modes = {m: (lambda m=m: run_mode(m, model, batches, split if m == "naive" else None)) for m in MODES}
    comparison = compare(modes, rounds=rounds, warmup=1, load=watch)
    stream, naive = comparison.results["stream"], comparison.results["naive"]
    if stream["nonzero_sum"] != naive["nonzero_sum"] or abs(stream["max_abs"] - naive["max_abs"]) >= 1e-3:
        raise AssertionError(f"streamed and naive statistics differ: {stream} vs {naive}")
    return comparison, sum(int(b.attention_mask.sum()) for b in batches), split


def _spawn(mode: str, spec: str, budget: int, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    return child_json([sys.executable, __file__, "--child", mode, "--model", spec, "--tokens", str(budget), *extra])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy/gpt-relu-d128-l4")
    p.add_argument("--tokens", type=int, default=None, help="the full budget (default 65536; 8192 with --quick)")
    p.add_argument("--naive-gb", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5)")
    p.add_argument("--quick", action="store_true", help="smallest settings: 8,192 tokens")
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in every measured process (default: torch's own); 1 is steadier on a busy machine")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = args.tokens or (8192 if args.quick else 65_536)
    rounds = args.rounds or 5
    if args.child:
        emit(child(args.child, args.model, tokens))
        return
    from workbench.models import load_model

    watch = LoadWatch()
    model = load_model(args.model, device="cpu")
    per_token, per_token_every, n_names = cache_bytes_per_token(model)
    budget = naive_budget(per_token, tokens, args.naive_gb, available_mb())
    print(f"torch threads per process: {torch.get_num_threads()}")
    print(f"model {args.model}: full cache {per_token / 1024:.1f} KiB per token in distinct tensors "
          f"({per_token_every / 1024:.1f} KiB counting each of its {n_names} names apart); naive budget {budget} "
          f"of {tokens} tokens")

    comparison, n_real, split = throughput(model, budget, rounds, watch)
    del model
    print(f"\nthroughput at {budget} tokens:")
    print(table(comparison, "bare", work=n_real))
    ratios = {"stream_over_naive_throughput": comparison.ratio("naive", "stream"),
              "stream_over_bare_throughput": 1 / comparison.ratio("stream", "bare"),
              "naive_over_bare_throughput": 1 / comparison.ratio("naive", "bare")}
    cache_s = statistics.median(split[-rounds:])
    print(f"naive: caching {cache_s:.2f} s of its median round; streaming throughput {ratios['stream_over_naive_throughput']:.2f}x "
          f"the naive way's, {ratios['stream_over_bare_throughput']:.2f}x the bare forward's")

    jobs = [("bare", budget), ("stream", budget), ("naive", budget)] + ([("stream", tokens)] if tokens != budget else [])
    memory = []
    for mode, b in jobs:
        memory.append(_spawn(mode, args.model, b, args.threads))
        watch.sample()
    print(f"\n{'mode':<7}{'budget':>8}{'after load MB':>15}{'peak MB':>10}{'working MB':>12}")
    for r in memory:
        print(f"{r['mode']:<7}{r['budget']:>8}{r['baseline_mb']:>15.0f}{r['peak_mb']:>10.0f}{r['working_mb']:>12.0f}")
    work = {(r["mode"], r["budget"]): r["working_mb"] for r in memory}
    naive_at_full = work[("naive", budget)] * tokens / budget
    extrapolated = tokens != budget
    ratios["naive_over_stream_working_memory"] = naive_at_full / max(1.0, work[("stream", tokens)])
    print(f"working memory at {tokens} tokens: stream {work[('stream', tokens)]:.0f} MB, naive {naive_at_full:.0f} MB"
          + (f" (extrapolated linearly from {budget} tokens; the cache would exceed the limit)" if extrapolated else "")
          + f": {ratios['naive_over_stream_working_memory']:.1f}x (each floored at 1 MB)")
    print(watch.describe())
    emit({"bench": "probes", "model": args.model, "threads": torch.get_num_threads(), "tokens": tokens,
          "naive_budget": budget, "cache_kib_per_token": per_token / 1024,
          "cache_kib_per_token_every_name": per_token_every / 1024, "ratios": ratios,
          "naive_memory_extrapolated": extrapolated, "naive_cache_seconds_median": cache_s,
          "timing": comparison.to_json(baseline="bare"), "memory": memory, "load": watch.to_json(),
          "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
