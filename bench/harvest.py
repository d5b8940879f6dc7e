"""Benchmark: streaming harvest against the bare forward pass, and its working memory as the token budget grows.

Run: ``.venv/bin/python bench/harvest.py [--model smollm2-135m] [--budgets 16384 131072] [--rounds 5] [--quick]``.
Prints a table, then one JSON object as its last line.

Throughput: the bare forward pass and three harvests (a trivial consumer on the last layer; on every layer; on every
layer and the logits) over the same batches, interleaved in rounds in one process (:func:`bench.timing.compare`);
each harvest's ratio is its throughput over the bare forward's (bare seconds / harvest seconds in the same round,
median over rounds). Memory: a fresh process per token budget harvests every layer's residual stream and reports its
peak resident memory above its own resident size after loading (:class:`bench.memory.PeakMemory`), with a bare
forward pass over the smallest budget as the reference, so the loading of the model never hides the work.
``--quick``: a toy model, 2,048 tokens, one budget of 4,096 tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.memory import PeakMemory, child_json  # noqa: E402
from bench.timing import LoadWatch, compare, emit, table  # noqa: E402

BATCH, SEQ = 8, 128
QUICK_MODEL = "toy/gpt-relu-d128-l4"


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


def working_memory(model_spec: str, budget: int, mode: str) -> dict:
    """Child mode: harvest ``budget`` tokens with every layer's residual stream hooked (``mode`` "harvest") or run
    the bare forward over them ("bare"); the peak resident memory above the resident size after loading."""
    from workbench.harvest import harvest
    from workbench.models import load_model

    model = load_model(model_spec, device="cpu")
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    counter = Count(hooks)
    tokens = 0
    with PeakMemory() as mem:
        if mode == "harvest":
            tokens = harvest(model, _batches(model, budget), [counter], max_tokens=budget, progress=False).tokens
        else:
            with torch.no_grad():
                for b in _batches(model, budget):
                    model(b.tokens)
                    tokens += int(b.attention_mask.sum())
    return {"mode": mode, "budget": budget, "tokens": tokens, **mem.result.to_json()}


def throughput(model_spec: str, n_tokens: int, rounds: int, watch: LoadWatch):
    """Bare forward versus harvest (trivial consumer on the last layer, every layer, every layer + logits)."""
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

    modes = {"bare forward": bare, "harvest: last layer": run([last]), "harvest: every layer": run(every),
             "harvest: every layer + logits": run(every + ["logits"])}
    return compare(modes, rounds=rounds, warmup=1, load=watch, min_seconds=0.5), sum(t.numel() for t in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"default smollm2-135m ({QUICK_MODEL} with --quick)")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="default 16384 131072 (4096 quick)")
    parser.add_argument("--throughput-tokens", type=int, default=None, help="default 8192 (2048 quick)")
    parser.add_argument("--rounds", "--repeats", type=int, default=None, help="default 7")
    parser.add_argument("--quick", action="store_true", help="smallest settings: a toy model, few tokens and rounds")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", choices=["harvest", "bare"], default="harvest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or (QUICK_MODEL if args.quick else "smollm2-135m")
    if args.child is not None:
        emit(working_memory(model, args.child, args.child_mode))
        return
    budgets = args.budgets or ([4096] if args.quick else [16384, 131072])
    n_tokens = args.throughput_tokens or (2048 if args.quick else 8192)
    rounds = args.rounds or 7

    watch = LoadWatch()
    print(f"# harvest benchmark, model {model}, batches {BATCH} x {SEQ}, torch threads {torch.get_num_threads()}")
    comparison, tokens = throughput(model, n_tokens, rounds, watch)
    print(table(comparison, "bare forward", work=tokens))
    speed = {label: 1.0 / comparison.ratio(label, "bare forward") for label in comparison.timings}

    memory = []
    jobs = [(b, "harvest") for b in budgets] + [(min(budgets), "bare")]
    for budget, mode in jobs:
        memory.append(child_json([sys.executable, __file__, "--model", model, "--child", str(budget),
                                  "--child-mode", mode]))
        watch.sample()
    print(f"\n{'mode':<8} {'budget (tokens)':>16} {'after load MB':>14} {'peak MB':>9} {'working MB':>11}")
    for r in memory:
        print(f"{r['mode']:<8} {r['budget']:>16} {r['baseline_mb']:>14.0f} {r['peak_mb']:>9.0f} {r['working_mb']:>11.0f}")
    print(watch.describe())
    emit({"bench": "harvest", "model": model, "threads": torch.get_num_threads(), "throughput_tokens": tokens,
          "ratios": {k: v for k, v in speed.items() if k != "bare forward"},
          "ratios_meaning": "harvest throughput / bare forward throughput (median over rounds of per-round ratios)",
          "timing": comparison.to_json(baseline="bare forward"), "memory": memory, "load": watch.to_json(),
          "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
