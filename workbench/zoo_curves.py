"""Training curves of zoo members: stored as ``zoo-training`` runs and drawn as plotly figures.

A ``zoo-training`` run holds two tables: ``loss`` (one row per update: ``step``, ``loss``, ``lr``) and ``eval``
(one row per checkpoint: ``step`` and the member's evaluation numbers; for the checkpoint families
``train_loss`` and ``heldout_loss``, mean next-token loss in nats on fixed windows of each split).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbench import zoo
from workbench.store import RunInfo, Store


def training_tables(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(loss, eval)`` tables of built member ``name`` (read from its manifest)."""
    if not zoo.is_built(name):
        raise LookupError(f"toy/{name} is not built; run `workbench zoo build {name}`")
    history = zoo.manifest(name)["history"]
    losses = pd.DataFrame([h for h in history if "loss" in h], columns=["step", "loss", "lr"])
    evals = pd.DataFrame([{"step": h["step"], **h["eval"]} for h in history if "eval" in h])
    return losses, evals


def store_training_run(name: str, store: Store | None = None) -> RunInfo:
    """Store the training curves of built member ``name`` as a ``zoo-training`` run (tables ``loss``, ``eval``)."""
    store = store or Store()
    info = zoo.manifest(name)
    losses, evals = training_tables(name)
    with store.create("zoo-training", model=f"toy/{name}", params={"config": info["config"]}) as run:
        run.save_table("loss", losses)
        run.save_table("eval", evals)
        run.summary["final_loss"] = info["final_loss"]
        run.summary["checkpoints"] = len(info["steps"])
        run.summary["seconds"] = info.get("seconds_last_session")
        for key, value in (info.get("final_eval") or {}).items():
            run.summary[f"final_{key}"] = value
    return run.info


def training_figure(curves: dict[str, tuple[pd.DataFrame, pd.DataFrame]], smooth: int = 20) -> Any:
    """A plotly figure: per member, the training loss (moving average over ``smooth`` updates) and the per-checkpoint
    train / held-out losses, against the step on a log axis.

    ``curves`` maps a member name to its ``(loss, eval)`` tables.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    for i, (name, (losses, evals)) in enumerate(curves.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        if len(losses):
            smoothed = losses["loss"].rolling(smooth, min_periods=1).mean()
            fig.add_scatter(x=losses["step"], y=smoothed, mode="lines", name=f"{name} train (updates)",
                            line={"color": color, "width": 1}, opacity=0.5, legendgroup=name)
        for col, dash in (("train_loss", "dot"), ("heldout_loss", "solid")):
            if col in evals:
                fig.add_scatter(x=evals["step"].clip(lower=1), y=evals[col], mode="lines+markers",
                                name=f"{name} {col.replace('_', ' ')}", line={"color": color, "dash": dash},
                                legendgroup=name)
    fig.update_xaxes(type="log", title="step (step 0 drawn at 1)")
    fig.update_yaxes(title="loss (nats / token)")
    fig.update_layout(title="Zoo training curves", legend={"font": {"size": 10}})
    return fig
