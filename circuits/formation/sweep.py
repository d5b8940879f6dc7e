"""Train the induction toy under each entry of a clamp sweep and tabulate the curves and the phase changes.

An entry is ``none`` (no clamp) or clamps joined by ``+`` (all applied together), each in the text form of
:func:`workbench.clamp.parse_clamp`. Two shorthands: ``prev`` as a component's head (``prev.pattern=uniform``) names
the previous-token head, the layer-0 head with the highest previous-token score at the end of the unclamped run
(trained first); ``H*`` (``L1.H*.output=zero``) expands the entry into one entry per head.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from circuits.formation.measure import formation_eval, phase_change
from workbench.clamp import Clamp, ClampIntervention, check_against, parse_clamp
from workbench.errors import ConfigError
from workbench.induction_toy import InductionConfig
from workbench.toy_variants import evenly_spaced, train_variant

NONE = "none"
_PREV = re.compile(r"(^|\+)prev\.")


@dataclass
class Entry:
    """One training run of a sweep: its label as given (after ``H*`` expansion) and its clamps' text."""

    label: str
    texts: list[str] = field(default_factory=list)

    @property
    def needs_prev(self) -> bool:
        return bool(_PREV.search(self.label))


def expand(entries: list[str], n_layers: int, n_heads: int) -> list[Entry]:
    """Entries with ``H*`` expanded, each clamp checked against the toy's shape (``prev`` left for later)."""
    out: list[Entry] = []
    for raw in entries:
        text = raw.strip()
        if text == NONE:
            out.append(Entry(NONE))
            continue
        labels = [text.replace("H*", f"H{h}") for h in range(n_heads)] if "H*" in text else [text]
        for label in labels:
            parts = [p.strip() for p in label.split("+")]
            if not all(parts):
                raise ConfigError(f"clamp entry {raw!r} has an empty part; join clamps with '+'")
            for part in parts:
                clamp = parse_clamp(part.replace("prev.", "L0.H0.", 1) if part.startswith("prev.") else part)
                check_against(clamp, n_layers, n_heads)
            out.append(Entry(label, parts))
    if len({e.label for e in out}) != len(out):
        raise ConfigError(f"clamp entries repeat: {', '.join(e.label for e in out)}")
    return out


def resolve(entry: Entry, prev_head: int | None) -> list[Clamp]:
    """The clamps of ``entry`` with ``prev`` replaced by layer 0's previous-token head."""
    return [parse_clamp(t.replace("prev.", f"L0.H{prev_head}.", 1) if t.startswith("prev.") else t) for t in entry.texts]


def _rows(label: str, history: list[dict]) -> tuple[list[dict], list[dict]]:
    curve, heads = [], []
    for h in history:
        if "eval" not in h:
            continue
        e, step = h["eval"], h["step"]
        last = e["induction"][-1]
        curve.append({"clamp": label, "step": step, "loss_first_half": e["loss_first_half"],
                      "loss_repeated_half": e["loss_repeated_half"], "best_induction": max(last),
                      "best_previous_token_l0": max(e["previous_token"][0])})
        for layer, (ind, prev) in enumerate(zip(e["induction"], e["previous_token"], strict=True)):
            for head, (a, b) in enumerate(zip(ind, prev, strict=True)):
                heads.append({"clamp": label, "step": step, "layer": layer, "head": head, "head_name": f"L{layer}.H{head}",
                              "induction": a, "previous_token": b})
    return curve, heads


def run_sweep(cfg: InductionConfig, entries: list[str], *, evaluations: int = 40, n_eval: int = 64,
              min_drop: float = 0.5, device: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Train the toy under each entry; returns tables ``clamps`` (one row per entry: phase-change step or None,
    steepest drop, final losses and best last-layer induction score), ``curves`` (per entry and evaluation) and
    ``heads`` (per entry, evaluation and head), and ``prev_head``."""
    todo = expand(entries, cfg.n_layers, cfg.n_heads)
    if any(e.needs_prev for e in todo) and not any(e.label == NONE for e in todo):
        todo.insert(0, Entry(NONE))  # the previous-token head is read from the unclamped run
    todo.sort(key=lambda e: e.label != NONE)
    eval_steps = evenly_spaced(cfg.steps, evaluations)
    eval_fn = formation_eval(cfg, n=n_eval)
    prev_head: int | None = None
    rows, curves, heads = [], [], []
    for entry in tqdm(todo, desc="clamps", disable=not progress, unit="run"):
        clamps = resolve(entry, prev_head) if entry.needs_prev else [parse_clamp(t) for t in entry.texts]
        what = {"clamps": [c.text() for c in clamps], "eval": "formation-1", "n_eval": n_eval, "device": device or "cpu"}
        t0 = time.perf_counter()
        history, _ = train_variant(cfg, what, [ClampIntervention(clamps)] if clamps else [], eval_fn, eval_steps,
                                   device=device, progress=progress)
        seconds = time.perf_counter() - t0
        curve, head_rows = _rows(entry.label, history)
        curves += curve
        heads += head_rows
        if entry.label == NONE:
            final_prev = [r for r in head_rows if r["step"] == cfg.steps and r["layer"] == 0]
            prev_head = int(max(final_prev, key=lambda r: r["previous_token"])["head"])
        step, drop = phase_change([c["step"] for c in curve], [c["loss_repeated_half"] for c in curve], min_drop)
        final = curve[-1]
        last_layer = [r for r in head_rows if r["step"] == cfg.steps and r["layer"] == cfg.n_layers - 1]
        best = max(last_layer, key=lambda r: r["induction"])
        rows.append({"clamp": entry.label, "resolved": " + ".join(c.text() for c in clamps) or NONE,
                     "phase_change_step": step, "steepest_drop": drop,
                     "final_loss_repeated_half": final["loss_repeated_half"],
                     "final_loss_first_half": final["loss_first_half"],
                     "final_induction_score": best["induction"], "best_induction_head": best["head_name"],
                     "seconds": seconds})
    table = pd.DataFrame(rows)
    table["phase_change_step"] = table["phase_change_step"].astype("Int64")
    return {"clamps": table, "curves": pd.DataFrame(curves), "heads": pd.DataFrame(heads), "prev_head": prev_head,
            "eval_steps": eval_steps}
