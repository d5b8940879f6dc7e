"""Head-score figures shared by the circuit analyses (CD-T and patching): a [layers, heads] heatmap with integer
ticks and diverging colours around zero, and per-position scores as a [heads of all layers, positions] heatmap with
the prompt's tokens (as text) along the x-axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def head_scores_figure(scores: np.ndarray, title: str = "Head scores", colorbar: str = "score") -> go.Figure:
    """A heatmap of ``scores`` [layers, heads] (layer 0 at the bottom); NaN cells stay blank."""
    matrix = np.asarray(scores, dtype=float)
    finite = matrix[np.isfinite(matrix)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    n_layers, n_heads = matrix.shape
    fig = go.Figure(go.Heatmap(z=matrix, x=list(range(n_heads)), y=list(range(n_layers)), colorscale="RdBu", zmid=0,
                               zmin=-bound, zmax=bound, colorbar={"title": colorbar},
                               hovertemplate="L%{y}.H%{x}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=max(260, 40 * n_layers + 120),
                      margin={"l": 50, "r": 10, "t": 40, "b": 40})
    fig.update_xaxes(tickmode="linear", dtick=1)
    fig.update_yaxes(tickmode="linear", dtick=1)
    return fig


def head_position_figure(scores: np.ndarray, tokens: Sequence[str] | None = None,
                         title: str = "Head scores by position", colorbar: str = "score") -> go.Figure:
    """A heatmap of ``scores`` [layers, heads, positions]: one row per head (``L{l}.H{h}``), one column per position,
    labelled by its token when ``tokens`` (one string per position) is given."""
    t = np.asarray(scores, dtype=float)
    n_layers, n_heads, n_pos = t.shape
    rows = [f"L{layer}.H{h}" for layer in range(n_layers) for h in range(n_heads)]
    labels = [f"{p}:{tokens[p]!r}" if tokens is not None and p < len(tokens) else str(p) for p in range(n_pos)]
    finite = t[np.isfinite(t)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    fig = go.Figure(go.Heatmap(z=t.reshape(n_layers * n_heads, n_pos), x=labels, y=rows, colorscale="RdBu", zmid=0,
                               zmin=-bound, zmax=bound, colorbar={"title": colorbar},
                               hovertemplate="%{y} at %{x}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="position (token)", yaxis_title="head",
                      height=max(300, 18 * len(rows) + 140), margin={"l": 70, "r": 10, "t": 40, "b": 80})
    return fig
