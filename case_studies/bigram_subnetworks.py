"""Case study: bigram subnetworks of SmolLM2-135M and of a zoo model (Chang & Bergen 2025).

For each model, one ``bigram`` run (:mod:`circuits.bigram.analysis`): the bigram table of the bundled Wikipedia
text's training split over the model's tokenizer, one mask logit per weight of every attention and MLP matrix
(embeddings, unembedding, norms and biases kept), continuous sparsification toward the bigram distribution on text
contexts, then on held-out text: the kept fraction per layer and sublayer, the surprisal correlation with the bigram
model (subnetwork and full model), and the full model's loss with the subnetwork ablated against a random subnetwork
of the same size per matrix.

The paper trains for up to 15,000 steps of 32 x 128 tokens on a GPU; this study runs on two shared CPU cores, so
SmolLM2's budget is small (``--smollm2-steps`` steps of ``--batch-size`` x ``--seq-len`` tokens, a larger learning
rate and a faster beta schedule than the paper's); the report states the budget and the seconds it took.

Writes ``bigram_subnetworks.md`` next to this script and one ``bigram`` run per model.
Run: ``nice -n 10 .venv/bin/python case_studies/bigram_subnetworks.py [--smollm2-steps 40] [--zoo-steps 300]``
(a run repeated with the same settings resumes its finished training from the workbench's home: only the bigram
counts and the evaluation are computed again).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from circuits.bigram.analysis import BIGRAM, BigramConfig
from workbench.store import Store

FINDINGS = "<!-- findings -->"


def study(spec: str, config: BigramConfig, store: Store, progress: bool) -> tuple[dict, pd.DataFrame, str, float]:
    """One run: (summary, per-layer kept table, run id, seconds)."""
    start = time.monotonic()
    info, result = BIGRAM.launch(spec, config, store=store, device="cpu", progress=progress)
    seconds = time.monotonic() - start
    layers = result.tables["layers"].copy()
    layers.insert(0, "model", spec)
    return dict(result.summary, warnings=list(result.warnings)), layers, info.run_id, seconds


def _pct(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def report(rows: list[tuple[str, BigramConfig, dict, pd.DataFrame, str, float]]) -> str:
    """The markdown report of the measured runs."""
    lines = ["# Bigram subnetworks of SmolLM2-135M and a zoo model", "",
             "Chang & Bergen (2025) train continuous-sparsification masks over a language model's weights so that the "
             "masked model predicts the bigram distribution p(next | current token); their subnetworks keep under 0.2% "
             "of the parameters, mostly in the first MLP layer, and ablating them hurts the model far more than "
             "ablating random parameters. Here: `circuits.bigram` (run kind `bigram`), masks over every attention "
             "(q, k, v, o) and MLP (in, gate, out) matrix of every layer; embeddings, unembedding, norms and biases "
             "kept; bigram table from the training split of the bundled Wikipedia text (rows seen >= 5 times, "
             "unigram-smoothed); everything measured on its held-out split.", "",
             "## Budget and settings", "",
             "| model | steps x rows x tokens | lr | lambda | beta 1 -> | bigram pairs | eval tokens | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for spec, cfg, s, _, _, sec in rows:
        lines.append(f"| {spec} | {cfg.steps} x {cfg.batch_size} x {cfg.seq_len} | {cfg.lr:g} | {cfg.l0_lambda:g} | "
                     f"{cfg.beta_final:g} | {s['bigram_pairs']:,} | {cfg.eval_tokens:,} | {sec:.0f} |")
    lines += ["", "Two CPU cores shared with other jobs (run under `nice -n 10`); the paper's budget is 15,000 steps of "
              "32 x 128 tokens on a GPU, so these masks are far less trained. Seconds: this invocation's (a run whose "
              "training had finished before resumes it from its checkpoint and only counts and evaluates again).", "",
              "## Results", "",
              "| model | masked weights | kept | kept fraction | share in layer 0 MLP | largest part | corr. subnetwork | "
              "corr. full | loss full | loss, subnetwork ablated | loss, random ablated (mean +- sd) | loss, subnetwork alone | "
              "undecided |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec, cfg, s, _, _run, _ in rows:
        lines.append(f"| {spec}, lambda {cfg.l0_lambda:g} | {s['n_masked']:,} | {s['n_kept']:,} | {_pct(s['kept_fraction'], 4)} | "
                     f"{_pct(s['first_mlp_share'], 1)} | {s['top_sublayer']} | {_num(s['corr_subnetwork'])} | "
                     f"{_num(s['corr_full'])} | {_num(s['lm_loss_full'])} | {_num(s['lm_loss_ablated'])} | "
                     f"{_num(s['lm_loss_random'])} +- {_num(s['lm_loss_random_sd'])} | {_num(s['lm_loss_subnetwork'])} | "
                     f"{_pct(s['undecided'], 2)} |")
    lines += ["", "Correlation: Pearson r between the model's log-probability of each held-out next token and the bigram "
              "log-probability (the paper's surprisal correlation). Losses: next-token cross-entropy in nats on the "
              "held-out text. Random control: the same number of kept weights in every matrix, drawn uniformly.", ""]
    for spec, cfg, s, _, _run, _ in rows:
        for w in s.get("warnings", []):
            lines.append(f"- warning ({spec}, lambda {cfg.l0_lambda:g}): {w}")
    lines += ["", "## Where the kept weights sit", ""]
    for spec, cfg, _s, layers, run_id, _ in rows:
        lines += [f"### {spec}, lambda {cfg.l0_lambda:g} (run `bigram/{run_id}`)", "", "| layer | sublayer | kept | fraction |", "|---|---|---|---|"]
        nonzero = layers[layers["kept"] > 0]
        shown = nonzero.sort_values("kept", ascending=False).head(12).sort_values(["layer"], kind="stable")
        for r in shown.itertuples():
            lines.append(f"| {r.layer} | {r.kind}.{r.sublayer} | {int(r.kept):,} | {_pct(r.fraction, 4)} |")
        by_layer = layers.groupby("layer")[["kept", "size"]].sum()
        lines += ["", f"{len(nonzero)} of {len(layers)} matrices keep any weight (the 12 largest shown). Kept per "
                  "layer: " + ", ".join(f"L{int(i)} {int(r.kept):,}" for i, r in by_layer.iterrows()) + ".", ""]
    lines += ["## Against the paper", ""]
    for spec, cfg, s, _, _, _ in rows:
        lines.append(f"- {spec}, lambda {cfg.l0_lambda:g}: kept {_pct(s['kept_fraction'], 4)} of the masked weights (paper: under 0.2%), "
                     f"{_pct(s['first_mlp_share'], 1)} of them in layer 0's MLP (largest part {s['top_sublayer']}); "
                     f"ablating them raises the held-out loss from {_num(s['lm_loss_full'])} to "
                     f"{_num(s['lm_loss_ablated'])} nats against {_num(s['lm_loss_random'])} for a random same-size "
                     f"ablation; bigram correlation {_num(s['corr_subnetwork'])} (full model {_num(s['corr_full'])}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2-steps", type=int, default=40)
    parser.add_argument("--zoo", default="toy/llama-d64-l2")
    parser.add_argument("--zoo-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--smollm2-lambda", type=float, nargs="+", default=[10.0, 10_000.0],
                        help="one SmolLM2 run per value (10: the zoo's lambda; 10,000: the zoo's penalty per weight, "
                             "lambda / masked weights, at SmolLM2's size)")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    store = Store()
    plans = [(args.zoo, BigramConfig(steps=args.zoo_steps, eval_tokens=4096, control_draws=3, l0_lambda=10.0))]
    for lam in [] if args.skip_smollm2 else args.smollm2_lambda:
        plans.append(("smollm2-135m", BigramConfig(steps=args.smollm2_steps, batch_size=args.batch_size,
                                                   seq_len=args.seq_len, lr=0.2, beta_final=30.0, l0_lambda=lam,
                                                   bigram_tokens=300_000, eval_tokens=1024, control_draws=2)))
    rows = []
    for spec, cfg in plans:
        summary, layers, run_id, seconds = study(spec, cfg, store, progress=True)
        rows.append((spec, cfg, summary, layers, run_id, seconds))
        print(f"{spec}: kept {summary['kept_fraction']:.6f}, {seconds:.0f} s, run bigram/{run_id}", flush=True)
    out = Path(args.out)
    old = out.read_text() if out.is_file() else ""
    text = report(rows)
    if FINDINGS in old:  # the written reading below the marker survives a rerun
        text += "\n" + old[old.index(FINDINGS):]
    out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
