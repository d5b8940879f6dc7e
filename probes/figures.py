"""Plotly figures of the probes' runs: sparsity, thresholds, massive activations, linear probes.

Every function takes the tables / tensors a run stores (see :mod:`probes.demos`) and returns a ``plotly`` Figure.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
import torch

_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=50))


def sparsity_layers_figure(layers: pd.DataFrame, column: str = "fraction_nonzero") -> go.Figure:
    """Fraction of active MLP units by layer, one line per split. layers: columns split, layer, ``column``."""
    fig = go.Figure()
    for split, df in layers.groupby("split", sort=False):
        fig.add_scatter(x=df.layer, y=100 * df[column], mode="lines+markers", name=str(split))
    label = {"fraction_nonzero": "% nonzero activations", "fraction_pre_positive": "% pre-activations > 0"}
    fig.update_layout(title=label.get(column, column) + " by layer", xaxis_title="layer",
                      yaxis_title=label.get(column, column), **_LAYOUT)
    return fig


def tau_figure(tau: pd.DataFrame, split: str | None = None) -> go.Figure:
    """Fraction of ``|a| > tau`` by layer, one line per tau. tau: columns split, layer, tau, fraction."""
    df = tau if split is None else tau[tau.split == split]
    fig = go.Figure()
    for t, d in df.groupby("tau"):
        fig.add_scatter(x=d.layer, y=100 * d.fraction, mode="lines+markers", name=f"tau={t:g}")
    fig.update_layout(title="% activations with |a| > tau" + (f" ({split})" if split else ""), xaxis_title="layer",
                      yaxis_title="% above tau", **_LAYOUT)
    return fig


def firing_histogram_figure(counts: torch.Tensor, edges: torch.Tensor, n_dead: int | None = None) -> go.Figure:
    """Histogram of log10 per-neuron firing frequency: counts [bins], edges [bins + 1]."""
    centers = ((edges[1:] + edges[:-1]) / 2).tolist()
    fig = go.Figure(go.Bar(x=centers, y=counts.tolist(), width=float(edges[1] - edges[0])))
    title = "Neurons by firing frequency" + (f" ({n_dead} dead, in the leftmost bin)" if n_dead else "")
    fig.update_layout(title=title, xaxis_title="log10 firing frequency", yaxis_title="neurons", **_LAYOUT)
    return fig


def thresholds_figure(thresholds: pd.DataFrame) -> go.Figure:
    """Per layer, the fraction of activations left active at the performance-aware cutoff, per method."""
    df = thresholds[thresholds.layer >= 0]
    fig = go.Figure()
    for method, d in df.groupby("method"):
        fig.add_scatter(x=d.layer, y=100 * d.active_fraction, mode="lines+markers", name=str(method),
                        customdata=d[["quantile", "cutoff", "rise"]].values,
                        hovertemplate="layer %{x}<br>active %{y:.1f}%<br>q=%{customdata[0]}<br>"
                                      "cutoff %{customdata[1]:.4g}<br>loss rise %{customdata[2]:.3%}")
    fig.update_layout(title="Active fraction at the largest cutoff within the loss budget", xaxis_title="layer",
                      yaxis_title="% active", **_LAYOUT)
    return fig


def topk_figure(topk: pd.DataFrame) -> go.Figure:
    """Held-out loss against k (top-k activations kept per token and layer). topk: columns k, loss, clean_loss."""
    fig = go.Figure(go.Scatter(x=topk.k, y=topk.loss, mode="lines+markers", name="top-k"))
    fig.add_hline(y=float(topk.clean_loss.iloc[0]), line_dash="dash", annotation_text="clean")
    fig.update_layout(title="Held-out loss versus top-k", xaxis_title="k (units kept per token)", xaxis_type="log",
                      yaxis_title="loss (nats)", **_LAYOUT)
    return fig


def massive_layers_figure(layers: pd.DataFrame) -> go.Figure:
    """Top-1/2/3 and median |h| by layer (log scale). layers: columns layer, top1, top2, top3, median."""
    fig = go.Figure()
    for col in ("top1", "top2", "top3", "median"):
        fig.add_scatter(x=layers.layer, y=layers[col], mode="lines+markers", name=col)
    fig.update_layout(title="Residual-stream magnitudes by layer", xaxis_title="layer", yaxis_title="|h|",
                      yaxis_type="log", **_LAYOUT)
    return fig


def massive_heatmap_figure(max_abs: torch.Tensor, layers: list[int] | None = None, top_dims: int = 0) -> go.Figure:
    """log10 max |h| per layer and dimension: max_abs [L, d_model]; ``top_dims`` > 0 keeps the largest dimensions."""
    values = max_abs.float()
    dims = list(range(values.shape[1]))
    if 0 < top_dims < len(dims):
        dims = sorted(values.amax(0).topk(top_dims).indices.tolist())
        values = values[:, dims]
    z = torch.log10(values.clamp_min(1e-6))
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=[str(d) for d in dims], y=layers or list(range(values.shape[0])),
                               colorbar=dict(title="log10 |h|")))
    fig.update_layout(title="max |h| by layer and dimension", xaxis_title="dimension", yaxis_title="layer",
                      **{**_LAYOUT, "height": 460})
    return fig


def intervention_figure(result: Mapping[str, float]) -> go.Figure:
    """Held-out loss: clean, massive set to zero, set to the mean, random entries zeroed."""
    modes = [m for m in ("clean", "zero", "mean", "random") if f"loss_{m}" in result]
    names = {"clean": "clean", "zero": "massive -> 0", "mean": "massive -> mean", "random": "random -> 0"}
    fig = go.Figure(go.Bar(x=[names[m] for m in modes], y=[result[f"loss_{m}"] for m in modes],
                           text=[f"{result[f'loss_{m}']:.3f}" for m in modes], textposition="outside"))
    fig.update_layout(title="Intervention on massive activations", yaxis_title="held-out loss (nats)", **_LAYOUT)
    return fig


def probe_figure(table: pd.DataFrame) -> go.Figure:
    """Cross-validated probe accuracy by layer with the shuffled-label control and the majority baseline."""
    fig = go.Figure()
    fig.add_scatter(x=table.layer, y=table.accuracy, mode="lines+markers", name="probe",
                    error_y=dict(type="data", array=table.accuracy_std))
    fig.add_scatter(x=table.layer, y=table.control_accuracy, mode="lines+markers", name="shuffled labels",
                    error_y=dict(type="data", array=table.control_std))
    fig.add_hline(y=float(table.majority.iloc[0]), line_dash="dot", annotation_text="majority class")
    fig.update_layout(title="Linear probe accuracy by layer (-1 = embedding)", xaxis_title="layer",
                      yaxis_title="accuracy", **_LAYOUT)
    return fig
