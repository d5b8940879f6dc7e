"""Benchmark: the full path-length decomposition of a 64-token prompt against one bare forward pass, same process.

Run: ``.venv/bin/python bench/paths.py [--model smollm2-135m] [--tokens 64] [--rounds 5] [--quick]``. Prints a table
of best and median seconds and the cost ratio to the bare forward pass, then one JSON object as its last line. The
decomposition is: the cached clean run that freezes the model (:func:`circuits.paths.freeze`), the dynamic programme
over all sublayers (every length kept apart), and the logits of every length (``c_k`` for all ``k``, what
completeness sums). Each step runs on inputs prepared once (the frozen run, the decomposition), and the steps and
the forward run interleaved in rounds (:func:`bench.timing.compare`) so that a change of machine load hits all of
them; the load average is recorded and a run whose load rose above the core count is flagged unreliable.
``--quick``: 16 tokens. Every timed sample lasts at least 0.5 s (short steps repeat).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


def _prompt(model, n_tokens: int) -> torch.Tensor:
    from workbench.data import token_batches

    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=n_tokens, batch_size=1)))
    return batch.tokens[:, :n_tokens]


def _every_length_logits(dec) -> torch.Tensor:
    """sum_k c_k, each c_k computed on its own (what completeness checks)."""
    return sum(dec.logits(k) for k in range(dec.parts.shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 64; 16 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5")
    parser.add_argument("--quick", action="store_true", help="smallest settings: a 16-token prompt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    n_tokens = args.tokens or (16 if args.quick else 64)
    rounds = args.rounds or 5

    from circuits.paths import decompose, freeze
    from workbench.models import load_model

    watch = LoadWatch()
    model = load_model(args.model, device=args.device)
    tokens = _prompt(model, n_tokens).to(args.device)
    with torch.no_grad():
        frozen = freeze(model, tokens)  # the inputs of the later steps, prepared once
        dec = decompose(frozen)
        clean = frozen.clean_logits
        error = float((_every_length_logits(dec) - clean).abs().max() / clean.abs().max())
        error64 = decompose(frozen, dtype=torch.float64).completeness_error()
    steps = {"forward": lambda: model(tokens), "freeze": lambda: freeze(model, tokens),
             "dp (all lengths)": lambda: decompose(frozen), "logits of every length": lambda: _every_length_logits(dec),
             "dp float64": lambda: decompose(frozen, dtype=torch.float64),
             "dp max_length=8": lambda: decompose(frozen, max_length=8)}
    with torch.no_grad():
        comparison = compare(steps, rounds=rounds, warmup=1, load=watch, min_seconds=0.5)
    med = {k: t.median for k, t in comparison.timings.items()}
    parts = ("freeze", "dp (all lengths)", "logits of every length")
    full = sum(med[k] for k in parts)
    ratios = {k: comparison.ratio(k, "forward") for k in comparison.timings if k != "forward"}
    # the full decomposition's cost ratio, per round: (freeze + dp + logits) / forward of the same round
    per_round = [sum(comparison[k].seconds[r] for k in parts) / comparison["forward"].seconds[r] for r in range(rounds)]
    ratios["full decomposition"] = statistics.median(per_round)
    print(f"{args.model}, {int(tokens.shape[1])} tokens, {frozen.n} sublayers, torch threads {torch.get_num_threads()}")
    print(table(comparison, "forward"))
    print(f"{'full decomposition':<34} {'':>9} {full:>9.3f} {ratios['full decomposition']:>11.3f}   "
          "(freeze + dp + logits of every length)")
    print(f"completeness error: float32 {error:.2e}, float64 dp {error64:.2e} (relative to max |logit|)")
    emit({"bench": "paths", "model": args.model, "tokens": int(tokens.shape[1]), "sublayers": frozen.n,
          "threads": torch.get_num_threads(), "seconds_median": med, "full_decomposition_s": full,
          "ratio_full": ratios["full decomposition"], "ratios": ratios,
          "ratios_meaning": "seconds / seconds of the forward pass in the same round, median over rounds",
          "completeness_error_float32": error, "completeness_error_float64_dp": error64,
          "timing": comparison.to_json(baseline="forward"), "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
