"""Benchmark: the full path-length decomposition of a 64-token prompt against one bare forward pass, same process.

Run: ``.venv/bin/python bench/paths.py [--model smollm2-135m] [--tokens 64] [--rounds 3]``. Prints a table of median
seconds and the ratio to the bare forward pass. The decomposition is: the cached clean run that freezes the model
(:func:`circuits.paths.freeze`), the dynamic programme over all sublayers (every length kept apart), and the logits of
every length (``c_k`` for all ``k``, what completeness sums). Rounds interleave the forward and the decomposition so
that a change of machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _prompt(model, n_tokens: int) -> torch.Tensor:
    from workbench.data import token_batches

    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=n_tokens, batch_size=1)))
    return batch.tokens[:, :n_tokens]


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _every_length_logits(dec) -> torch.Tensor:
    """sum_k c_k, each c_k computed on its own (what completeness checks)."""
    return sum(dec.logits(k) for k in range(dec.parts.shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from circuits.paths import decompose, freeze
    from workbench.models import load_model

    model = load_model(args.model, device=args.device)
    tokens = _prompt(model, args.tokens).to(args.device)
    with torch.no_grad():
        model(tokens)  # warm-up
    rows: dict[str, list[float]] = {k: [] for k in ("forward", "freeze", "dp (all lengths)", "logits of every length",
                                                    "dp float64", "dp max_length=8")}
    error = error64 = 0.0
    for _ in range(args.rounds):
        with torch.no_grad():
            rows["forward"].append(_timed(model, tokens)[0])
            t, frozen = _timed(freeze, model, tokens)
            rows["freeze"].append(t)
            t, dec = _timed(decompose, frozen)
            rows["dp (all lengths)"].append(t)
            t, total = _timed(_every_length_logits, dec)
            rows["logits of every length"].append(t)
            clean = frozen.clean_logits
            error = float((total - clean).abs().max() / clean.abs().max())
            t, dec64 = _timed(decompose, frozen, dtype=torch.float64)
            rows["dp float64"].append(t)
            error64 = dec64.completeness_error()
            rows["dp max_length=8"].append(_timed(decompose, frozen, max_length=8)[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    full = med["freeze"] + med["dp (all lengths)"] + med["logits of every length"]
    result = {"model": args.model, "tokens": int(tokens.shape[1]), "sublayers": frozen.n, "threads": torch.get_num_threads(),
              "seconds": med, "full_decomposition_s": full, "ratio_full": full / med["forward"],
              "ratios": {k: v / med["forward"] for k, v in med.items()},
              "completeness_error_float32": error, "completeness_error_float64_dp": error64}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.model}, {result['tokens']} tokens, {frozen.n} sublayers, {args.rounds} rounds (median), "
          f"{result['threads']} threads")
    print(f"{'step':<26} {'seconds':>9} {'x forward':>10}")
    for k, v in med.items():
        print(f"{k:<26} {v:>9.3f} {v / med['forward']:>10.1f}")
    print(f"{'full decomposition':<26} {full:>9.3f} {result['ratio_full']:>10.1f}   (freeze + dp + logits of every length)")
    print(f"completeness error: float32 {error:.2e}, float64 dp {error64:.2e} (relative to max |logit|)")


if __name__ == "__main__":
    main()
