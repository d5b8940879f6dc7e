"""Plotly figures of a benchmark run: ROC curves, faithfulness versus circuit size, agreement between methods, and
the top-k circuits of every method side by side (edges down, methods across, the true edges marked).

Each takes the run's tables (pandas DataFrames, see :mod:`circuits.benchmark.run`) and one ground-truth model's name.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

__all__ = ["agreement_figure", "curve_figure", "roc_figure", "side_by_side_figure"]


def roc_figure(roc: pd.DataFrame, model: str, level: str = "edge") -> go.Figure:
    """ROC of every method on ``model`` at ``level`` ("edge" or "node"), with the chance diagonal."""
    fig = go.Figure()
    rows = roc[(roc["model"] == model) & (roc["level"] == level)]
    for method, part in rows.groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=part["fpr"], y=part["tpr"], mode="lines", name=str(method)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"}))
    fig.update_layout(title=f"{model}: {level} ROC", xaxis_title="false-positive rate",
                      yaxis_title="true-positive rate", height=420)
    return fig


def curve_figure(curves: pd.DataFrame, model: str) -> go.Figure:
    """Faithfulness of each method's top-n edge circuit versus the fraction of edges kept (MIB's curve; log x)."""
    fig = go.Figure()
    for method, part in curves[curves["model"] == model].groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=part["fraction"], y=part["faithfulness"], mode="lines+markers", name=str(method),
                                 customdata=part["size"], hovertemplate="%{x:.3f} of edges (%{customdata})"
                                 "<br>faithfulness %{y:.3f}"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_layout(title=f"{model}: faithfulness versus circuit size", xaxis_title="fraction of edges kept",
                      yaxis_title="faithfulness", xaxis_type="log", height=420)
    return fig


def agreement_figure(agreement: pd.DataFrame, model: str) -> go.Figure:
    """Jaccard of the methods' top-k edge sets (k = the true circuit's edge count) as a heatmap."""
    rows = agreement[agreement["model"] == model]
    grid = rows.pivot(index="a", columns="b", values="jaccard")
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), zmin=0, zmax=1,
                               colorscale="Blues", text=grid.round(2).values, texttemplate="%{text}"))
    fig.update_layout(title=f"{model}: agreement of the top-k edges (Jaccard)", height=420)
    return fig


def side_by_side_figure(top: pd.DataFrame, model: str) -> go.Figure:
    """Which edges each method puts in its top-k (k = the true edge count): edges down (true ones first and
    marked), methods across; a cell's shade is the edge's rank in that method (darker: higher)."""
    rows = top[top["model"] == model]
    truth = rows.groupby("edge")["true"].first()
    edges = sorted(truth.index, key=lambda e: (not truth[e], e))
    methods = list(dict.fromkeys(rows["method"]))
    k = max(int(truth.sum()), 1)
    rank = rows.pivot(index="edge", columns="method", values="rank").reindex(index=edges, columns=methods)
    shade = rank.map(lambda r: max(0.0, 1 - (r - 1) / k) if pd.notna(r) and r <= k else 0.0)
    labels = [f"{'★ ' if truth[e] else ''}{e}" for e in edges]
    fig = go.Figure(go.Heatmap(z=shade.values, x=methods, y=labels, zmin=0, zmax=1, colorscale="Greens",
                               showscale=False, text=rank.values, hovertemplate="%{y} · %{x}: rank %{text}"))
    fig.update_layout(title=f"{model}: each method's top-{k} edges (★ true edges)", yaxis_autorange="reversed",
                      height=max(320, 18 * len(edges) + 120))
    return fig
