"""Edge attribution patching (EAP), EAP with integrated gradients (EAP-IG), ACDC, and the faithfulness of an edge circuit.

Sign convention: an edge's EAP / EAP-IG score estimates ``metric(edge ablated) - metric(clean)``, the change of the
metric when that one edge carries the ablated sender output instead of the clean one::

    score(s->r) = (out_s(ablated) - out_s(clean)) . d metric / d input_r       (summed over examples, positions, d)

at the clean run (EAP; one forward, one backward) or averaged over the inputs ``emb(ablated) + a (emb(clean) -
emb(ablated))`` for ``a = k / steps``, ``k = 1..steps`` (EAP-IG, the published "inputs" variant: the embedding is
interpolated and everything downstream computed from it, with the activation differences of the clean and ablated
runs; ``steps=1`` is EAP; hannamw/EAP-IG's ``get_scores_eap_ig`` sums ``k = 0..steps-1`` instead, the same rule
from the other end of each interval). Interpolating the input rather than the mask follows the published
method: every activation downstream of the embedding moves together along one path. Equivalently ``score = -d metric / d mask[s->r]`` at the all-ones mask, so
``(metric(mask with the edge at 1 - eps) - metric(clean)) / eps -> score`` (checked by finite differences).

ACDC walks the receivers from the logits down (reverse topological order), tries ablating each incoming edge still
in the circuit (senders from the latest back) and leaves it ablated when the metric change is below ``threshold``:
the increase of KL(clean || circuit) at the scored positions (``metric="kl"``, as ACDC), or the absolute change of
the task metric (``metric="metric"``). A receiver none of whose outputs is left in the circuit can no longer affect
the logits: its incoming edges are removed untried (score 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from circuits.edges.forward import ABLATIONS, ablated_outputs, edge_forward, embed
from circuits.edges.graph import EdgeGraph, split_edge
from circuits.edges.metrics import kl_to_clean, task_metric
from circuits.frozen.weights import Weights, model_weights
from workbench.data.task_base import Task

__all__ = ["METHODS", "EdgeScores", "acdc", "eap", "eap_ig", "edge_faithfulness", "edge_faithfulness_many",
           "score_edges"]

METHODS: tuple[str, ...] = ("eap", "eap-ig", "acdc")
Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [K, B, T, V] -> [K]


@dataclass
class EdgeScores:
    """Scores of every edge of the graph, in graph order: ``edges`` id -> score; ``kept`` the circuit a method chose
    (ACDC), None when it only scores; ``method``; ``seconds`` it took."""

    edges: dict[str, float]
    kept: frozenset[str] | None
    method: str
    seconds: float

    def node_scores(self) -> dict[str, float]:
        """Each component's score: the sum of |score| over the edges it sends or receives (a head's q, k and v
        inputs count as the head's)."""
        out: dict[str, float] = {}
        for edge, score in self.edges.items():
            for node in split_edge(edge):
                node = EdgeGraph.component(node)
                out[node] = out.get(node, 0.0) + abs(score)
        return out

    def top(self, k: int) -> list[str]:
        """The ``k`` edges of largest |score| (ties in graph order)."""
        names, values = list(self.edges), [abs(v) for v in self.edges.values()]
        order = sorted(range(len(names)), key=lambda i: -values[i])
        return [names[i] for i in order[:k]]

    def to_circuit(self, k: int | None = None, name: str = "") -> object:
        """A :class:`workbench.circuit.Circuit` of the ``kept`` edges (or, given ``k`` or with nothing kept, the top
        ``k`` by |score|; all edges when both are None), each edge weighted by its score, each node scored by
        :meth:`node_scores`. Edges into a head's q, k and v inputs from one sender become one edge whose weight is
        their sum and whose ``inputs`` attribute names them (``"q,v"``)."""
        from workbench.circuit import Circuit

        if k is not None:
            chosen = self.top(k)
        else:
            chosen = [e for e in self.edges if self.kept is None or e in self.kept]
        circuit = Circuit(name or f"{self.method} edges", {"method": self.method, "seconds": self.seconds})
        nodes = self.node_scores()
        merged: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for edge in chosen:
            sender, receiver = split_edge(edge)
            part = receiver[-1] if EdgeGraph.component(receiver) != receiver else ""
            merged.setdefault((sender, EdgeGraph.component(receiver)), []).append((part, self.edges[edge]))
        for (sender, receiver), parts in merged.items():
            for node in (sender, receiver):
                if node not in circuit:
                    circuit.add_node(node, score=nodes[node])
            inputs = ",".join(sorted((p for p, _ in parts if p), key="qkv".index))
            extra = {"inputs": inputs} if inputs else {}
            circuit.add_edge(sender, receiver, sum(v for _, v in parts), **extra)
        return circuit


@dataclass
class _Setup:
    w: Weights
    graph: EdgeGraph
    task: Task
    ablated: torch.Tensor  # [S, B or 1, T, d]
    clean_logits: torch.Tensor  # [B, T, V]
    metric: Metric


def _setup(model, task: Task, ablation: str, metric: str | Metric | None, dtype: torch.dtype | None,
           method: str, qkv: bool = False) -> _Setup:
    if ablation not in ABLATIONS:
        raise ValueError(f"{method}: unknown ablation {ablation!r}; edge ablations: {', '.join(ABLATIONS)}")
    w = model_weights(model, dtype, method=method)
    graph = EdgeGraph.of(model, qkv=qkv)
    ablated = ablated_outputs(w, graph, task.corrupted_tokens, ablation)
    with torch.no_grad():
        clean_logits = edge_forward(w, graph, task.clean_tokens).logits[0]
    if metric is None or metric == "metric":
        fn: Metric = lambda logits: task_metric(task, logits)  # noqa: E731
    elif metric == "kl":
        fn = lambda logits: kl_to_clean(task, clean_logits, logits)  # noqa: E731
    elif callable(metric):
        fn = metric
    else:
        raise ValueError(f"{method}: unknown metric {metric!r}; give 'metric' (the task's), 'kl' or a function of "
                         "the logits [K, B, T, V] -> [K]")
    return _Setup(w, graph, task, ablated, clean_logits, fn)


def _input_grads(s: _Setup, emb: torch.Tensor | None = None) -> torch.Tensor:
    """d metric / d input_r of every receiver at the all-ones mask: [R, B, T, d] (emb: the embedding used)."""
    emb = (embed(s.w, s.task.clean_tokens) if emb is None else emb).detach().requires_grad_()
    with torch.enable_grad():
        run = edge_forward(s.w, s.graph, s.task.clean_tokens, emb=emb, keep=True)
        s.metric(run.logits)[0].backward()
    return run.input_grads()[:, 0]


def _edge_scores(s: _Setup, grads: torch.Tensor) -> torch.Tensor:
    """(out_s(ablated) - out_s(clean)) . grads_r for every edge: [E]."""
    with torch.no_grad():
        clean = edge_forward(s.w, s.graph, s.task.clean_tokens, keep=True).outputs[:, 0]  # [S, B, T, d]
        diff = s.ablated - clean
        dense = torch.einsum("sbtd,rbtd->sr", diff, grads)
    return dense[s.graph.src.to(dense.device), s.graph.dst.to(dense.device)]


def _result(graph: EdgeGraph, scores: torch.Tensor, method: str, start: float,
            kept: frozenset[str] | None = None) -> EdgeScores:
    values = scores.detach().double().cpu().tolist()
    return EdgeScores(dict(zip(graph.edges, values, strict=True)), kept, method, time.perf_counter() - start)


def eap(model, task: Task, *, ablation: str = "corrupted", metric: str | Metric | None = None,
        dtype: torch.dtype | None = None, qkv: bool = False) -> EdgeScores:
    """Edge attribution patching: one forward and one backward at the clean run (see the module docstring for the
    sign). ``metric``: None or "metric" (the task's), "kl" (zero gradient at the clean run: every score 0) or a
    function logits [K, B, T, V] -> [K]; ``dtype``: of the computation (default the model's); ``qkv``: score the edges
    into each head's query, key and value inputs apart (:class:`EdgeGraph`)."""
    start = time.perf_counter()
    s = _setup(model, task, ablation, metric, dtype, "EAP", qkv)
    return _result(s.graph, _edge_scores(s, _input_grads(s)), "eap", start)


def eap_ig(model, task: Task, *, steps: int = 5, ablation: str = "corrupted", metric: str | Metric | None = None,
           dtype: torch.dtype | None = None, qkv: bool = False) -> EdgeScores:
    """EAP-IG ("inputs"): gradients averaged over ``steps`` embeddings on the line from the ablated embedding to the
    clean one (``a = k / steps``, ``k = 1..steps``; ``steps=1`` equals :func:`eap`)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"EAP-IG: steps must be an integer >= 1 (1 is plain EAP), got {steps!r}")
    start = time.perf_counter()
    s = _setup(model, task, ablation, metric, dtype, "EAP-IG", qkv)
    with torch.no_grad():
        clean = edge_forward(s.w, s.graph, s.task.clean_tokens, keep=True).outputs[0, 0]  # [B, T, d]
    base = s.ablated[0].expand_as(clean)
    total = None
    for k in range(1, steps + 1):
        g = _input_grads(s, emb=base + (k / steps) * (clean - base))
        total = g if total is None else total + g
    return _result(s.graph, _edge_scores(s, total / steps), "eap-ig", start)


def acdc(model, task: Task, *, threshold: float, metric: str = "kl", ablation: str = "corrupted",
         dtype: torch.dtype | None = None, qkv: bool = False, progress: bool = False) -> EdgeScores:
    """ACDC: iterative edge pruning from the logits down (see the module docstring). Returns the kept edges and, per
    edge, the metric change measured when it was tried (0 for the edges of receivers cut off untried)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"ACDC: threshold must be a number >= 0 (the largest metric change an edge may cause and "
                         f"still be removed), got {threshold!r}")
    if metric not in ("kl", "metric"):
        raise ValueError(f"ACDC: unknown metric {metric!r}; give 'kl' (KL divergence to the clean run) or 'metric' "
                         "(absolute change of the task's metric)")
    start = time.perf_counter()
    s = _setup(model, task, ablation, metric, dtype, "ACDC", qkv)
    g = s.graph
    mask = g.mask(dtype=s.w.W_E.dtype, device=s.w.W_E.device)
    scores = torch.zeros(g.n_edges, dtype=torch.float64)
    src, dst = g.src.tolist(), g.dst.tolist()

    def value(m: torch.Tensor) -> float:
        with torch.no_grad():
            return float(s.metric(edge_forward(s.w, g, task.clean_tokens, m, s.ablated).logits)[0])

    current = value(mask)
    for r in reversed(range(len(g.receivers))):
        name = g.receivers[r]
        incoming = [e for e in reversed(range(g.n_edges)) if dst[e] == r and mask[e] > 0]
        if name != "logit":
            sender = g.senders.index(g.component(name))
            if not any(mask[e] > 0 for e in range(g.n_edges) if src[e] == sender):
                mask[incoming] = 0
                continue
        for e in incoming:
            mask[e] = 0
            new = value(mask)
            change = new - current if metric == "kl" else abs(new - current)
            scores[e] = change
            if change < threshold:
                current = new
            else:
                mask[e] = 1
            if progress:
                print(f"ACDC {g.edges[e]}: change {change:.3g} -> {'removed' if mask[e] == 0 else 'kept'}")
    kept = frozenset(g.edges[e] for e in range(g.n_edges) if mask[e] > 0)
    return _result(g, scores, "acdc", start, kept)


def score_edges(model, task: Task, method: str, **options) -> EdgeScores:
    """Run ``method`` (one of :data:`METHODS`) with its options (``steps`` for eap-ig, ``threshold`` for acdc ...)."""
    funcs = {"eap": eap, "eap-ig": eap_ig, "acdc": acdc}
    if method not in funcs:
        raise ValueError(f"unknown edge method {method!r}; edge methods: {', '.join(METHODS)}")
    return funcs[method](model, task, **options)


def edge_faithfulness_many(model, task: Task, circuits: Sequence[Iterable[str]], *, ablation: str = "corrupted",
                           metric: str | Metric | None = None, dtype: torch.dtype | None = None, chunk: int = 16,
                           qkv: bool = False) -> tuple[torch.Tensor, float, float]:
    """Faithfulness of many edge circuits at once: ``(F [K], m(clean), m(all ablated))`` with
    ``F = (m(circuit) - m(all ablated)) / (m(clean) - m(all ablated))``; ``chunk`` masks run per batch."""
    s = _setup(model, task, ablation, metric, dtype, "edge faithfulness", qkv)
    g, dt, dev = s.graph, s.w.W_E.dtype, s.w.W_E.device
    masks = torch.stack([g.mask(list(c), dtype=dt, device=dev) for c in circuits]) if len(circuits) else None
    ends = torch.stack([g.mask(dtype=dt, device=dev), g.mask([], dtype=dt, device=dev)])
    values = []
    with torch.no_grad():
        m_clean, m_empty = s.metric(edge_forward(s.w, g, task.clean_tokens, ends, s.ablated).logits).tolist()
        for i in range(0, 0 if masks is None else len(masks), chunk):
            values.append(s.metric(edge_forward(s.w, g, task.clean_tokens, masks[i:i + chunk], s.ablated).logits))
    m = torch.cat(values) if values else torch.zeros(0, dtype=dt)
    return (m - m_empty) / (m_clean - m_empty), float(m_clean), float(m_empty)


def edge_faithfulness(model, task: Task, kept_edges: Iterable[str], *, ablation: str = "corrupted",
                      metric: str | Metric | None = None, dtype: torch.dtype | None = None, qkv: bool = False) -> float:
    """``(m(circuit) - m(all ablated)) / (m(clean) - m(all ablated))`` of the circuit of ``kept_edges`` (every other
    edge ablated)."""
    f, _, _ = edge_faithfulness_many(model, task, [list(kept_edges)], ablation=ablation, metric=metric, dtype=dtype,
                                     qkv=qkv)
    return float(f[0])
