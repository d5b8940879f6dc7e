"""Case study: what needs to go right for an induction head? Clamps applied throughout training of the induction toy.

Trains the toy (the architecture of ``toy/induction-2l``: 2 layers x 2 heads, d_model 64, repeated random tokens)
for 800 steps under each clamp of the default sweep of ``workbench formation`` (no clamp; the previous-token head's
pattern fixed to uniform; each layer-1 head's output zeroed; the layer-0 attention output zeroed) plus both layer-0
heads' patterns fixed to uniform together, reads the
phase-change step from the repeated-half loss, stores the run (kind ``formation``) and writes
``induction_formation.md`` next to this script.

Run: ``.venv/bin/python case_studies/induction_formation.py`` (about 3 minutes on two quiet cores; cached variants
are reused).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from circuits.formation.analysis import DEFAULT_CLAMPS, FORMATION, FormationConfig
from workbench.store import Store

#: both layer-0 heads' patterns uniform at once: no head can carry the previous token
BOTH = "L0.H0.pattern=uniform+L0.H1.pattern=uniform"


def _table(clamps) -> list[str]:
    lines = ["| clamp | resolved | phase-change step | steepest drop (nats) | final repeated-half loss | "
             "final first-half loss | final induction score (best layer-1 head) |", "|---|---|---|---|---|---|---|"]
    for r in clamps.to_dict("records"):
        step = r["phase_change_step"]
        lines.append(f"| `{r['clamp']}` | `{r['resolved']}` | {'none' if step is None or str(step) == '<NA>' else int(step)} "
                     f"| {r['steepest_drop']:.3f} | {r['final_loss_repeated_half']:.3f} | "
                     f"{r['final_loss_first_half']:.3f} | {r['final_induction_score']:.3f} ({r['best_induction_head']}) |")
    return lines


def _head_table(heads, steps: int) -> list[str]:
    """Every head's final previous-token (layer 0) or induction (last layer) score per clamp."""
    final = heads[heads["step"] == steps]
    names = list(dict.fromkeys(final["head_name"]))
    last = int(final["layer"].max())
    lines = ["| clamp | " + " | ".join(f"{n} {'induction' if n.startswith(f'L{last}.') else 'prev-token'}"
                                        for n in names) + " |", "|---|" + "---|" * len(names)]
    for clamp, part in final.groupby("clamp", sort=False):
        cells = [part[part["head_name"] == n].iloc[0] for n in names]
        lines.append(f"| `{clamp}` | " + " | ".join(
            f"{c['induction'] if c['layer'] == last else c['previous_token']:.3f}" for c in cells) + " |")
    return lines


def _verdict(summary: dict, steps: int) -> str:
    """One sentence comparing the measured phase changes with the paper's claims."""
    ch = summary["phase_change_steps"]
    base = ch.get("none")
    layer0 = ch.get("L0.attn=zero")
    prev = ch.get("prev.pattern=uniform")
    both = ch.get(BOTH)
    heads = {k: v for k, v in ch.items() if k.startswith("L1.H") and k.endswith("output=zero")}
    parts = []
    parts.append("with layer 0's output zeroed (no previous-token information to compose with) "
                 + (f"no phase change happens in {steps} steps, as the paper's account requires"
                    if layer0 is None else f"a phase change still happens at step {layer0}, against the paper's account"))
    parts.append("with the previous-token head's pattern clamped to uniform the phase change "
                 + (f"does not happen in {steps} steps" if prev is None else
                    f"happens at step {prev} ({'later than' if base is not None and prev > base else 'not later than'} "
                    f"the unclamped {base})"))
    if BOTH in ch:
        parts.append("with both layer-0 heads' patterns clamped to uniform (no previous-token head possible) "
                     + (f"no phase change happens in {steps} steps" if both is None else f"a phase change still happens at step {both}"))
    for label, step in heads.items():
        parts.append(f"with {label.split('.output')[0]}'s output zeroed "
                     + (f"no phase change happens in {steps} steps" if step is None else f"the phase change happens at step {step}"))
    return ("Singh et al. find that the phase change needs a previous-token subcircuit feeding the induction head and "
            "that several induction heads form additively; here " + "; ".join(parts) + ".")


def main() -> None:
    cfg = FormationConfig(clamps=[*DEFAULT_CLAMPS, BOTH])
    info, result = FORMATION.launch(None, cfg, store=Store(), progress=True)
    summary = result.summary
    out = [
        "# Induction-head formation under clamps",
        "",
        f"Toy: {cfg.layers} layers x {cfg.heads} heads, d_model {cfg.d_model}, vocabulary {cfg.vocab}, repeated half "
        f"{cfg.half_len}, batch {cfg.batch}, {cfg.steps} steps at peak learning rate {cfg.lr}, seed {cfg.seed}; "
        f"{cfg.evaluations} evenly spaced evaluations on {cfg.n_eval} held-out `[BOS] + A + A` sequences. "
        f"Each clamp acts at every training step (and at the evaluations). `prev` = L0.H{summary['prev_head']}, the "
        "layer-0 head with the highest previous-token score at the end of the unclamped run.",
        "",
        "Phase-change step: the end of the evaluation interval with the steepest fall of the repeated-half loss; "
        f"'none' when that fall is below {cfg.min_drop} nats.",
        "",
        *_table(result.tables["clamps"]),
        "",
        f"Each head's score at step {cfg.steps} (layer 0: previous-token score; layer {cfg.layers - 1}: induction "
        "score; a clamped pattern shows its clamp):",
        "",
        *_head_table(result.tables["heads"], cfg.steps),
        "",
        _verdict(summary, cfg.steps),
        "",
        *(f"**warning:** {w}" for w in result.warnings),
        f"Measured on {platform.machine()} CPU ({torch.get_num_threads()} torch thread(s), machine shared), "
        f"{summary['seconds']:.0f} s for the sweep (0 s for variants reused from the cache). Stored as run "
        f"`formation/{info.run_id}`; figures: loss curves and induction-score curves on the dashboard's Formation page.",
    ]
    Path(__file__).with_suffix(".md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
