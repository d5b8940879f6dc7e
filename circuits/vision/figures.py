"""Plotly figures of a ``vit`` run (they take its tables and tensors, see :mod:`circuits.vision.analysis`)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

__all__ = ["examples_figure", "lengths_figure", "pruning_figure", "sparsity_figure"]


def lengths_figure(lengths: pd.DataFrame, title: str = "Class-token logits by path length") -> go.Figure:
    """Bars: each length's mean contribution to the true class's logit; markers: the accuracy of the paths up to each
    length; dotted line: the number of paths C(2L, k) (log axis on the right)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = lengths["length"].astype(str)
    fig.add_bar(x=x, y=lengths["true_logit"], name="contribution to the true-class logit", marker_color="#1f77b4")
    fig.add_bar(x=x, y=lengths["logit_norm"], name="centred logit norm", marker_color="#ff7f0e", visible="legendonly")
    fig.add_scatter(x=x, y=lengths["n_paths"], name="number of paths C(2L, k)", mode="lines+markers",
                    line={"color": "#7f7f7f", "dash": "dot"}, secondary_y=True)
    fig.update_yaxes(title_text="logit", secondary_y=False)
    fig.update_yaxes(title_text="paths", type="log", secondary_y=True)
    fig.update_layout(title=title, xaxis_title="path length (sublayers)", barmode="group", height=420)
    return fig


def pruning_figure(pruning: pd.DataFrame, title: str = "Accuracy with path lengths pruned or rescaled") -> go.Figure:
    """Horizontal bars: test accuracy of each pruning / EnsembleScale row (held-out accuracy as markers), with the
    full model's accuracy as a line."""
    full = float(pruning["accuracy"].iloc[0])
    colours = ["#2ca02c" if a > full else "#d62728" if a < full else "#7f7f7f" for a in pruning["accuracy"]]
    fig = go.Figure(go.Bar(y=pruning["method"], x=pruning["accuracy"], orientation="h", marker_color=colours,
                           name="accuracy", customdata=pruning["dropped"],
                           hovertemplate="%{y}<br>dropped: %{customdata}<br>accuracy %{x:.4f}<extra></extra>"))
    fig.add_scatter(y=pruning["method"], x=pruning["heldout_accuracy"], mode="markers", name="held-out accuracy",
                    marker={"color": "black", "symbol": "diamond", "size": 7})
    fig.add_vline(x=full, line_dash="dot", annotation_text="full model")
    fig.update_layout(title=title, xaxis_title="accuracy", yaxis={"autorange": "reversed"},
                      height=max(360, 24 * len(pruning) + 140))
    return fig


def sparsity_figure(sparsity: pd.DataFrame, title: str = "Active MLP neurons per layer") -> go.Figure:
    """Lines over layers: the active fraction (nonzero for ReLU, pre-activation > 0 for GELU), the nonzero fraction,
    and the fraction with |a| > tau for each tau."""
    fig = go.Figure()
    x = sparsity["layer"]
    fig.add_scatter(x=x, y=sparsity["active"], mode="lines+markers", name="active", line={"width": 3})
    fig.add_scatter(x=x, y=sparsity["nonzero"], mode="lines+markers", name="nonzero", line={"dash": "dot"})
    for col in [c for c in sparsity.columns if c.startswith("above_")]:
        fig.add_scatter(x=x, y=sparsity[col], mode="lines+markers", name=f"|a| > {col[6:]}")
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="fraction of (neuron, token) pairs",
                      yaxis={"range": [0, 1.02]}, xaxis={"dtick": 1}, height=380)
    return fig


def examples_figure(examples: dict[str, torch.Tensor], title: str = "Digits and the model's predictions") -> go.Figure:
    """One heatmap per image (``images`` [n, S, S]) titled with its label, the prediction and its probability."""
    images = examples["images"]
    n = int(images.shape[0])
    if n == 0:
        return go.Figure(layout={"title": title + " (none drawn)"})
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    labels, preds, probs = examples["labels"], examples["predictions"], examples["probabilities"]
    titles = [f"{'✓' if int(labels[i]) == int(preds[i]) else '✗'} label {int(labels[i])} → {int(preds[i])} "
              f"({float(probs[i]):.2f})" for i in range(n)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.12)
    for i in range(n):
        fig.add_trace(go.Heatmap(z=images[i].flip(0).tolist(), colorscale="Greys", reversescale=False,
                                 showscale=False, zmin=-1, zmax=1), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor="x")
    fig.update_layout(title=title, height=190 * rows + 80)
    return fig
