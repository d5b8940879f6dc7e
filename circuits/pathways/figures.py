"""Plotly figures of a pathways (SSA) run: held-out loss during training (dense against SSA), the loss of the
sub-model ensemble against its size K (dense inference as lines), and the attention cost of each training.

Each takes one of the run's tables (see :mod:`circuits.pathways.run`).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = ["cost_figure", "curve_figure", "ensemble_figure"]

_COLORS = {"dense": qualitative.Plotly[0], "ssa": qualitative.Plotly[1]}


def curve_figure(curves: pd.DataFrame, column: str = "loss") -> go.Figure:
    """Held-out ``column`` (dense inference) against the step, one line per training."""
    fig = go.Figure()
    for name, part in curves.groupby("training", sort=False):
        fig.add_scatter(x=part["step"], y=part[column], mode="lines+markers", name=f"{name} training",
                        line={"color": _COLORS.get(str(name))})
    fig.update_layout(title=f"Held-out {column.replace('_', ' ')} during training (dense inference)",
                      xaxis_title="step", yaxis_title="loss (nats / token)", height=420)
    return fig


def ensemble_figure(losses: pd.DataFrame, column: str = "loss") -> go.Figure:
    """Final held-out ``column`` of the ensemble of K subsampled sub-models against K, per training; dotted lines
    at each training's dense-inference loss."""
    fig = go.Figure()
    for name, part in losses.groupby("training", sort=False):
        color = _COLORS.get(str(name))
        ens = part[part["k"] > 0]
        fig.add_scatter(x=ens["k"], y=ens[column], mode="lines+markers", name=f"{name} training: ensemble of K",
                        line={"color": color})
        dense = part[part["k"] == 0][column]
        if len(dense):
            fig.add_hline(y=float(dense.iloc[0]), line_dash="dot", line_color=color,
                          annotation_text=f"{name} training, dense inference", annotation_font_size=10)
    fig.update_layout(title=f"Sub-model ensemble: held-out {column.replace('_', ' ')} against K", xaxis_title="K",
                      yaxis_title="loss (nats / token)", height=420)
    return fig


def cost_figure(cost: pd.DataFrame) -> go.Figure:
    """Analytic attention FLOPs (score and value matmuls over kept keys) per sequence, dense against SSA."""
    fig = go.Figure(go.Bar(x=cost["training"], y=cost["attention_flops_per_sequence"],
                           marker_color=[_COLORS.get(str(t)) for t in cost["training"]],
                           text=[f"{v:,}" for v in cost["attention_flops_per_sequence"]], textposition="outside"))
    fig.update_layout(title="Attention FLOPs per training sequence (QK^T and AV over kept keys)",
                      yaxis_title="FLOPs", height=380)
    return fig
