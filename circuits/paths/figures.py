"""Plotly figures of a path-ensemble analysis (they take the tables of :mod:`circuits.paths.analysis`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["direct_figure", "length_profile_figure", "lesion_figure", "loss_by_length_figure"]


def length_profile_figure(lengths: pd.DataFrame, title: str = "Contribution by path length") -> go.Figure:
    """Bars: each length's contribution to the target and its share of the logit norm; line: the binomial path count
    (log axis on the right)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = lengths["length"].astype(str)
    fig.add_bar(x=x, y=lengths["target"], name="contribution to target", marker_color="#1f77b4")
    fig.add_bar(x=x, y=lengths["norm_share"], name="share of logit norm", marker_color="#ff7f0e", visible="legendonly")
    fig.add_scatter(x=x, y=lengths["n_paths"].clip(lower=1), name="number of paths C(n, k)", mode="lines+markers",
                    line={"color": "#7f7f7f", "dash": "dot"}, secondary_y=True)
    fig.update_yaxes(title_text="contribution (logits)", secondary_y=False)
    fig.update_yaxes(title_text="paths", type="log", secondary_y=True)
    fig.update_layout(title=title, xaxis_title="path length (sublayers)", barmode="group", height=420)
    return fig


def loss_by_length_figure(lengths: pd.DataFrame, title: str = "Loss with the paths up to each length") -> go.Figure:
    """The next-token loss when only paths up to length k feed the logits (the last point is the clean loss)."""
    fig = go.Figure(go.Scatter(x=lengths["length"].astype(str), y=lengths["cumulative_loss"], mode="lines+markers",
                               name="loss (paths up to length)"))
    fig.add_hline(y=float(lengths["cumulative_loss"].iloc[-1]), line_dash="dot", annotation_text="clean")
    fig.update_layout(title=title, xaxis_title="maximum path length", yaxis_title="loss (nats)", height=380)
    return fig


def direct_figure(direct: pd.DataFrame, title: str = "Direct (length-1) attribution") -> go.Figure:
    """Heatmap layer x component (heads, then MLP, then the sublayers' biases) of the length-1 scores."""
    df = direct.copy()
    df["column"] = [f"H{int(h)}" if k == "head" else k for k, h in zip(df["kind"], df["head"].fillna(-1), strict=True)]
    heads = sorted({c for c in df["column"] if c.startswith("H")}, key=lambda c: int(c[1:]))
    columns = heads + [c for c in ("mlp", "bias") if c in set(df["column"])]
    grid = df.pivot_table(index="layer", columns="column", values="score", aggfunc="sum").reindex(columns=columns)
    zmax = float(df["score"].abs().max() or 1.0)
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=columns, y=[f"L{i}" for i in grid.index], colorscale="RdBu",
                               zmid=0, zmin=-zmax, zmax=zmax, colorbar={"title": "score"}))
    fig.update_layout(title=title, xaxis_title="component", yaxis_title="layer", height=max(300, 18 * len(grid) + 120))
    return fig


def lesion_figure(single: pd.DataFrame | None, random: pd.DataFrame | None, title: str = "Lesion studies") -> go.Figure:
    """Left: loss after deleting each single sublayer; right: mean loss (+- std) after deleting k random sublayers,
    with the frozen path ensemble's loss where it was measured."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("delete one sublayer", "delete k random sublayers"))
    if single is not None and len(single):
        colours = ["#1f77b4" if k == "attn" else "#2ca02c" for k in single["kind"]]
        fig.add_bar(x=single["name"], y=single["loss"], marker_color=colours, name="loss", row=1, col=1)
        if "frozen_loss" in single:
            fig.add_scatter(x=single["name"], y=single["frozen_loss"], mode="markers", name="frozen ensemble",
                            marker={"color": "#d62728", "size": 5}, row=1, col=1)
    if random is not None and len(random):
        from circuits.paths.lesion import lesion_curve

        curve = lesion_curve(random)
        fig.add_scatter(x=curve["k"], y=curve["mean"], error_y={"type": "data", "array": curve["std"]},
                        mode="lines+markers", name="mean loss", row=1, col=2)
        if "frozen_mean" in curve:
            fig.add_scatter(x=curve["k"], y=curve["frozen_mean"], mode="lines", line={"dash": "dot"},
                            name="frozen ensemble (mean)", row=1, col=2)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_xaxes(title_text="k deleted", row=1, col=2)
    fig.update_layout(title=title, height=420)
    return fig
