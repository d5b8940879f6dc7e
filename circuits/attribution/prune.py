"""Influence, pruning and the graph scores (circuit-tracer's ``graph.py`` definitions).

- ``normalize``: A = |adjacency| with each row divided by its sum (rows of zeros stay zero);
- node influence = w^T (A + A^2 + ...) = w^T ((I - A)^-1 - I), w the logit weights (the logit nodes'
  probabilities); summed as a power series, which terminates because the graph is acyclic (A is nilpotent);
- edge influence of the pruned graph: ``A_pruned[t, s] * (influence(t) + w(t))``;
- :func:`prune`: keep the nodes whose influence reaches ``node_threshold`` of the total (the smallest set of the
  most influential ones; tokens and logits always), then the edges reaching ``edge_threshold`` of the edge influence
  of the graph on those nodes, then remove, until nothing changes, feature and error nodes without an outgoing kept
  edge and feature nodes without an incoming one;
- :func:`graph_scores`: the replacement score (token influence / (token + error influence)) and the completeness
  score (the influence-weighted share of each node's normalised input not coming from error nodes), on the
  unpruned graph as circuit-tracer's ``compute_graph_scores``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from circuits.attribution.graph import AttributionGraph

__all__ = ["PruneResult", "edge_influence", "find_threshold", "graph_scores", "influence", "node_influence",
           "normalize", "prune", "prune_adjacency", "scores"]


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """|adjacency| [N, N] with rows scaled to sum 1 (all-zero rows stay zero)."""
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(A: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``weights @ (A + A^2 + ...)`` [N] for a nilpotent A [N, N] (an acyclic graph); RuntimeError if the series has
    not ended after ``max_iter`` terms."""
    current = weights @ A
    total = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return total
        current = current @ A
        total += current
    raise RuntimeError(f"the influence series did not end after {max_iter} terms (is the graph cyclic?)")


def node_influence(adjacency: torch.Tensor, logit_weights: torch.Tensor) -> torch.Tensor:
    """Each node's influence on the logits [N] through the row-normalised |adjacency|."""
    return influence(normalize(adjacency), logit_weights)


def edge_influence(adjacency: torch.Tensor, logit_weights: torch.Tensor) -> torch.Tensor:
    """Each edge's influence [N, N]: its normalised weight times its target's influence plus logit weight."""
    A = normalize(adjacency)
    return A * (influence(A, logit_weights) + logit_weights)[:, None]


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score at which the largest scores first reach ``threshold`` of the total (keep ``scores >= it``)."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum()
    index = int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype)))
    return ordered[min(index, ordered.numel() - 1)]


class PruneResult(NamedTuple):
    """node_mask [N] and edge_mask [N, N] (target, source) of what is kept; cumulative [N]: each node's place in the
    cumulative influence (the fraction of the total held by the nodes at least as influential); influence [N]."""

    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    cumulative: torch.Tensor
    influence: torch.Tensor


def prune_adjacency(adjacency: torch.Tensor, logit_weights: torch.Tensor, *, n_features: int, n_tokens: int,
                    n_logits: int, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Prune a graph in circuit-tracer's node order (features, errors, tokens, logits; see the module docstring)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    infl = node_influence(adjacency, logit_weights)
    node_mask = infl >= find_threshold(infl, node_threshold)
    fixed = n_tokens + n_logits
    node_mask[-fixed:] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    scores_ = edge_influence(pruned, logit_weights)
    edge_mask = scores_ >= find_threshold(scores_.flatten(), edge_threshold)
    edge_mask &= pruned != 0
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-fixed] &= edge_mask[:, :-fixed].any(0)  # feature and error nodes need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # feature nodes need an incoming edge
        if torch.equal(node_mask, before):
            break
    ordered, order = infl.sort(descending=True)
    cumulative = torch.zeros_like(infl)
    cumulative[order] = ordered.cumsum(0) / ordered.sum()
    return PruneResult(node_mask, edge_mask, cumulative, infl)


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """:func:`prune_adjacency` of an :class:`AttributionGraph`."""
    return prune_adjacency(graph.adjacency, graph.logit_weights(), n_features=graph.n_features,
                           n_tokens=graph.n_pos, n_logits=graph.n_logits, node_threshold=node_threshold,
                           edge_threshold=edge_threshold)


def scores(adjacency: torch.Tensor, logit_weights: torch.Tensor, *, n_features: int, n_errors: int, n_tokens: int
           ) -> tuple[float, float]:
    """(replacement score, completeness score) of a graph in circuit-tracer's node order."""
    A = normalize(adjacency)
    infl = influence(A, logit_weights)
    errors = slice(n_features, n_features + n_errors)
    tokens = slice(n_features + n_errors, n_features + n_errors + n_tokens)
    token_infl, error_infl = infl[tokens].sum(), infl[errors].sum()
    replacement = token_infl / (token_infl + error_infl)
    non_error = 1 - A[:, errors].sum(1)
    weight = infl + logit_weights
    completeness = (non_error * weight).sum() / weight.sum()
    return float(replacement), float(completeness)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """(replacement score, completeness score) of an unpruned :class:`AttributionGraph`."""
    return scores(graph.adjacency, graph.logit_weights(), n_features=graph.n_features,
                  n_errors=graph.n_layers * graph.n_pos, n_tokens=graph.n_pos)
