"""Case study: does toy/induction-2l grow induction heads, and when?

Builds (or reuses) the zoo member, measures the induction criteria at every saved checkpoint from the attention
patterns (loss on the repeated half against the first half; attention from each repeated token to the token after its
earlier copy; attention to the previous token in layer 0), stores the curve as a run and writes a markdown report next
to this script (``induction_toy.md``).

Run: ``.venv/bin/python case_studies/induction_toy.py``
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench import zoo
from workbench.induction_toy import InductionConfig, induction_report
from workbench.models import load_model
from workbench.store import Store

NAME = "induction-2l"


def main() -> None:
    zoo.build(NAME)
    cfg = InductionConfig(**zoo.manifest(NAME)["config"])
    rows = []
    for step in zoo.checkpoint_steps(NAME):
        report = induction_report(load_model(f"toy/{NAME}@{step}", device="cpu"), cfg)
        rows.append({
            "step": step,
            "loss_first_half": report["loss_first_half"],
            "loss_repeated_half": report["loss_repeated_half"],
            "loss_ratio": report["loss_ratio"],
            "best_layer1_induction": max(report["induction_scores"][1]),
            "best_layer0_previous_token": max(report["previous_token_scores"][0]),
        })
    table = pd.DataFrame(rows)
    with Store().create("case-induction-toy", model=f"toy/{NAME}", params={"config": cfg.to_dict()}) as run:
        run.save_table("checkpoints", table)
        run.summary.update(rows[-1])
    first = table[(table.loss_ratio < 0.2) & (table.best_layer1_induction > 0.5)]
    onset = int(first.step.iloc[0]) if len(first) else None
    report_md = [
        f"# Induction heads in toy/{NAME}",
        "",
        f"Config: {cfg.to_dict()}",
        "",
        f"Both criteria (repeated-half loss < 0.2 x first-half loss; a layer-1 head attending > 0.5 to the token after "
        f"the earlier copy) first hold at step **{onset}** of {cfg.steps}.",
        "",
        "```",
        table.to_string(index=False, float_format=lambda x: f"{x:.3f}"),
        "```",
        "",
        f"Stored as run `{run.info.kind}/{run.info.run_id}`.",
    ]
    out = Path(__file__).with_suffix(".md")
    out.write_text("\n".join(report_md) + "\n")
    print("\n".join(report_md))


if __name__ == "__main__":
    main()
