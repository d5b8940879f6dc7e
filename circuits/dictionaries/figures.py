"""Plotly figures of dictionary runs: the sparsity frontier, firing frequencies, a latent's activations, training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch


def frontier_figure(metrics: pd.DataFrame, y: str = "ce_spliced", group: str = "kind") -> go.Figure:
    """L0 (log x) against ``y`` (``ce_spliced``, ``fvu``, ``ce_recovered_zero`` ...), one line per ``group`` value.

    metrics: rows of the ``metrics`` table (columns l0, y, group, label)."""
    fig = go.Figure()
    for name, df in metrics.sort_values("l0").groupby(metrics[group].astype(str) if group in metrics else "all"):
        fig.add_trace(go.Scatter(x=df["l0"], y=df[y], mode="lines+markers", name=str(name), text=df.get("label"),
                                 hovertemplate="%{text}<br>L0 %{x:.2f}<br>" + y + " %{y:.4f}<extra></extra>"))
    if "ce_clean" in metrics and y == "ce_spliced" and len(metrics):
        fig.add_hline(y=float(metrics["ce_clean"].iloc[0]), line_dash="dot", annotation_text="clean")
    fig.update_xaxes(type="log", title="L0 (active latents per token)")
    fig.update_yaxes(title=y)
    fig.update_layout(title=f"Sparsity frontier: L0 vs {y}", height=420)
    return fig


def frequency_histogram(freq: torch.Tensor, title: str = "Latent firing frequencies") -> go.Figure:
    """Histogram of log10 firing frequency [d_sae]; dead latents (frequency 0) are counted in the title."""
    f = freq.float().numpy()
    dead = int((f == 0).sum())
    fig = go.Figure(go.Histogram(x=np.log10(f[f > 0]), nbinsx=50))
    fig.update_layout(title=f"{title} ({dead} dead of {len(f)})", xaxis_title="log10 firing frequency",
                      yaxis_title="latents", height=320)
    return fig


def activation_histogram(counts: torch.Tensor, edges: torch.Tensor, latent: int) -> go.Figure:
    """Bar chart of one latent's nonzero activations by log10 bin (counts [bins], edges [bins + 1] in log10)."""
    centers = ((edges[:-1] + edges[1:]) / 2).numpy()
    fig = go.Figure(go.Bar(x=10 ** centers, y=counts.numpy()))
    fig.update_xaxes(type="log", title="activation")
    fig.update_layout(title=f"Latent {latent}: activation histogram", yaxis_title="tokens", height=300)
    return fig


def training_figure(history: pd.DataFrame, column: str = "mse") -> go.Figure:
    """Training curves of ``column`` (mse, l0, dead ...) per dictionary label."""
    fig = go.Figure()
    for label, df in history.groupby("label"):
        if column in df:
            fig.add_trace(go.Scatter(x=df["step"], y=df[column], mode="lines", name=str(label)))
    fig.update_layout(title=f"Training: {column}", xaxis_title="step", yaxis_title=column, height=320)
    return fig
