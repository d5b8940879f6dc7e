"""Fits, predictor scores and summary of per-checkpoint statistics: the computed part of a ``dynamics`` run (stored by
:data:`probes.dynamics_analysis.DYNAMICS`), for a zoo family or member, or any model's saved checkpoints
(:mod:`probes.dynamics_external`).

Run kind ``dynamics``, model ``toy/<family or member>`` (or the checkpoint source); tables:
- ``statistics``: per (member, step, layer): ``massive_ratio``, ``top1``, ``median``, ``mlp_active``;
- ``fits``: per (member, layer, statistic): ``A, lam, gamma, t0, K, r2, t_peak, aic, aic_step, r2_step, n, preferred``;
- ``predictor``: per (model, target): leave-one-model-out ``r2_lomo`` (absent with fewer than three members).
Summary: members, checkpoints, mean / min R^2 of each statistic's fits, how many layers prefer the step model.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from probes.dynamics import (
    STATISTICS,
    check_checkpoints,
    fit_table,
    member_config,
    member_statistics,
    resolve_members,
)
from probes.dynamics_predict import MIN_MEMBERS, predictor_scores


def summarise(stats: pd.DataFrame, configs: dict[str, dict], target: str) -> dict[str, Any]:
    """Fits, predictor scores and summary from per-checkpoint ``stats`` (as from :func:`member_statistics`).

    ``configs`` maps each member to its config (``d_model, n_layers, n_heads, d_mlp``). Returns a dict with the
    tables ``statistics``, ``fits``, ``predictor`` (None with fewer than three members), ``summary`` and ``configs``.
    """
    fits = pd.concat([fit_table(stats, s) for s in STATISTICS], ignore_index=True)
    return _finish(stats, fits, configs, target)


def combine(results: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """Several :func:`summarise` results (e.g. one per member) as one, with the predictor across all their members."""
    stats = pd.concat([r["statistics"] for r in results], ignore_index=True)
    fits = pd.concat([r["fits"] for r in results], ignore_index=True)
    configs = {k: v for r in results for k, v in r["configs"].items()}
    return _finish(stats, fits, configs, target)


def _finish(stats: pd.DataFrame, fits: pd.DataFrame, configs: dict[str, dict], target: str) -> dict[str, Any]:
    members = list(configs)
    predictor = None
    if len(members) >= MIN_MEMBERS:
        predictor = predictor_scores(fits[fits["statistic"] == "massive_ratio"].reset_index(drop=True), configs)
    summary: dict[str, Any] = {"target": target, "members": members,
                               "checkpoints": {n: int(stats.loc[stats["member"] == n, "step"].nunique()) for n in members}}
    for s in STATISTICS:
        f = fits[fits["statistic"] == s]
        summary[f"{s}_r2_mean"] = float(f["r2"].mean())
        summary[f"{s}_r2_min"] = float(f["r2"].min())
        summary[f"{s}_prefers_step"] = int((f["preferred"] == "step").sum())
        summary[f"{s}_layers"] = len(f)
    last = stats[stats["step"] == stats.groupby("member")["step"].transform("max")]
    summary["final_massive_ratio_max"] = float(last["massive_ratio"].max())
    if predictor is not None:
        best = predictor.sort_values("r2_lomo", ascending=False).groupby("target").head(1)
        summary["predictor_best_r2"] = {r.target: {"model": r.model, "r2_lomo": r.r2_lomo} for r in best.itertuples()}
    else:
        summary["predictor"] = f"skipped: needs at least {MIN_MEMBERS} members"
    return {"statistics": stats, "fits": fits, "predictor": predictor, "summary": summary, "configs": configs}


def analyse(target: str, n_sequences: int = 10, progress: bool = True) -> dict[str, Any]:
    """Statistics, fits and predictor scores for ``target`` (family or member; built on first use)."""
    from workbench import zoo

    members = resolve_members(target)
    for name in members:
        zoo.build(name, progress=progress)
        check_checkpoints(name)
    stats = pd.concat([member_statistics(n, n_sequences, progress=progress) for n in members], ignore_index=True)
    return summarise(stats, {n: member_config(n) for n in members}, target)
