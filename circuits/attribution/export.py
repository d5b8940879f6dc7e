"""The pruned attribution graph as a :class:`workbench.circuit.Circuit` and as circuit-tracer's graph JSON.

Circuit: one node per kept node, ids in the project grammar (``tc4.f123@7``, ``err:tc4@7``, ``emb@3``,
``logit:<token>``), ``score`` = the node's influence on the logits, ``activation`` = a feature's activation,
``token`` = the token text of ``emb`` and ``logit`` nodes, plus ``cumulative_influence``, ``input`` (pre-activation
or logit value) and a logit's ``probability``; one edge per kept edge (source -> target, ``weight`` the direct effect).

Graph JSON (circuit-tracer's ``frontend/graph_models.py``, schema version 1, as its ``create_graph_files`` writes
it): ``metadata`` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version), ``qParams``,
``nodes`` (node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx, reverse_ctx_idx,
jsNodeId, clerp, influence, activation) and ``links`` (source, target, weight). Node ids there are circuit-tracer's:
features ``{layer}_{feature}_{pos}``, errors ``0_{layer}_{pos}``, tokens ``E_{vocab}_{pos}``, logits
``{n_layers + 1}_{vocab}_{pos}`` (a custom target gets the virtual vocabulary index ``d_vocab + k``); ``influence``
is the node's cumulative influence, as circuit-tracer writes it. Non-finite numbers are refused (strict JSON).
circuit-tracer's error id ``0_{layer}_{pos}`` is also the id of feature ``layer`` of layer 0 at ``pos``; where such a
feature is in the graph the error node is written ``err_{layer}_{pos}`` instead, so that every id is unique.

Feature files (:func:`write_graph_json` with cards): ``features/<scan>/<index>.json`` beside the graph JSON, the
path the frontend's ``loadFeature`` reads for a relative scan, plus ``graph-metadata.json`` (the graphs listed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

from circuits.attribution.graph import AttributionGraph
from circuits.attribution.prune import PruneResult
from workbench.atomic import write_text
from workbench.circuit import Circuit

__all__ = ["feature_file", "kept", "process_token", "to_circuit", "to_graph_json", "write_graph_json"]


def kept(graph: AttributionGraph, pruned: PruneResult) -> tuple[list[int], list[tuple[int, int, float]]]:
    """Kept node indices (those with a kept edge, plus every token and logit) and kept edges (source, target, w)."""
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources].tolist()
    edges = [(int(s), int(t), float(w)) for s, t, w in zip(sources.tolist(), targets.tolist(), weights, strict=True)
             if pruned.node_mask[s] and pruned.node_mask[t]]
    used = {s for s, _, _ in edges} | {t for _, t, _ in edges} | set(range(graph.token_start, graph.n_nodes))
    return [i for i in range(graph.n_nodes) if bool(pruned.node_mask[i]) and i in used], edges


def to_circuit(graph: AttributionGraph, pruned: PruneResult, name: str = "attribution") -> Circuit:
    """The pruned graph as a :class:`Circuit` (see the module docstring); metadata carries the prompt tokens."""
    ids = graph.node_ids()
    circuit = Circuit(name, {"method": "attribution graph", "tokens": list(graph.token_strings),
                             "n_active_features": graph.n_active, **graph.metadata})
    nodes, edges = kept(graph, pruned)
    for i in nodes:
        kind = graph.kind(i)
        attrs: dict[str, Any] = {"score": float(pruned.influence[i]),
                                 "cumulative_influence": float(pruned.cumulative[i])}
        if kind == "feature":
            attrs.update(activation=float(graph.activations[i]), input=float(graph.inputs[i]))
        elif kind == "emb":
            attrs["token"] = graph.token_strings[i - graph.token_start]
        elif kind == "logit":
            k = i - graph.logit_start
            attrs.update(token=graph.logit_labels[k], probability=float(graph.logit_probabilities[k]),
                         input=float(graph.inputs[i]))
        circuit.add_node(ids[i], **attrs)
    for s, t, w in edges:
        circuit.add_edge(ids[s], ids[t], w)
    return circuit


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def process_token(token: str) -> str:
    """A token as circuit-tracer shows it (newline, tab and carriage return as visible marks)."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}; the graph JSON holds finite numbers only")
    return value


def to_graph_json(graph: AttributionGraph, pruned: PruneResult, *, slug: str, scan: str, d_vocab: int,
                  node_threshold: float, transcoder_list: list[str] | None = None, prompt: str | None = None
                  ) -> dict[str, Any]:
    """circuit-tracer's graph JSON of the pruned graph (schema version 1; see the module docstring)."""
    nodes_kept, edges = kept(graph, pruned)
    out_nodes: dict[int, dict[str, Any]] = {}
    L, T = graph.n_layers, graph.n_pos
    feature_ids = {f"{la}_{f}_{p}" for la, p, f in graph.features.tolist()}
    for i in nodes_kept:
        kind, infl = graph.kind(i), _finite(float(pruned.cumulative[i]), f"the influence of node {i}")
        base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
                "influence": infl, "activation": None}
        if kind == "feature":
            layer, pos, feat = graph.features[i].tolist()
            node = {"node_id": f"{layer}_{feat}_{pos}", "feature": _cantor(layer, feat), "layer": str(layer),
                    "ctx_idx": pos, "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{feat}-0",
                    "activation": _finite(float(graph.activations[i]), f"the activation of node {i}")}
        elif kind == "error":
            layer, pos = divmod(i - graph.error_start, T)
            node_id = f"0_{layer}_{pos}"
            node_id = f"err_{layer}_{pos}" if node_id in feature_ids else node_id  # circuit-tracer's ids can collide
            node = {"node_id": node_id, "feature": -1, "layer": str(layer), "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
        elif kind == "emb":
            pos = i - graph.token_start
            vocab = int(graph.tokens[pos])
            node = {"node_id": f"E_{vocab}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                    "feature_type": "embedding", "jsNodeId": f"E_{vocab}-{pos}"}
        else:
            k = i - graph.logit_start
            vocab = graph.logit_tokens[k] if graph.logit_tokens[k] >= 0 else d_vocab + k
            prob = _finite(float(graph.logit_probabilities[k]), f"the probability of logit {k}")
            node = {"node_id": f"{L + 1}_{vocab}_{T - 1}", "feature": vocab, "layer": str(L + 1), "ctx_idx": T - 1,
                    "feature_type": "logit", "token_prob": prob, "is_target_logit": k == 0,
                    "jsNodeId": f"L_{vocab}-{T - 1}",
                    "clerp": f'Output "{process_token(graph.logit_labels[k])}" (p={prob:.3f})', "influence": None}
        out_nodes[i] = {**base, **node}
    links = [{"source": out_nodes[s]["node_id"], "target": out_nodes[t]["node_id"],
              "weight": _finite(w, f"the edge {s} -> {t}")} for s, t, w in edges]
    tokens = [process_token(t) for t in graph.token_strings]
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": list(transcoder_list or []),
                     "prompt_tokens": tokens, "prompt": prompt if prompt is not None else "".join(graph.token_strings),
                     "node_threshold": float(node_threshold), "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(out_nodes.values()),
        "links": links,
    }


def feature_file(folder: Path | str, scan: str, index: int) -> Path:
    """Where circuit-tracer's frontend looks for a feature file next to a graph in ``folder``:
    ``features/<scan>/<index>.json`` (a local path's root and ``.``/``..`` parts left out of ``<scan>``)."""
    parts = [p for p in PurePosixPath(str(scan)).parts if p not in ("/", ".", "..")]
    return Path(folder, "features", *(parts or ["scan"]), f"{int(index)}.json")


def write_graph_json(path: Path | str, data: dict[str, Any], features: list[dict[str, Any]] | None = None) -> Path:
    """Write a graph JSON atomically as strict JSON (ValueError for NaN or infinity); returns the path.

    With ``features`` (feature cards, :func:`circuits.attribution.features.feature_cards`), also write circuit-tracer's
    local files beside it: one ``features/<scan>/<index>.json`` per card (``index``
    the Cantor pairing of layer and feature, as the frontend's ``loadFeature`` asks for it; a local path's root and
    ``..`` parts are left out of ``<scan>``) and ``graph-metadata.json`` listing the graph's
    metadata (an entry of the same slug is replaced)."""
    path = Path(path)
    dump = {"allow_nan": False, "ensure_ascii": False, "separators": (",", ":")}
    if features is not None:
        for card in features:
            write_text(feature_file(path.parent, data["metadata"]["scan"], int(card["index"])),
                       json.dumps(card, **dump) + "\n")
        index = path.parent / "graph-metadata.json"
        listing = json.loads(index.read_text(encoding="utf-8")) if index.exists() else {"graphs": []}
        graphs = [g for g in listing.get("graphs", []) if g.get("slug") != data["metadata"]["slug"]]
        write_text(index, json.dumps({"graphs": [*graphs, data["metadata"]]}, **dump) + "\n")
    write_text(path, json.dumps(data, **dump) + "\n")
    return path
