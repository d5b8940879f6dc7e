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
    """Bar chart of one latent's nonzero activations by log10 bin (counts [bins], edges [bins + 1] in log10).

    The bars are laid out in log10 units (each spans its bin's two edges, so every bin has the same visible width)
    and the axis is labelled with the activation values (``10^edge``)."""
    e = edges.double().numpy()
    centers, widths = (e[:-1] + e[1:]) / 2, np.diff(e)
    bounds = np.stack([10 ** e[:-1], 10 ** e[1:]], 1)
    fig = go.Figure(go.Bar(x=centers, y=counts.numpy(), width=widths, customdata=bounds,
                           hovertemplate="activation %{customdata[0]:.3g} to %{customdata[1]:.3g}<br>%{y} tokens"
                                         "<extra></extra>"))
    ticks = np.arange(np.ceil(e[0]), np.floor(e[-1]) + 1)
    fig.update_xaxes(title="activation (log scale)", tickvals=ticks, ticktext=[f"{10 ** t:g}" for t in ticks],
                     range=[e[0], e[-1]])
    fig.update_layout(title=f"Latent {latent}: activation histogram", yaxis_title="tokens", height=300, bargap=0)
    return fig


def training_figure(history: pd.DataFrame, column: str = "mse") -> go.Figure:
    """Training curves of ``column`` (mse, l0, dead ...) per dictionary label."""
    fig = go.Figure()
    for label, df in history.groupby("label"):
        if column in df:
            fig.add_trace(go.Scatter(x=df["step"], y=df[column], mode="lines", name=str(label)))
    fig.update_layout(title=f"Training: {column}", xaxis_title="step", yaxis_title=column, height=320)
    return fig


def context_html(tokens: list[str], highlight: int, activation: float) -> str:
    """One top-activating context as HTML: the tokens as text (newlines shown as ⏎), the activating token marked
    with its activation in a tooltip."""
    import html

    parts = []
    for i, t in enumerate(tokens):
        text = html.escape(str(t)).replace("\n", "⏎")
        if i == highlight:
            text = f"<mark title='{activation:.3f}'><b>{text}</b></mark>"
        parts.append(text)
    return "".join(parts)


def contexts_html(contexts: pd.DataFrame, latent: int, limit: int = 10) -> str:
    """The top-activating contexts of ``latent`` from a run's ``contexts-<i>`` table (latent, rank, activation,
    tokens, highlight) as one HTML block, strongest first; a notebook shows it with ``IPython.display.HTML``."""
    rows = contexts[contexts["latent"] == latent].sort_values("rank").head(limit)
    if rows.empty:
        return f"<p>Latent {latent} was not active on the scanned tokens.</p>"
    lines = [f"<div><code>{float(r['activation']):.3f}</code> "
             f"{context_html(list(r['tokens']), int(r['highlight']), float(r['activation']))}</div>"
             for _, r in rows.iterrows()]
    return "\n".join(lines)
