"""Plotly figures of cross-layer transcoder runs: per-layer FVU and L0, the source x target decoder-norm map."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots


def layer_bars(layers: pd.DataFrame) -> go.Figure:
    """Two bar charts over the layers: FVU of each MLP output and L0 of each layer's features.

    layers: the ``layers`` table (columns layer, fvu, l0, dead_fraction)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("FVU per layer (MLP output)", "L0 per layer"))
    names = [f"L{int(v)}" for v in layers["layer"]]
    fig.add_trace(go.Bar(x=names, y=layers["fvu"], name="FVU", hovertemplate="%{x}: FVU %{y:.4f}<extra></extra>"),
                  1, 1)
    fig.add_trace(go.Bar(x=names, y=layers["l0"], name="L0", customdata=layers["dead_fraction"],
                         hovertemplate="%{x}: L0 %{y:.2f}<br>dead %{customdata:.1%}<extra></extra>"), 1, 2)
    fig.update_layout(height=360, showlegend=False, title="Cross-layer transcoder: reconstruction and sparsity")
    return fig


def decoder_norm_heatmap(norms: torch.Tensor) -> go.Figure:
    """Heatmap of the mean decoder norm from each source layer's features (rows) into each target layer's MLP
    output (columns); norms [L, L], zero below the diagonal (a feature never writes to an earlier layer)."""
    L = norms.shape[0]
    z = norms.float().numpy().copy()
    for s in range(L):
        z[s, :s] = float("nan")
    labels = [f"L{i}" for i in range(L)]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Viridis", colorbar=dict(title="mean ||W_dec||"),
                               hovertemplate="features of %{y} -> MLP out %{x}: %{z:.4f}<extra></extra>"))
    fig.update_xaxes(title="target layer (MLP output written)")
    fig.update_yaxes(title="source layer (features read)", autorange="reversed")
    fig.update_layout(title="How much each layer's features write to later layers", height=380)
    return fig
