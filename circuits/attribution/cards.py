"""Feature cards as a reader sees them: which stored card a graph node shows, its contexts as highlighted HTML, and
its activation histogram as a plotly figure (the cards themselves: :mod:`circuits.attribution.features`)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from workbench.nodes import NodeIdError, parse

__all__ = ["card_for", "cards_by_feature", "context_html", "histogram_figure"]


def cards_by_feature(doc: Mapping[str, Any] | None) -> dict[tuple[int, int], dict[str, Any]]:
    """(layer, feature) -> card, from a run's ``features`` JSON (``{"features": [card, ...]}``; None: no cards)."""
    if not doc:
        return {}
    return {(int(c["layer"]), int(c["feature"])): c for c in doc.get("features", [])}


def card_for(node_id: str, cards: Mapping[tuple[int, int], dict[str, Any]]) -> dict[str, Any] | None:
    """The card of a feature node id (``tc1.f12@3``); None for other nodes or a feature without a card."""
    try:
        node = parse(node_id)
    except NodeIdError:
        return None
    if node.kind != "feature" or node.layer is None or node.feature is None:
        return None
    return cards.get((int(node.layer), int(node.feature)))


def context_html(example: Mapping[str, Any], act_max: float) -> str:
    """One example's tokens as inline spans shaded by the feature's activation (orange, relative to ``act_max``),
    the activating token underlined; each span's title is its activation."""
    spans = []
    for j, (token, act) in enumerate(zip(example["tokens"], example["tokens_acts_list"], strict=True)):
        alpha = min(max(act / act_max, 0.0), 1.0) if act_max > 0 else 0.0
        mark = "border-bottom: 2px solid black; " if j == example["train_token_ind"] else ""
        spans.append(f'<span title="{act:.4g}" style="background: rgba(242,142,43,{alpha:.2f}); {mark}'
                     f'padding: 1px 0; white-space: pre">{html.escape(token)}</span>')
    return '<div style="font-family: monospace; line-height: 1.9">' + "".join(spans) + "</div>"


def histogram_figure(card: Mapping[str, Any], activation: float | None = None) -> go.Figure:
    """The card's histogram of positive activations (equal bins of (0, act_max]), with the node's own activation
    marked when given."""
    counts = list(card["histogram"])
    width = float(card["act_max"]) / max(len(counts), 1)
    centres = [(j + 0.5) * width for j in range(len(counts))]
    fig = go.Figure(go.Bar(x=centres, y=counts, width=width, marker_color="#f28e2b",
                           hovertemplate="activation %{x:.3g}: %{y} tokens<extra></extra>"))
    if activation is not None:
        fig.add_vline(x=activation, line_dash="dash", line_color="#4e79a7", annotation_text="this node")
    fig.update_layout(height=220, margin={"l": 40, "r": 10, "t": 30, "b": 30}, bargap=0.05,
                      title=f"activations > 0 ({card['n_positive']} of {card['n_tokens']} tokens)",
                      xaxis_title="activation", yaxis_title="tokens")
    return fig
