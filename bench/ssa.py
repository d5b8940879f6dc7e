"""Benchmark: one training step (forward and backward) of the induction toy with subsampled attention (SSA) against
dense attention, same process, and the analytic attention-FLOP saving.

Run: ``.venv/bin/python bench/ssa.py [--fraction 0.25] [--half-len 24] [--rounds 5] [--quick]``. Modes: transformers'
default attention (SDPA), the workbench attention function without a mask (eager), the same with the SSA mask
drawn for the step (mask drawing included), and with a clamped pattern (``L1.H0.pattern=uniform``). The masked
SSA implementation computes every score, so its cost ratio is expected at or above 1: the FLOP saving printed
beside it is what an implementation gathering only the kept keys would get, not what this one gets. Prints a
table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--half-len", type=int, default=None, help="default 24 (8 with --quick)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    half = args.half_len or (8 if args.quick else 24)

    from workbench.attention_override import set_override
    from workbench.clamp import ClampIntervention, parse_clamp
    from workbench.induction_toy import InductionConfig, batch_fn_for, make_model
    from workbench.ssa import SSAConfig, SSAIntervention, attention_flops, kept_counts

    watch = LoadWatch()
    cfg = InductionConfig(half_len=half, batch=args.batch)
    model = make_model(cfg).to(args.device).train()
    tokens = batch_fn_for(cfg)(0).to(args.device)
    ssa = SSAIntervention(SSAConfig(fraction=args.fraction))
    ssa.attach(model)
    clamp = ClampIntervention([parse_clamp("L1.H0.pattern=uniform")])
    clamp.attach(model)
    clamp.begin_step(10**9, tokens)  # attached, not active

    def step() -> None:
        model(input_ids=tokens, labels=tokens).loss.backward()
        model.zero_grad(set_to_none=True)

    def sdpa() -> None:
        set_override(model, False)
        step()

    def eager() -> None:
        set_override(model, True)
        step()

    def masked(i=[0]) -> None:  # noqa: B006  (a new draw each call, as in training)
        i[0] += 1
        ssa.begin_step(i[0], tokens)
        step()
        ssa.begin_eval(0)

    def clamped() -> None:
        clamp.begin_step(0, tokens)
        step()
        clamp.begin_step(10**9, tokens)

    modes = {"dense (sdpa)": sdpa, "dense (workbench, eager)": eager, f"ssa {args.fraction:g} (masked)": masked,
             "clamped pattern": clamped}
    comparison = compare(modes, rounds=args.rounds, warmup=1, load=watch, min_seconds=0.3)
    seq = int(tokens.shape[1])
    d_head = cfg.d_model // cfg.n_heads
    dense_f = attention_flops(seq, d_head, cfg.n_heads, cfg.n_layers, 1.0)
    ssa_f = attention_flops(seq, d_head, cfg.n_heads, cfg.n_layers, args.fraction)
    kept = int(kept_counts(seq, args.fraction).sum())
    print(f"induction toy d{cfg.d_model}, batch {args.batch} x {seq} tokens, threads {torch.get_num_threads()}")
    print(table(comparison, "dense (sdpa)", work=args.batch * seq))
    print(f"attention FLOPs per sequence (forward): dense {dense_f:,}, SSA {ssa_f:,} -> {dense_f / ssa_f:.2f}x fewer "
          f"(analytic; kept score entries {kept} of {seq * (seq + 1) // 2}); the masked implementation computes all")
    emit({"bench": "ssa", "fraction": args.fraction, "seq": seq, "batch": args.batch,
          "threads": torch.get_num_threads(), "attention_flops_dense": dense_f, "attention_flops_ssa": ssa_f,
          "flops_ratio": dense_f / ssa_f,
          "ratios": {k: comparison.ratio(k, "dense (sdpa)") for k in comparison.timings if k != "dense (sdpa)"},
          "ratios_meaning": "seconds of a training step / seconds of the dense (sdpa) step, median over rounds",
          "timing": comparison.to_json(baseline="dense (sdpa)"), "load": watch.to_json(),
          "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
