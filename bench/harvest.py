"""Benchmark: streaming harvest against the bare forward pass, and its peak memory as the token budget grows.

Run: ``.venv/bin/python bench/harvest.py [--model smollm2-135m] [--budgets 16384 131072]``. Prints a table.
Throughput is a ratio against the bare forward pass measured in the same process; peak RSS is measured in a fresh
process per token budget, so the numbers of one budget never leak into another.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

BATCH, SEQ = 8, 128


def _batches(model, n_tokens: int):
    from workbench.data import token_batches

    return token_batches("shakespeare", model.tokenizer, seq_len=SEQ, batch_size=BATCH, max_tokens=n_tokens)


class Count:
    """A trivial consumer: counts the real tokens it is shown."""

    def __init__(self, hooks):
        self.hooks = hooks
        self.tokens = 0

    def consume(self, name, activation, mask):
        self.tokens += int(mask.sum())


def peak_rss(model_spec: str, budget: int) -> None:
    """Child mode: harvest ``budget`` tokens with every layer's residual stream hooked, print peak RSS (MB)."""
    from workbench.harvest import harvest
    from workbench.models import load_model

    model = load_model(model_spec, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    stats = harvest(model, _batches(model, budget), [Count(hooks)], max_tokens=budget, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"budget": budget, "tokens": stats.tokens, "rss_after_load_mb": before, "peak_rss_mb": peak,
                      "tokens_per_s": stats.tokens_per_second}))


def throughput(model_spec: str, n_tokens: int, repeats: int) -> dict:
    """Bare forward versus harvest (trivial consumer on the last layer, and with logits), same batches, same process."""
    from workbench.harvest import harvest
    from workbench.models import load_model

    model = load_model(model_spec, device="cpu")
    batches = [b.tokens for b in _batches(model, n_tokens)]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    every = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]

    def bare():
        with torch.no_grad():
            for tokens in batches:
                model(tokens)

    def run(hooks):
        return lambda: harvest(model, batches, [Count(hooks)], progress=False)

    bare()  # warm-up
    modes = [("harvest: last layer", run([last])), ("harvest: every layer", run(every)),
             ("harvest: every layer + logits", run(every + ["logits"]))]
    timings = {"bare forward": float("inf")}
    for _ in range(repeats):  # interleaved rounds, best of each, so drift hits every mode alike
        for label, fn in [("bare forward", bare), *modes]:
            t0 = time.perf_counter()
            fn()
            timings[label] = min(timings.get(label, float("inf")), time.perf_counter() - t0)
    tokens = sum(t.numel() for t in batches)
    return {label: {"tokens_per_s": tokens / s, "ratio_to_bare": timings["bare forward"] / s} for label, s in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16384, 131072])
    parser.add_argument("--throughput-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        peak_rss(args.model, args.child)
        return

    print(f"# harvest benchmark, model {args.model}, batches {BATCH} x {SEQ}, torch threads {torch.get_num_threads()}")
    rows = throughput(args.model, args.throughput_tokens, args.repeats)
    print(f"{'mode':<32} {'tokens/s':>10} {'x bare':>8}")
    for label, r in rows.items():
        print(f"{label:<32} {r['tokens_per_s']:>10.0f} {r['ratio_to_bare']:>8.2f}")
    print(f"\n{'budget (tokens)':>16} {'peak RSS MB':>12} {'RSS after load MB':>18} {'tokens/s':>10}")
    for budget in args.budgets:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", str(budget)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['budget']:>16} {r['peak_rss_mb']:>12.0f} {r['rss_after_load_mb']:>18.0f} {r['tokens_per_s']:>10.0f}")


if __name__ == "__main__":
    main()
