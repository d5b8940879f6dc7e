"""Transcoder paths and attribution graphs as discovery methods: per-prompt feature graphs summed into scores per
whole component (the benchmark's :class:`circuits.edges.graph.EdgeGraph`).

Both read the model through per-layer transcoders (:func:`train_task_transcoders`: TopK-16, 4x, trained on the
task's own input distribution, since a ground truth's inputs are synthetic tokens) on the task's clean prompts, each
cut after its answer position, with the logit difference ``correct - incorrect`` as the target. A feature node
``tc{l}.f{i}@t`` and an error node ``err:tc{l}@t`` belong to component ``mlp{l}``, a token node ``emb@t`` to ``emb``,
the target to ``logit``; bias and remainder nodes belong to none and are dropped. Scores are means over the prompts.

- **Transcoder paths** (:func:`transcoder_path_scores`, the search of ``workbench tc-circuit``): heads are nodes of
  the paths (``L{l}.H{h}@t:s``, a step through the head's OV circuit with its clean attention weight), so every edge
  of a path's circuit maps to a component edge. Edge score: the sum of |weight| (contribution to the target) of the
  circuit's edges between two components; node score: the sum of |score| of the component's nodes.
- **Attribution graphs** (:func:`attribution_scores`): attention is frozen and heads are not nodes; an edge
  ``A[t, s]`` is the direct effect of ``s`` on ``t`` through the residual stream and through frozen heads. Heads are
  scored by the attention-mediated parts of the edges they carry: with head ``h`` switched off in the frozen linear
  map (``ReplacementModel.head_mask``), ``A - A_without_h`` is the part of every edge that goes through ``h``, and
  the graph with every head off is the residual part (same position only). With one attention layer between a
  source and a target these parts sum to ``A`` exactly (:func:`head_parts`); a path through two heads in a row is
  counted in each head's part. Each part of edge ``t <- s`` is weighted as circuit-tracer weights an edge's
  influence, ``|part| / sum_s' |A[t, s']| * (influence(t) + logit weight(t))``; the residual part scores the edge
  ``comp(s) -> comp(t)``, the part through ``h`` scores ``comp(s) -> h`` and ``h -> comp(t)`` and head ``h``'s
  node. An MLP's node score is the summed influence of its features and error nodes.

A model whose MLPs are absent or all zero (every attention-only ground truth) has nothing for a transcoder to
replace: :func:`check_applicable` raises :class:`NotApplicableError`, which the benchmark reports as a row of None.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from workbench.data.task_base import Task

__all__ = ["TRANSCODER_METHODS", "NotApplicableError", "attribution_scores", "check_applicable", "component_of",
           "head_parts", "mlp_layers", "train_task_transcoders", "transcoder_path_scores"]

TRANSCODER_METHODS: tuple[str, ...] = ("transcoder-paths", "attribution")

Scores = tuple[dict[str, float], dict[str, float]]  # (component -> score, "sender->receiver" -> score)


class NotApplicableError(ValueError):
    """A transcoder method asked of a model with no working MLP (nothing for a transcoder to replace)."""


def mlp_layers(model: Any) -> list[int]:
    """The layers whose MLP can write anything (output weights not all zero); [] for an attention-only model."""
    from circuits.frozen.facts import ModelFacts

    if not ModelFacts.of(model).has_mlp:
        return []
    W_out = model.W_out.detach()  # [L, m, d]
    return [layer for layer in range(W_out.shape[0]) if bool(W_out[layer].any())]


def check_applicable(model: Any, method: str) -> None:
    """NotApplicableError naming the method when ``model`` has no working MLP."""
    if not mlp_layers(model):
        raise NotApplicableError(f"{method} replaces MLPs by transcoders, and this model has none that writes "
                                 "anything (attention-only, or MLPs zeroed): not applicable")


def train_task_transcoders(model: Any, batch: Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]],
                           *, tokens: int = 65_536, seed: int = 0) -> tuple[dict[int, Any], float]:
    """(layer -> TopK-16 4x transcoder, seconds): trained on about ``tokens`` tokens of ``batch(generator, n)`` ->
    (tokens [n, S], ...), the task's own input distribution, batches of 16 sequences from a generator seeded ``seed``.
    """
    from circuits.dictionaries.transcoder_set import transcoders_by_layer

    device = model.W_E.device

    def source() -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        made = 0
        while made < tokens * 1.05:
            rows = batch(gen, 16)[0]
            made += rows.numel()
            yield rows.to(device)

    start = time.perf_counter()
    found, _ = transcoders_by_layer(model, None, tokens, source=source)
    return found, time.perf_counter() - start


def component_of(node_id: str) -> str | None:
    """The whole component a graph node belongs to: ``tc1.f3@4`` / ``err:tc1@4`` -> ``mlp1``, ``L0.H1@4:3`` ->
    ``L0.H1``, ``emb@3`` -> ``emb``, ``logit...`` -> ``logit``; None for bias and remainder nodes."""
    from workbench.nodes import NodeIdError, parse

    try:
        node = parse(node_id)
    except NodeIdError:
        return None
    if node.kind in ("feature", "error"):
        return f"mlp{node.layer}"
    if node.kind == "head":
        return f"L{node.layer}.H{node.head}"
    return node.kind if node.kind in ("emb", "logit") else None


def _prompts(task: Task, examples: int | None) -> Iterator[tuple[torch.Tensor, int, int]]:
    n = task.batch_size if examples is None else min(examples, task.batch_size)
    for i in range(n):
        pos = int(task.answer_positions[i])
        yield task.clean_tokens[i, :pos + 1], int(task.correct[i]), int(task.incorrect[i])


def _mean(sums: dict[str, float], n: int, keep: set[str]) -> dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items() if k in keep}


def transcoder_path_scores(model: Any, task: Task, transcoders: dict[int, Any], components: set[str],
                           edges: set[str], *, examples: int | None = None, num_branches: int = 8,
                           max_depth: int = 4) -> Scores:
    """Per-component node and edge scores of the transcoder-path circuits of the task's prompts (module docstring);
    ``components`` / ``edges``: the ids to keep (the edge graph's)."""
    from circuits.transcoder_paths.circuit import tc_circuit

    check_applicable(model, "transcoder paths")
    nodes: dict[str, float] = defaultdict(float)
    links: dict[str, float] = defaultdict(float)
    count = 0
    for tokens, correct, incorrect in _prompts(task, examples):
        found = tc_circuit(model, tokens, transcoders, "logit", correct=correct, incorrect=incorrect,
                           num_branches=num_branches, max_depth=max_depth)
        graph = found.circuit.graph
        for node, attrs in graph.nodes(data=True):
            comp = component_of(node)
            if comp is not None and attrs.get("score") is not None:
                nodes[comp] += abs(float(attrs["score"]))
        for src, dst, attrs in graph.edges(data=True):
            a, b = component_of(src), component_of(dst)
            if a is not None and b is not None:
                links[f"{a}->{b}"] += abs(float(attrs["weight"]))
        count += 1
    return _mean(nodes, count, components), _mean(links, count, edges)


def head_parts(rm: Any, targets: Any) -> tuple[Any, torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """(the attribution graph of ``rm`` for ``targets``, its residual part [N, N] (every head off), the part through
    each head ``(layer, head)`` [N, N] (the graph less the graph with that head off))."""
    from circuits.attribution.attribute import attribute

    L, H = rm.n_layers, rm.w.n_heads
    rm.head_mask = None
    graph = attribute(rm, targets)
    parts: dict[tuple[int, int], torch.Tensor] = {}
    try:
        rm.head_mask = torch.zeros(L, H)
        residual = attribute(rm, targets).adjacency
        for layer in range(L):
            for head in range(H):
                mask = torch.ones(L, H)
                mask[layer, head] = 0
                rm.head_mask = mask
                parts[(layer, head)] = graph.adjacency - attribute(rm, targets).adjacency
    finally:
        rm.head_mask = None
    return graph, residual, parts


def attribution_scores(model: Any, task: Task, transcoders: dict[int, Any], components: set[str], edges: set[str],
                       *, examples: int | None = None) -> Scores:
    """Per-component node and edge scores of the attribution graphs of the task's prompts (module docstring)."""
    from circuits.attribution.attribute import logit_difference
    from circuits.attribution.prune import node_influence
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
    from circuits.frozen.facts import ModelFacts

    check_applicable(model, "attribution graphs")
    sets = feature_sets_from_transcoders(transcoders, ModelFacts.of(model))
    nodes: dict[str, float] = defaultdict(float)
    links: dict[str, float] = defaultdict(float)
    count = 0
    for tokens, correct, incorrect in _prompts(task, examples):
        rm = ReplacementModel(model, tokens, sets)
        graph, residual, parts = head_parts(rm, logit_difference(rm, correct, incorrect))
        weights = graph.logit_weights()
        influence = node_influence(graph.adjacency, weights)
        comp = [component_of(n) for n in graph.node_ids()]
        for i, c in enumerate(comp):
            if c is not None and c.startswith("mlp"):
                nodes[c] += float(influence[i])
        scale = (influence + weights) / graph.adjacency.abs().sum(1).clamp(min=1e-10)  # [N] per target row
        for label, part in [(None, residual), *parts.items()]:
            weighted = part.abs() * scale[:, None]
            t, s = torch.nonzero(weighted, as_tuple=True)
            for ti, si, w in zip(t.tolist(), s.tolist(), weighted[t, s].tolist(), strict=True):
                a, b = comp[si], comp[ti]
                if a is None or b is None:
                    continue
                if label is None:
                    links[f"{a}->{b}"] += w
                else:
                    head = f"L{label[0]}.H{label[1]}"
                    links[f"{a}->{head}"] += w
                    links[f"{head}->{b}"] += w
                    nodes[head] += w
        count += 1
    return _mean(nodes, count, components), _mean(links, count, edges)
