"""Benchmark: streaming sparsity + massive statistics against the naive way (cache every hook, then compute).

Run: ``.venv/bin/python bench/probes.py [--model toy/gpt-relu-d128-l4] [--tokens 65536] [--naive-gb 8] [--threads 1]``.

The streaming way is one harvest with a :class:`probes.sparsity.SparsityCounter` and a
:class:`probes.massive.MassiveCounter` on every layer. The naive way is transformer-lens' ``run_with_cache`` with no
names filter on every batch, all caches kept, then the same statistics computed from the concatenated activations
(and checked equal to the streamed ones). Each (mode, budget) runs in a fresh process so peak RSS is its own. The
naive way runs only on budgets whose cache fits in ``--naive-gb`` (estimated from one batch); its peak at the full
budget is extrapolated linearly from the budgets it ran on, and said so. A third mode, the bare forward pass (no hook,
no statistic), shows where the time goes: what the streaming way adds to the forward pass, and what caching adds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# this file is named like the ``probes`` package: keep its own folder off the import path, the checkout on it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]

SEQ, BATCH = 128, 8


def _rss_mb() -> float:
    """Peak RSS of this process in MB: since the last :func:`_reset_peak` where Linux allows it, else since start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start the peak-RSS count afresh (so the loading of the model, which peaks higher, is left out)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _batches(model, n_tokens: int):
    from workbench.data import token_batches

    return list(token_batches("wiki", model.tokenizer, seq_len=SEQ, batch_size=BATCH, max_tokens=n_tokens))


def child(mode: str, spec: str, budget: int) -> dict:
    """One measurement in this process: tokens/s, peak RSS, and the statistics' checksum."""
    from probes.massive import MassiveCounter
    from probes.sparsity import SparsityCounter
    from workbench.harvest import harvest
    from workbench.models import load_model

    model = load_model(spec, device="cpu")
    batches = _batches(model, budget)
    L = model.cfg.n_layers
    sparsity = SparsityCounter(list(range(L)))
    massive = MassiveCounter(list(range(L)), model.cfg.d_model)
    _reset_peak()
    before = _rss_mb()
    t0 = time.perf_counter()
    split = None
    if mode == "bare":  # the forward pass alone, no hook, no statistic: what the streaming way cannot go below
        with torch.no_grad():
            for b in batches:
                model(b.tokens, return_type="logits")
    elif mode == "stream":
        class Feed:  # hands the massive counter each batch's tokens
            def __iter__(self):
                for b in batches:
                    massive.set_tokens(b.tokens)
                    yield b
        harvest(model, Feed(), [sparsity, massive], progress=False)
    else:
        caches = []
        with torch.no_grad():
            for b in batches:
                _, cache = model.run_with_cache(b.tokens)
                caches.append((b, cache))
        split = time.perf_counter() - t0
        for b, cache in caches:  # then compute from the kept caches
            massive.set_tokens(b.tokens)
            for name in sparsity.hooks:
                sparsity.consume(name, cache[name], b.attention_mask)
            for name in massive.hooks:
                massive.consume(name, cache[name], b.attention_mask)
    seconds = time.perf_counter() - t0
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    out = dict(mode=mode, budget=budget, tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds,
               rss_after_load_mb=before, peak_rss_mb=_rss_mb(), cache_seconds=split)
    if mode != "bare":
        out.update(nonzero_sum=int(sparsity.stats().nonzero.sum()),
                   max_abs=float(massive.max_first.max().maximum(massive.max_rest.max())))
    return out


def cache_bytes_per_token(spec: str) -> float:
    """Bytes one token's full ``run_with_cache`` takes (measured on one batch)."""
    from workbench.models import load_model

    model = load_model(spec, device="cpu")
    b = _batches(model, SEQ * BATCH)[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(b.tokens)
    return sum(t.numel() * t.element_size() for t in cache.values()) / b.tokens.numel()


def _spawn(mode: str, spec: str, budget: int, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", spec, "--tokens", str(budget), *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy/gpt-relu-d128-l4")
    p.add_argument("--tokens", type=int, default=65_536)
    p.add_argument("--naive-gb", type=float, default=8.0)
    p.add_argument("--child", choices=["stream", "naive", "bare"], default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in every measured process (default: torch's own); 1 is steadier on a busy machine")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.tokens)))
        return
    per_token = cache_bytes_per_token(args.model)
    fits = int(args.naive_gb * 2**30 * 0.6 / per_token) // (SEQ * BATCH) * (SEQ * BATCH)
    naive_budgets = sorted({b for b in (args.tokens // 8, args.tokens // 4, args.tokens // 2, args.tokens) if b <= fits
                            and b >= SEQ * BATCH} or {max(SEQ * BATCH, fits // 4), max(SEQ * BATCH, fits // 2)})
    print(f"torch threads per process: {torch.get_num_threads()}")
    print(f"model {args.model}: full cache {per_token / 1024:.1f} KiB per token; naive budgets {naive_budgets}")
    rows = []
    for budget in sorted({*naive_budgets, args.tokens}):
        rows.append(_spawn("stream", args.model, budget, args.threads))
        if budget in naive_budgets:
            rows.append(_spawn("naive", args.model, budget, args.threads))
    rows.append(_spawn("bare", args.model, max(naive_budgets), args.threads))
    print(f"{'mode':<7}{'budget':>8}{'tok/s':>10}{'seconds':>10}{'cache s':>10}{'peak MB':>10}{'work MB':>10}")
    for r in rows:
        cache_s = f"{r['cache_seconds']:.1f}" if r["cache_seconds"] is not None else "-"
        print(f"{r['mode']:<7}{r['budget']:>8}{r['tokens_per_s']:>10.0f}{r['seconds']:>10.1f}{cache_s:>10}"
              f"{r['peak_rss_mb']:>10.0f}{r['peak_rss_mb'] - r['rss_after_load_mb']:>10.0f}")
    bare = next(r for r in rows if r["mode"] == "bare")
    stream = {r["budget"]: r for r in rows if r["mode"] == "stream"}
    naive = {r["budget"]: r for r in rows if r["mode"] == "naive"}
    for budget, n in naive.items():
        s = stream[budget]
        assert s["nonzero_sum"] == n["nonzero_sum"] and abs(s["max_abs"] - n["max_abs"]) < 1e-3, "results differ"
        print(f"budget {budget}: throughput stream/naive {s['tokens_per_s'] / n['tokens_per_s']:.2f}x, "
              f"peak memory naive/stream {n['peak_rss_mb'] / s['peak_rss_mb']:.2f}x "
              f"(working memory {(n['peak_rss_mb'] - n['rss_after_load_mb']) / max(1.0, s['peak_rss_mb'] - s['rss_after_load_mb']):.1f}x)")
    largest = max(naive)
    print(f"bare forward at {bare['budget']} tokens: {bare['tokens_per_s']:.0f} tok/s; streaming at "
          f"{stream[largest]['tokens_per_s'] / bare['tokens_per_s']:.2f}x of it, naive at "
          f"{naive[largest]['tokens_per_s'] / bare['tokens_per_s']:.2f}x")
    if args.tokens in naive:
        n, s = naive[args.tokens], stream[args.tokens]
        print(f"AT {args.tokens} TOKENS (both measured): throughput stream/naive "
              f"{s['tokens_per_s'] / n['tokens_per_s']:.2f}x; peak memory stream/naive "
              f"{s['peak_rss_mb'] / n['peak_rss_mb']:.3f}")
    if args.tokens not in naive:
        xs = sorted(naive)
        if len(xs) >= 2:
            slope = (naive[xs[-1]]["peak_rss_mb"] - naive[xs[0]]["peak_rss_mb"]) / (xs[-1] - xs[0])
        else:  # one budget: its growth over the loaded model, per token
            slope = (naive[xs[0]]["peak_rss_mb"] - naive[xs[0]]["rss_after_load_mb"]) / xs[0]
        est = naive[xs[-1]]["peak_rss_mb"] + slope * (args.tokens - xs[-1])
        print(f"naive way at {args.tokens} tokens not run (cache would exceed {args.naive_gb} GB); its peak grows "
              f"{slope * 1024:.1f} MB per 1k tokens; extrapolated {est:.0f} MB vs stream "
              f"{stream[args.tokens]['peak_rss_mb']:.0f} MB ({est / stream[args.tokens]['peak_rss_mb']:.1f}x)")
        s = stream[args.tokens]
        print(f"AT {args.tokens} TOKENS (naive extrapolated): throughput stream/naive "
              f"{s['tokens_per_s'] / naive[largest]['tokens_per_s']:.2f}x (naive throughput measured at {largest} "
              f"tokens, where it is not yet slowed by a larger cache); peak memory stream/naive "
              f"{s['peak_rss_mb'] / est:.3f} (naive extrapolated)")
    print(json.dumps({"model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
