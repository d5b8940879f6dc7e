"""Case study: massive activations in SmolLM2-135M: where they sit, on which tokens, and what zeroing them does.

Run: ``.venv/bin/python case_studies/massive_smollm2.py [--tokens 1024] [--eval-tokens 256]``. Writes two
``massive`` runs (the paper's thresholds with the intervention; relaxed ratio threshold 100 to show the smaller
delimiter activations) and ``case_studies/massive_smollm2.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probes.analysis import MASSIVE, MassiveConfig
from workbench.store import Store

REPORT = Path(__file__).with_suffix(".md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--eval-tokens", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()
    store = Store()
    info, _ = MASSIVE.launch("smollm2-135m", MassiveConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=4,
                                                           eval_tokens=args.eval_tokens), store=store)
    run = store.load("massive", info.run_id)
    relaxed, _ = MASSIVE.launch("smollm2-135m", MassiveConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=4,
                                                              ratio_threshold=100.0, intervention=False), store=store)
    rrun = store.load("massive", relaxed.run_id)
    layers, s = run.table("layers"), run.summary
    res = run.json("intervention") if "intervention" in run.names("json") else {}
    lines = [
        "# Massive activations in SmolLM2-135M", "",
        f"Runs: `massive/{info.run_id}` (|a| > 100 and ratio > 1000, with the intervention) and "
        f"`massive/{relaxed.run_id}` (ratio > 100). {s['n_seqs']} wiki sequences of {args.seq_len} tokens "
        f"({s['n_tokens']} tokens); intervention on {args.eval_tokens} held-out wiki tokens.", "",
        "## Where", "",
        f"- Largest value: {s['max_value']:,.0f} at layer {s['max_layer']} (block output), dimension {s['max_dim']}, "
        f"position {s['max_pos']} (token {s['max_token']!r}).",
        f"- Layers with massive activations: {s['massive_layers']}; dimensions: {s['massive_dims']}.", "",
        "| layer | top-1 | top-2 | top-3 | median | top-1/median | dim | pos | token | massive |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for _, r in layers.iterrows():
        lines.append(f"| {r.layer} | {r.top1:,.0f} | {r.top2:,.0f} | {r.top3:,.0f} | {r['median']:.3f} | {r.ratio:,.0f} | "
                     f"{r.dim_1} | {r.pos_1} | {r.token_str_1!r} | {r.massive_count} |")
    toks = rrun.table("tokens").head(10)
    rl = rrun.table("layers")
    lines += ["", "## Which tokens (relaxed ratio > 100, positions after the first)", "",
              f"Layers with such activations: {rrun.summary['massive_layers']}; per layer, counts on the first "
              f"position / elsewhere: " + ", ".join(f"L{r.layer}: {r.massive_first}/{r.massive_rest}"
                                                   for _, r in rl.iterrows() if r.massive_count) + ".", "",
              "| token | count |", "|---|---:|"]
    lines += [f"| {r.token!r} | {r['count']} |" for _, r in toks.iterrows()] or ["| (none) | 0 |"]
    if res:
        lines += ["", "## Intervention (held-out next-token loss, nats)", "",
                  f"At layers {res['layers']} (where the rule fires), entries flagged live by the same rule:", "",
                  "| setting | loss | entries changed |", "|---|---:|---:|",
                  f"| clean | {res['loss_clean']:.4f} | 0 |",
                  f"| massive set to zero | {res['loss_zero']:.4f} | {res['changed_zero']} |",
                  f"| massive set to their mean | {res['loss_mean']:.4f} | {res['changed_mean']} |",
                  f"| as many random entries zeroed | {res['loss_random']:.4f} | {res['changed_random']} |", "",
                  f"Zeroing raises the loss by {res['loss_zero'] - res['loss_clean']:.3f} nats; setting to the mean "
                  f"changes it by {res['loss_mean'] - res['loss_clean']:+.4f}; random zeroing by "
                  f"{res['loss_random'] - res['loss_clean']:+.4f}. The massive activation sits on the first token, "
                  "whose residual stream is the same in every sequence (causal attention, same BOS), so its mean is "
                  "its value: mean-setting is nearly a no-op, while zeroing removes the bias-like term the later "
                  "layers rely on (attention sinks)."]
    REPORT.write_text("\n".join(lines) + "\n")
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
