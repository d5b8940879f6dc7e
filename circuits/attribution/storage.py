"""The full (unpruned) attribution graph in the run store, and back, bit for bit.

Layout (two artifacts of an ``attribution`` run):

- tensors ``full_graph`` (safetensors): the adjacency in compressed sparse rows, ``indptr`` [N + 1] (int64: row t's
  entries are ``indptr[t]:indptr[t + 1]``), ``indices`` [E] (their source columns, int32) and ``values`` [E] (the
  adjacency's dtype), every entry whose bits are not all zero (so a stored ``-0.0`` comes back as ``-0.0``); and the
  node tensors ``tokens`` [T], ``features`` [F, 3],
  ``activations`` [F], ``inputs`` [N], ``bias`` [N], ``logit_probabilities`` [K], ``logit_tokens`` [K];
- JSON ``full_graph_nodes``: the node table's text and the shape facts: ``n_nodes``, ``n_layers``, ``dtype``,
  ``token_strings``, ``logit_labels``, ``names`` (layer -> node-id prefix), ``n_active``, ``metadata``.

:func:`graph_artifacts` gives both for a :class:`~workbench.analysis.Result` (the store writes them atomically with
the run); :func:`load_graph` reads a stored run back into an :class:`AttributionGraph`.
"""

from __future__ import annotations

from typing import Any

import torch

from circuits.attribution.graph import AttributionGraph

__all__ = ["GRAPH_JSON", "GRAPH_TENSORS", "MissingGraphError", "graph_artifacts", "load_graph"]

GRAPH_TENSORS = "full_graph"
GRAPH_JSON = "full_graph_nodes"
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class MissingGraphError(LookupError):
    """The run holds no full graph (made before graphs were stored, or of another kind)."""


def _nonzero_bits(adjacency: torch.Tensor) -> torch.Tensor:
    """[N, N] bool: entries whose bit pattern is not all zeros (``-0.0`` and NaN count as stored)."""
    return adjacency.contiguous().view(_INT_VIEW[adjacency.element_size()]) != 0


def graph_artifacts(graph: AttributionGraph) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON document) storing ``graph`` in full (see the module docstring)."""
    adjacency = graph.adjacency.detach().cpu()
    t, s = torch.nonzero(_nonzero_bits(adjacency), as_tuple=True)  # row-major order
    counts = torch.bincount(t, minlength=adjacency.shape[0])
    tensors = {
        "indptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        "indices": s.to(torch.int32),
        "values": adjacency[t, s],
        "tokens": graph.tokens.detach().cpu().long(),
        "features": graph.features.detach().cpu().long().reshape(-1, 3),
        "activations": graph.activations.detach().cpu(),
        "inputs": graph.inputs.detach().cpu(),
        "bias": graph.bias.detach().cpu(),
        "logit_probabilities": graph.logit_probabilities.detach().cpu(),
        "logit_tokens": torch.tensor(list(graph.logit_tokens), dtype=torch.long),
    }
    doc = {
        "n_nodes": graph.n_nodes, "n_layers": graph.n_layers, "dtype": str(adjacency.dtype).removeprefix("torch."),
        "token_strings": list(graph.token_strings), "logit_labels": list(graph.logit_labels),
        "names": {str(k): v for k, v in graph.names.items()}, "n_active": int(graph.n_active),
        "metadata": dict(graph.metadata),
    }
    return tensors, doc


def load_graph(run: Any) -> AttributionGraph:
    """The full :class:`AttributionGraph` of a stored ``attribution`` run (a :class:`workbench.store.Run`), equal bit
    for bit to the one the run computed. MissingGraphError when the run has none; the store's CorruptRunError when
    its files are damaged; ValueError when they disagree with each other (shapes, indices out of range)."""
    if GRAPH_TENSORS not in run.names("tensors") or GRAPH_JSON not in run.names("json"):
        raise MissingGraphError(f"run {run.kind}/{run.run_id} holds no full attribution graph (artifacts "
                                f"{GRAPH_TENSORS!r}, {GRAPH_JSON!r}); make one with `workbench attribute`")
    t = run.tensors(GRAPH_TENSORS)
    doc = run.json(GRAPH_JSON)
    n = int(doc["n_nodes"])
    dtype = getattr(torch, str(doc["dtype"]))
    indptr, cols, values = t["indptr"], t["indices"].long(), t["values"]
    counts = indptr.diff() if indptr.numel() == n + 1 else None
    if (counts is None or int(indptr[0]) != 0 or bool((counts < 0).any()) or int(indptr[-1]) != values.numel()
            or cols.shape != values.shape or values.dtype != dtype):
        raise ValueError(f"run {run.run_id}: indptr {tuple(indptr.shape)}, indices {tuple(cols.shape)}, values "
                         f"{tuple(values.shape)} ({values.dtype}) are not the rows of a {n}-node {dtype} graph")
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n):
        raise ValueError(f"run {run.run_id}: edge columns outside 0..{n - 1}")
    adjacency = torch.zeros(n, n, dtype=dtype)
    adjacency[torch.repeat_interleave(torch.arange(n), counts), cols] = values
    graph = AttributionGraph(
        tokens=t["tokens"], token_strings=list(doc["token_strings"]), n_layers=int(doc["n_layers"]),
        features=t["features"], activations=t["activations"], adjacency=adjacency, inputs=t["inputs"],
        bias=t["bias"], logit_tokens=[int(x) for x in t["logit_tokens"].tolist()],
        logit_labels=list(doc["logit_labels"]), logit_probabilities=t["logit_probabilities"],
        names={int(k): v for k, v in doc["names"].items()}, n_active=int(doc["n_active"]),
        metadata=dict(doc.get("metadata") or {}))
    expected = graph.n_features + graph.n_layers * graph.n_pos + graph.n_pos + graph.n_logits
    if expected != n:
        raise ValueError(f"run {run.run_id}: {n} nodes stored, but the node table makes {expected}")
    return graph
