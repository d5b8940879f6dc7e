"""Plotly figures of a formation run: per clamp, the loss curves, the best induction score and the best layer-0
previous-token score against the training step (the phase change marked).

Each takes the run's ``curves`` table (one row per clamp and evaluation) and its ``clamps`` table.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = ["loss_figure", "score_figure"]


def _color(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def loss_figure(curves: pd.DataFrame, clamps: pd.DataFrame) -> go.Figure:
    """Repeated-half loss (solid) and first-half loss (dotted) per clamp; a marker at each phase change."""
    fig = go.Figure()
    changes = dict(zip(clamps["clamp"], clamps["phase_change_step"], strict=True))
    for i, (label, part) in enumerate(curves.groupby("clamp", sort=False)):
        fig.add_scatter(x=part["step"], y=part["loss_repeated_half"], mode="lines", name=f"{label}: repeated half",
                        line={"color": _color(i)}, legendgroup=str(label))
        fig.add_scatter(x=part["step"], y=part["loss_first_half"], mode="lines", name=f"{label}: first half",
                        line={"color": _color(i), "dash": "dot", "width": 1}, legendgroup=str(label), showlegend=False)
        step = changes.get(label)
        if step is not None and not pd.isna(step):
            y = part.loc[part["step"] == step, "loss_repeated_half"]
            fig.add_scatter(x=[step], y=y, mode="markers", marker={"color": _color(i), "size": 11, "symbol": "x"},
                            name=f"{label}: phase change at {int(step)}", legendgroup=str(label))
    fig.update_layout(title="Loss during training under each clamp (dotted: first half)", xaxis_title="step",
                      yaxis_title="loss (nats / token)", height=460, legend={"font": {"size": 10}})
    return fig


def score_figure(curves: pd.DataFrame, column: str = "best_induction") -> go.Figure:
    """The best last-layer induction score (``best_induction``) or layer-0 previous-token score
    (``best_previous_token_l0``) per clamp against the step."""
    fig = go.Figure()
    for i, (label, part) in enumerate(curves.groupby("clamp", sort=False)):
        fig.add_scatter(x=part["step"], y=part[column], mode="lines", name=str(label), line={"color": _color(i)})
    what = "best last-layer induction score" if column == "best_induction" else "best layer-0 previous-token score"
    fig.update_layout(title=f"{what[0].upper()}{what[1:]} under each clamp", xaxis_title="step",
                      yaxis_title="attention", yaxis_range=[0, 1], height=420)
    return fig
