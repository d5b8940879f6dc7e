"""Training curves of zoo members: stored as ``zoo-training`` runs (:data:`ZOO_TRAINING`, behind the analysis
contract) and drawn as plotly figures.

A ``zoo-training`` run holds two tables: ``loss`` (one row per update: ``step``, ``loss``, ``lr``) and ``eval``
(one row per checkpoint: ``step`` and the member's evaluation numbers; for the checkpoint families
``train_loss`` and ``heldout_loss``, mean next-token loss in nats on fixed windows of each split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.analysis import Analysis, Config, Result, option

if TYPE_CHECKING:
    import pandas as pd

    from workbench.store import RunInfo, Store


def training_tables(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(loss, eval)`` tables of built member ``name`` (read from its manifest)."""
    import pandas as pd

    from workbench import zoo

    if not zoo.is_built(name):
        raise LookupError(f"toy/{name} is not built; run `workbench zoo build {name}`")
    history = zoo.manifest(name)["history"]
    losses = pd.DataFrame([h for h in history if "loss" in h], columns=["step", "loss", "lr"])
    evals = pd.DataFrame([{"step": h["step"], **h["eval"]} for h in history if "eval" in h])
    return losses, evals


@dataclass
class ZooTrainingConfig(Config):
    """Options of ``workbench zoo-training``."""

    name: str = option("induction-2l", "zoo member (see `workbench zoo list`); built first when it is not")


def _compute(model: Any, cfg: ZooTrainingConfig, progress: bool) -> Result:
    import torch

    from workbench import zoo

    zoo.get(cfg.name)
    zoo.build(cfg.name, progress=progress)
    info = zoo.manifest(cfg.name)
    losses, evals = training_tables(cfg.name)
    out = Result(tables={"loss": losses, "eval": evals}, params={"config": info["config"]})
    report = info.get("report", {})
    if "induction_scores" in report:  # the induction toy's head scores (other members report other numbers)
        out.tensors["heads"] = {"induction_scores": torch.tensor(report["induction_scores"]),
                                "previous_token_scores": torch.tensor(report["previous_token_scores"])}
    if report:
        out.summary.update({k: v for k, v in report.items() if not isinstance(v, list) or k.startswith("best")})
    out.summary.update(final_loss=info["final_loss"], checkpoints=len(info["steps"]),
                       seconds=info.get("seconds_last_session"))
    for key, value in (info.get("final_eval") or {}).items():
        out.summary[f"final_{key}"] = value
    out.lines = [f"toy/{cfg.name}: final loss {info['final_loss']:.4f}, {len(info['steps'])} checkpoints"]
    return out


def store_training_run(name: str, store: Store | None = None) -> RunInfo:
    """Store the training curves of member ``name`` as a ``zoo-training`` run (tables ``loss``, ``eval``; built
    first when it is not)."""
    return ZOO_TRAINING.launch(None, ZooTrainingConfig(name=name), store=store)[0]


def _figures(run: Any) -> dict[str, Any]:
    name = (run.model or "member").removeprefix("toy/")
    return {"training": training_figure({name: (run.table("loss"), run.table("eval"))})}


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


ZOO_TRAINING = Analysis(
    kind="zoo-training", verb="zoo-training", config=ZooTrainingConfig, compute=_compute, figures=_figures,
    help="store a zoo member's training curves (loss per update, evaluation per checkpoint) as a run",
    demo=ZooTrainingConfig(name="induction-2l"), demo_model=None, needs_model=False,
    model_of=lambda cfg: f"toy/{cfg.name}")
