"""The circuit graph every analysis returns: a ``networkx.DiGraph`` whose node ids say what they are.

Node ids follow the one grammar of :mod:`workbench.nodes` (``emb@3``, ``L2.H5@7``, ``L2.H5@7:3``, ``mlp4@7``,
``tc4.f123@7``, ``err:tc4@7``, ``logit``, ``bias``; spans ``emb@2-4``); :func:`parse_node_id` is its dict view.

Every node carries the attributes ``kind`` (one of :data:`KINDS`), ``layer``, ``head``, ``feature``, ``position``,
``token``, ``activation`` and ``score`` (None where they do not apply), plus any extra ones given; a head node whose id
names a source position also carries it as ``source_position``, a span its last position as ``end_position``.
Every edge carries a signed ``weight``.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from workbench.atomic import write_json, write_text
from workbench.nodes import KINDS, Node, parse

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["ATTRS", "KINDS", "Circuit", "Node", "parse", "parse_node_id"]

#: the attributes every node has (None where not applicable)
ATTRS: tuple[str, ...] = ("kind", "layer", "head", "feature", "position", "token", "activation", "score")
_INT_ATTRS = ("layer", "head", "feature", "position", "source_position", "end_position")
_FLOAT_ATTRS = ("activation", "score")
_OPTIONAL = ("source_position", "end_position")  # parsed keys present only in the ids that name them

_KIND_COLOURS = {
    "emb": "#7f7f7f",
    "head": "#1f77b4",
    "mlp": "#2ca02c",
    "feature": "#9467bd",
    "error": "#d62728",
    "logit": "#ff7f0e",
    "bias": "#bcbd22",
    "other": "#17becf",
}
_POSITIVE, _NEGATIVE = "#1f77b4", "#d62728"


def parse_node_id(node_id: str) -> dict[str, Any]:
    """Parse a node id into ``{"kind", "layer", "head", "feature", "position", "token"}`` (None where absent),
    plus ``"source_position"`` for a head id that names one (``L2.H5@7:3``: head 5 of layer 2 at position 7, reading
    position 3) and ``"end_position"`` for a span (``emb@2-4``); other ids give exactly the six keys.
    The dict view of :func:`workbench.nodes.parse`.

    >>> parse_node_id("L2.H5@7")["head"]
    5
    >>> parse_node_id("L2.H5@7:3")["source_position"]
    3

    Raises ValueError for an id that does not follow the naming scheme.
    """
    node = parse(node_id)
    out: dict[str, Any] = {key: getattr(node, key) for key in ("kind", "layer", "head", "feature", "position", "token")}
    out.update({key: getattr(node, key) for key in _OPTIONAL if getattr(node, key) is not None})
    return out


def _clean(key: str, value: Any) -> Any:
    """Normalise an attribute value to plain Python (numpy/torch scalars to int/float)."""
    if value is None:
        return None
    if key in _INT_ATTRS:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if key in _FLOAT_ATTRS or key == "weight":
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


class Circuit:
    """A circuit: nodes (model components, features, inputs, outputs) and signed edges between them.

    ``graph`` is the underlying ``networkx.DiGraph``; ``name`` and ``metadata`` (JSON values: model, task,
    prompt tokens, method, ...) travel with it through JSON.
    """

    def __init__(self, name: str = "", metadata: dict | None = None) -> None:
        self.name = name
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.graph: nx.DiGraph = nx.DiGraph()

    # ------------------------------------------------------------------ building
    def add_node(self, node_id: str, *, kind: str | None = None, **attrs: Any) -> str:
        """Add (or update) a node; returns its id.

        Attributes not given are parsed from the id (kind, layer, head, feature, position, a head's
        ``source_position``, and the token of ``logit:<token>``). With an explicit ``kind`` the id may be free-form (e.g. ``"resid3@2"``, kind="other").
        """
        try:
            parsed = parse_node_id(node_id)
        except ValueError:
            if kind is None or not isinstance(node_id, str) or not node_id:
                raise
            parsed = {}
        kind = kind if kind is not None else parsed["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown node kind {kind!r}; expected one of {', '.join(KINDS)}")
        existing = dict(self.graph.nodes[node_id]) if node_id in self.graph else {}
        data: dict[str, Any] = {key: existing.get(key, parsed.get(key)) for key in ATTRS}
        data.update({k: v for k, v in existing.items() if k not in data})
        for key in _OPTIONAL:
            if parsed.get(key) is not None:
                data.setdefault(key, parsed[key])
        data["kind"] = kind
        for key, value in attrs.items():
            data[key] = value
        data = {key: _clean(key, value) for key, value in data.items()}
        self.graph.add_node(node_id, **data)
        return node_id

    def add_edge(self, src: str, dst: str, weight: float, **attrs: Any) -> None:
        """Add (or replace) the edge ``src -> dst`` with a signed ``weight``; unknown endpoints are added from their ids."""
        for node in (src, dst):
            if node not in self.graph:
                self.add_node(node)
        self.graph.add_edge(
            src, dst, weight=_clean("weight", weight), **{k: _clean(k, v) for k, v in attrs.items()}
        )

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.graph

    def __iter__(self):
        return iter(self.graph.nodes)

    def __repr__(self) -> str:
        return f"Circuit({self.name!r}, nodes={len(self)}, edges={self.graph.number_of_edges()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.to_json() == other.to_json()

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """The nodes as dicts ``{"id": ..., "kind": ..., ...}``, in insertion order."""
        return [{"id": n, **d} for n, d in self.graph.nodes(data=True)]

    @property
    def edges(self) -> list[dict[str, Any]]:
        """The edges as dicts ``{"source": ..., "target": ..., "weight": ..., ...}``, in insertion order."""
        return [{"source": u, "target": v, **d} for u, v, d in self.graph.edges(data=True)]

    def to_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(nodes_df, edges_df)``: one row per node (``id`` + attributes), one per edge (``source``, ``target``, ``weight``, ...)."""
        import pandas as pd

        nodes = pd.DataFrame(self.nodes, columns=_columns(self.nodes, ["id", *ATTRS]))
        edges = pd.DataFrame(self.edges, columns=_columns(self.edges, ["source", "target", "weight"]))
        return nodes, edges

    def heads(self) -> list[tuple[int, int]]:
        """Sorted distinct ``(layer, head)`` pairs of the head nodes."""
        return sorted(
            {
                (d["layer"], d["head"])
                for _, d in self.graph.nodes(data=True)
                if d.get("kind") == "head" and d.get("layer") is not None and d.get("head") is not None
            }
        )

    # ------------------------------------------------------------------ JSON / GraphML
    def to_json(self) -> dict[str, Any]:
        """Node-link form (readable by ``networkx.node_link_graph(d, edges="edges")``) plus ``name`` and ``metadata``."""
        return {
            "directed": True,
            "multigraph": False,
            "graph": {},
            "name": self.name,
            "metadata": copy.deepcopy(self.metadata),
            "nodes": self.nodes,
            "edges": self.edges,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Circuit:
        """Rebuild a circuit from :meth:`to_json` output (also accepts networkx's ``links`` key)."""
        if not isinstance(data, dict) or "nodes" not in data:
            raise ValueError("not a circuit in node-link form: expected a dict with 'nodes' and 'edges'")
        circuit = cls(data.get("name", ""), data.get("metadata"))
        for node in data["nodes"]:
            attrs = {k: v for k, v in node.items() if k != "id"}
            circuit.graph.add_node(node["id"], **attrs)
        for edge in data.get("edges", data.get("links", [])):
            attrs = {k: v for k, v in edge.items() if k not in ("source", "target")}
            circuit.graph.add_edge(edge["source"], edge["target"], **attrs)
        return circuit

    def save_json(self, path: Path | str) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        write_json(path, self.to_json())

    @classmethod
    def load_json(cls, path: Path | str) -> Circuit:
        """Read a circuit written by :meth:`save_json`."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_graphml(self, path: Path | str) -> None:
        """Export GraphML (atomically). None attributes are dropped; lists and dicts become JSON strings."""
        g = nx.DiGraph()
        g.graph["name"] = self.name
        if self.metadata:
            g.graph["metadata"] = json.dumps(self.metadata, default=str)
        nodes = _unify_types([_scalar_attrs(d) for _, d in self.graph.nodes(data=True)])
        for n, d in zip(self.graph.nodes, nodes, strict=True):
            g.add_node(n, **d)
        edges = _unify_types([_scalar_attrs(d) for _, _, d in self.graph.edges(data=True)])
        for (u, v), d in zip(self.graph.edges, edges, strict=True):
            g.add_edge(u, v, **d)
        text = "\n".join(nx.generate_graphml(g)) + "\n"
        write_text(path, text)

    # ------------------------------------------------------------------ pruning
    def prune(
        self,
        node_threshold: float = 0.0,
        edge_threshold: float = 0.0,
        *,
        keep: set[str] | None = None,
    ) -> Circuit:
        """A new circuit without the weak parts.

        1. nodes with ``|score| < node_threshold`` go (nodes with score None, ``logit`` nodes and ``keep`` stay);
        2. edges with ``|weight| < edge_threshold`` go, as do edges of removed nodes;
        3. nodes that had edges and have none left go (except ``logit`` nodes and ``keep``); nodes that never had
           edges (e.g. a list of scored heads) are judged by their score alone.
        """
        keep = set(keep or ())
        protected = {n for n, d in self.graph.nodes(data=True) if d.get("kind") == "logit"} | keep
        g = self.graph.copy()
        drop = [
            n
            for n, d in g.nodes(data=True)
            if n not in protected and d.get("score") is not None and abs(d["score"]) < node_threshold
        ]
        g.remove_nodes_from(drop)
        g.remove_edges_from(
            [(u, v) for u, v, w in g.edges(data="weight") if w is not None and abs(w) < edge_threshold]
        )
        g.remove_nodes_from(
            [n for n in g.nodes if n not in protected and g.degree(n) == 0 and self.graph.degree(n) > 0]
        )
        out = Circuit(self.name, copy.deepcopy(self.metadata))
        out.graph = g
        return out

    # ------------------------------------------------------------------ drawing
    def layout(self) -> dict[str, tuple[float, float]]:
        """Figure coordinates ``node -> (x, y)``: x the position, y the layer row (see :meth:`figure`)."""
        data = dict(self.graph.nodes(data=True))
        layers = [d["layer"] for d in data.values() if d.get("layer") is not None]
        top = (max(layers) + 1) if layers else 1
        positions = [d["position"] for d in data.values() if d.get("position") is not None]
        lo, hi = (min(positions), max(positions)) if positions else (0, 0)

        def row(d: dict[str, Any]) -> float:
            kind, layer = d.get("kind"), d.get("layer")
            if kind == "logit":
                return float(top)
            if layer is None:
                return -1.0 if kind in ("emb", "bias", "other") else float(top) - 0.5
            return float(layer) + (0.5 if kind in ("mlp", "feature", "error") else 0.0)

        rows = {n: row(d) for n, d in data.items()}
        xs: dict[str, float] = {}
        free: dict[float, list[str]] = defaultdict(list)
        for n, d in data.items():
            if d.get("position") is not None:
                xs[n] = float(d["position"])
            else:
                free[rows[n]].append(n)
        for nodes in free.values():
            k = len(nodes)
            for i, n in enumerate(nodes):
                xs[n] = (lo + hi) / 2 if k == 1 else lo + (hi - lo if hi > lo else k - 1) * i / (k - 1)
        # nodes sharing a cell are fanned out sideways (and staggered when many)
        cells: dict[tuple[float, float], list[str]] = defaultdict(list)
        for n in data:
            cells[(rows[n], xs[n])].append(n)
        coords: dict[str, tuple[float, float]] = {}
        for (y, x), nodes in cells.items():
            k = len(nodes)
            step = min(0.25, 0.8 / k)
            for i, n in enumerate(nodes):
                dx = (i - (k - 1) / 2) * step if k > 1 else 0.0
                dy = (0.08 if i % 2 else -0.08) if k > 3 else 0.0
                coords[n] = (x + dx, y + dy)
        return coords

    def figure(self, title: str | None = None) -> go.Figure:
        """A plotly figure of the circuit.

        Layers run up the y axis (embeddings at the bottom, attention heads on row ``L``, MLPs / features / errors on
        row ``L + 0.5``, logits on top); token positions run along x (position-free nodes spread along their row).
        Edges are drawn in groups (one trace per sign x width bin) with width by ``|weight|``, blue for positive, red
        for negative; a transparent marker at each edge's midpoint carries its hover text. Nodes get one trace per kind,
        coloured by kind, sized by ``|score|``, with every attribute in the hover text.
        """
        import plotly.graph_objects as go

        coords = self.layout()
        fig = go.Figure()
        for trace in self._edge_traces(coords):
            fig.add_trace(trace)
        scores = [abs(d["score"]) for _, d in self.graph.nodes(data=True) if _finite(d.get("score"))]
        max_score = max(scores) if scores else 0.0
        by_kind: dict[str, list[str]] = defaultdict(list)
        for n, d in self.graph.nodes(data=True):
            by_kind[d.get("kind") or "other"].append(n)
        for kind in sorted(by_kind, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
            nodes = by_kind[kind]
            sizes = []
            for n in nodes:
                s = self.graph.nodes[n].get("score")
                sizes.append(10 + 14 * abs(s) / max_score if _finite(s) and max_score > 0 else 12)
            fig.add_trace(
                go.Scatter(
                    x=[coords[n][0] for n in nodes],
                    y=[coords[n][1] for n in nodes],
                    mode="markers+text" if len(self) <= 40 else "markers",
                    text=[_short_label(n) for n in nodes],
                    textposition="top center",
                    textfont={"size": 9},
                    marker={
                        "size": sizes,
                        "color": _KIND_COLOURS.get(kind, "#17becf"),
                        "line": {"width": 1, "color": "#333"},
                    },
                    hovertext=[_hover(n, self.graph.nodes[n]) for n in nodes],
                    hoverinfo="text",
                    name=kind,
                    meta={"role": "nodes", "kind": kind},
                )
            )
        fig.update_layout(
            title=title if title is not None else (self.name or None),
            showlegend=True,
            hovermode="closest",
            plot_bgcolor="white",
            xaxis=self._x_axis(),
            yaxis=self._y_axis(coords),
            margin={"l": 70, "r": 20, "t": 50, "b": 50},
        )
        return fig

    def _edge_traces(self, coords: dict[str, tuple[float, float]]) -> list[go.Scatter]:
        import plotly.graph_objects as go

        edges = [(u, v, w) for u, v, w in self.graph.edges(data="weight") if u in coords and v in coords]
        weights = [abs(w) for _, _, w in edges if _finite(w)]
        max_w = max(weights) if weights else 0.0
        n_bins = 4
        groups: dict[tuple[bool, int], list[tuple[str, str, float]]] = defaultdict(list)
        for u, v, w in edges:
            w = w if _finite(w) else 0.0
            frac = abs(w) / max_w if max_w > 0 else 0.0
            groups[(w >= 0, min(n_bins - 1, int(frac * n_bins)))].append((u, v, w))
        traces = []
        for (positive, b), members in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for u, v, _ in members:
                xs += [coords[u][0], coords[v][0], None]
                ys += [coords[u][1], coords[v][1], None]
            sign = "positive" if positive else "negative"
            traces.append(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"width": 0.75 + 1.5 * (b + 1), "color": _POSITIVE if positive else _NEGATIVE},
                    opacity=0.35 + 0.15 * b,
                    hoverinfo="skip",
                    name=f"{sign} edges, |w| in [{b / n_bins:.2g}, {(b + 1) / n_bins:.2g}] of max",
                    legendgroup=f"edges-{sign}",
                    showlegend=False,
                    meta={"role": "edges", "sign": sign, "bin": b, "count": len(members)},
                )
            )
        if edges:
            traces.append(
                go.Scatter(
                    x=[(coords[u][0] + coords[v][0]) / 2 for u, v, _ in edges],
                    y=[(coords[u][1] + coords[v][1]) / 2 for u, v, _ in edges],
                    mode="markers",
                    marker={"size": 8, "opacity": 0},
                    hovertext=[f"{u} → {v}<br>weight: {_fmt(w)}" for u, v, w in edges],
                    hoverinfo="text",
                    name="edge weights",
                    showlegend=False,
                    meta={"role": "edge-hover"},
                )
            )
        return traces

    def _x_axis(self) -> dict[str, Any]:
        tokens: dict[int, str] = {}
        meta_tokens = self.metadata.get("tokens")
        if isinstance(meta_tokens, list):
            tokens.update({i: str(t) for i, t in enumerate(meta_tokens)})
        for _, d in self.graph.nodes(data=True):
            if d.get("kind") == "emb" and d.get("position") is not None and d.get("token") is not None:
                tokens[d["position"]] = str(d["token"])
        positions = sorted(
            {d["position"] for _, d in self.graph.nodes(data=True) if d.get("position") is not None}
        )
        if positions and positions[-1] - positions[0] <= 64:
            positions = list(range(positions[0], positions[-1] + 1))  # label the tokens in between too
        axis: dict[str, Any] = {"title": "position", "showgrid": False, "zeroline": False}
        if positions:
            axis.update(
                tickmode="array",
                tickvals=positions,
                ticktext=[f"{p}: {tokens[p]!r}" if p in tokens else str(p) for p in positions],
            )
        return axis

    def _y_axis(self, coords: dict[str, tuple[float, float]]) -> dict[str, Any]:
        data = self.graph.nodes
        ticks: dict[float, str] = {}
        layers = sorted({d["layer"] for _, d in data(data=True) if d.get("layer") is not None})
        top = (max(layers) + 1) if layers else 1
        for _, d in data(data=True):
            kind, layer = d.get("kind"), d.get("layer")
            if kind == "logit":
                ticks[float(top)] = "logits"
            elif layer is None:
                ticks[-1.0 if kind in ("emb", "bias", "other") else top - 0.5] = (
                    "emb" if kind == "emb" else "inputs"
                )
            elif kind in ("mlp", "feature", "error"):
                ticks[layer + 0.5] = f"L{layer} mlp"
            else:
                ticks[float(layer)] = f"L{layer} attn"
        if -1.0 in ticks and any(d.get("kind") == "emb" for _, d in data(data=True)):
            ticks[-1.0] = "emb"
        vals = sorted(ticks)
        return {
            "title": "layer",
            "tickmode": "array",
            "tickvals": vals,
            "ticktext": [ticks[v] for v in vals],
            "showgrid": True,
            "gridcolor": "#eee",
            "zeroline": False,
        }


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in first and k not in extra]
    return first + extra


def _scalar_attrs(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if value is None:
            continue
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def _unify_types(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each attribute one GraphML type: ints mixed with floats become floats, other mixtures strings."""
    types: dict[str, set[type]] = defaultdict(set)
    for row in rows:
        for key, value in row.items():
            types[key].add(type(value))
    for key, seen in types.items():
        if len(seen) < 2:
            continue
        cast = float if seen <= {int, float} else str
        for row in rows:
            if key in row:
                row[key] = cast(row[key])
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _short_label(node_id: str) -> str:
    return node_id.split("@", 1)[0] if not node_id.startswith("logit:") else node_id


def _hover(node_id: str, d: dict[str, Any]) -> str:
    lines = [f"<b>{node_id}</b>"]
    for key in ATTRS:
        lines.append(f"{key}: {_fmt(d.get(key)) if key != 'token' or d.get(key) is None else repr(d[key])}")
    lines += [f"{k}: {_fmt(v)}" for k, v in d.items() if k not in ATTRS]
    return "<br>".join(lines)
