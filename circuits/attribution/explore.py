"""The graph explorer's computations: the pruned graph laid out on the prompt (tokens along x, layers up), named
supernodes drawn as one node, the plotly figure, and the nodes a plotly selection picked.

Layout: a node's row is 0 for the token embeddings, ``l + 1`` for the features and error node of layer ``l``,
``n_layers + 1`` for the logits; its column is its prompt position (logits: the last one); the nodes sharing a row
and a column are spread over (-0.4, 0.4) around it, the most influential in the middle. A node's ``influence`` is its
influence on the logits in the full graph (:func:`~circuits.attribution.prune.node_influence`; a logit's is its
probability); the drawn size grows with its square root.

Supernodes (:func:`group`): the pinned nodes of a group become one node ``super:<name>`` at their mean place with
their summed influence; each edge between a group and another node is the sum of the members' edges (edges inside
a group are dropped), so the total weight of the edges leaving or entering a group is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from circuits.attribution.export import kept
from circuits.attribution.graph import AttributionGraph
from circuits.attribution.prune import PruneResult, prune

__all__ = ["GraphView", "graph_figure", "group", "layout", "reprune", "selected_ids"]

SIGN_COLOURS = {True: "rgba(33,102,172,{a})", False: "rgba(178,24,43,{a})"}  # positive blue, negative red
KIND_COLOURS = {"feature": "#f28e2b", "error": "#9d9d9d", "emb": "#59a14f", "logit": "#4e79a7", "supernode": "#b07aa1"}
NODE_COLUMNS = ["id", "kind", "layer", "position", "feature", "x", "y", "influence", "activation", "label", "members"]


@dataclass
class GraphView:
    """What the explorer draws: ``nodes`` (one row per node: id, kind, layer, position, feature, x, y, influence,
    activation, label, members), ``edges`` (source, target, weight), the prompt's ``tokens`` and ``n_layers``."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    tokens: list[str]
    n_layers: int
    groups: dict[str, list[str]] = field(default_factory=dict)


def reprune(graph: AttributionGraph, node_threshold: float, edge_threshold: float) -> PruneResult:
    """The graph pruned at other thresholds (:func:`~circuits.attribution.prune.prune` of the full graph)."""
    return prune(graph, node_threshold, edge_threshold)


def layout(graph: AttributionGraph, pruned: PruneResult) -> GraphView:
    """The kept nodes and edges of ``pruned`` placed on the prompt (see the module docstring)."""
    ids = graph.node_ids()
    nodes_kept, edges = kept(graph, pruned)
    L, T = graph.n_layers, graph.n_pos
    rows = []
    for i in nodes_kept:
        kind = graph.kind(i)
        feature, activation = -1, math.nan
        if kind == "feature":
            layer, pos, feature = graph.features[i].tolist()
            y, activation = layer + 1, float(graph.activations[i])
            label = f"{ids[i]} (activation {activation:.3g})"
        elif kind == "error":
            layer, pos = divmod(i - graph.error_start, T)
            y, label = layer + 1, ids[i]
        elif kind == "emb":
            layer, pos, y = -1, i - graph.token_start, 0
            label = f"{graph.token_strings[pos]!r} (position {pos})"
        else:
            k = i - graph.logit_start
            layer, pos, y = L, T - 1, L + 1
            label = f"output {graph.logit_labels[k]!r} (p={float(graph.logit_probabilities[k]):.3f})"
        infl = float(graph.logit_probabilities[i - graph.logit_start]) if kind == "logit" else float(
            pruned.influence[i])
        rows.append({"id": ids[i], "kind": kind, "layer": layer, "position": pos, "feature": feature, "x": float(pos),
                     "y": float(y), "influence": infl, "activation": activation, "label": label, "members": []})
    nodes = pd.DataFrame(rows, columns=NODE_COLUMNS)
    _spread(nodes)
    edge_rows = [{"source": ids[s], "target": ids[t], "weight": w} for s, t, w in edges]
    return GraphView(nodes, pd.DataFrame(edge_rows, columns=["source", "target", "weight"]),
                     list(graph.token_strings), L)


def _spread(nodes: pd.DataFrame) -> None:
    """Spread the nodes sharing a row and a column over (-0.4, 0.4), the most influential in the middle."""
    for _, cell in nodes.groupby(["y", "position"]):
        if len(cell) < 2:
            continue
        order = cell.sort_values("influence", ascending=False).index
        n = len(order)
        offsets = sorted((0.8 * (j + 0.5) / n - 0.4 for j in range(n)), key=abs)
        for idx, off in zip(order, offsets, strict=True):
            nodes.loc[idx, "x"] = nodes.loc[idx, "position"] + off


def group(view: GraphView, groups: Mapping[str, Sequence[str]]) -> GraphView:
    """``view`` with each named group of node ids drawn as one supernode (see the module docstring). Ids not in the
    view are ignored; a group left with no member is not drawn; ValueError for a node in two groups."""
    owner: dict[str, str] = {}
    present = set(view.nodes["id"])
    kept_groups: dict[str, list[str]] = {}
    for name, members in groups.items():
        members = [m for m in members if m in present]
        for m in members:
            if m in owner:
                raise ValueError(f"node {m} is in two supernodes ({owner[m]!r} and {name!r})")
            owner[m] = f"super:{name}"
        if members:
            kept_groups[name] = members
    if not owner:
        return view
    nodes = view.nodes[~view.nodes["id"].isin(owner)]
    supers = []
    for name, members in kept_groups.items():
        part = view.nodes[view.nodes["id"].isin(members)]
        supers.append({"id": f"super:{name}", "kind": "supernode", "layer": int(part["layer"].max()),
                       "position": int(part["position"].max()), "feature": -1, "x": float(part["x"].mean()),
                       "y": float(part["y"].mean()), "influence": float(part["influence"].sum()),
                       "activation": math.nan, "label": f"{name}: {len(members)} nodes", "members": list(members)})
    nodes = pd.concat([nodes, pd.DataFrame(supers, columns=NODE_COLUMNS)], ignore_index=True)
    edges = view.edges.assign(source=view.edges["source"].map(lambda s: owner.get(s, s)),
                              target=view.edges["target"].map(lambda t: owner.get(t, t)))
    edges = edges[edges["source"] != edges["target"]]
    edges = edges.groupby(["source", "target"], as_index=False, sort=False)["weight"].sum()
    return GraphView(nodes, edges, view.tokens, view.n_layers, {**view.groups, **kept_groups})


def _edge_traces(view: GraphView, where: dict[str, tuple[float, float]]) -> list[go.Scatter]:
    """Edges as line traces: by sign (blue positive, red negative) and by |weight| in three width bands."""
    if view.edges.empty:
        return []
    top = float(view.edges["weight"].abs().max()) or 1.0
    traces = []
    for positive in (True, False):
        part = view.edges[(view.edges["weight"] >= 0) == positive]
        band = (part["weight"].abs() / top * 3).clip(upper=2.999).astype(int)
        for b in range(3):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for s, t in zip(part["source"][band == b], part["target"][band == b], strict=True):
                (x0, y0), (x1, y1) = where[s], where[t]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
            if xs:
                traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                         line={"width": 0.6 + 1.6 * b,
                                               "color": SIGN_COLOURS[positive].format(a=0.25 + 0.25 * b)}))
    return traces


def graph_figure(view: GraphView, *, pinned: Sequence[str] = (), selected: str | None = None,
                 title: str | None = None) -> go.Figure:
    """The view as a plotly figure: tokens along x (their text as ticks), embeddings at the bottom, logits on top;
    node size by influence, edges coloured by sign; pinned nodes ringed, the selected one ringed in black. Each node
    trace carries ``meta={"role": "nodes"}`` and the node ids as ``customdata`` (see :func:`selected_ids`)."""
    nodes = view.nodes
    where = {r.id: (r.x, r.y) for r in nodes.itertuples()}
    fig = go.Figure(_edge_traces(view, where))
    top = float(nodes["influence"].abs().max()) if len(nodes) else 1.0
    pinned = set(pinned)
    for kind, part in nodes.groupby("kind", sort=False):
        size = [8 + 22 * math.sqrt(abs(v) / top) if top > 0 else 8 for v in part["influence"]]
        ring = ["black" if i == selected else "#e15759" if i in pinned else "white" for i in part["id"]]
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["y"], mode="markers", name=kind, customdata=list(part["id"]), meta={"role": "nodes"},
            hovertext=[f"<b>{i}</b><br>{lab}<br>influence {v:.4g}" for i, lab, v in
                       zip(part["id"], part["label"], part["influence"], strict=True)],
            hoverinfo="text",
            marker={"size": size, "color": KIND_COLOURS.get(str(kind), "#333"), "line": {"width": 2, "color": ring},
                    "symbol": "diamond" if kind == "supernode" else "circle"}))
    rows = ["emb", *(f"L{la}" for la in range(view.n_layers)), "logits"]
    fig.update_layout(
        title=title, height=520, margin={"l": 50, "r": 10, "t": 40 if title else 10, "b": 60}, clickmode="event+select",
        xaxis={"tickmode": "array", "tickvals": list(range(len(view.tokens))), "ticktext": [repr(t) for t in view.tokens],
               "title": "prompt token"},
        yaxis={"tickmode": "array", "tickvals": list(range(len(rows))), "ticktext": rows, "title": "layer",
               "range": [-0.5, len(rows) - 0.5]},
        legend={"orientation": "h", "y": -0.18})
    return fig


def selected_ids(event: Any, fig: go.Figure) -> list[str]:
    """The node ids a ``st.plotly_chart(..., on_select="rerun")`` event selected in a :func:`graph_figure`."""
    try:
        points = event["selection"]["points"]
    except (TypeError, KeyError):
        return []
    out = []
    for p in points:
        curve, index = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if curve is None or index is None or not 0 <= curve < len(fig.data):
            continue
        trace = fig.data[curve]
        if isinstance(trace.meta, dict) and trace.meta.get("role") == "nodes" and trace.customdata is not None:
            out.append(str(trace.customdata[index]))
    return out
