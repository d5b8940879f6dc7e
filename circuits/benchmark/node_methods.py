"""The node-level discovery methods the benchmark scores: activation patching, path patching to the logits and CD-T
(its default rules and the published ones).

Each gives a score per component (``L{l}.H{h}``, ``mlp{l}``: whole components over all positions, the grammar of
:mod:`workbench.nodes`). An edge-level benchmark needs a score per edge too: :func:`edges_from_nodes` gives an edge
the smaller |score| of its two ends (the embedding and the logits count as always in), so an edge ranks high only
when both its components do: what a node method says about edges, and no more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from workbench.data.task_base import Task

__all__ = ["NODE_METHODS", "activation_patching", "cdt_nodes", "cdt_published_nodes", "edges_from_nodes",
           "path_patching"]


def _heads(scores: torch.Tensor) -> dict[str, float]:
    """[L, H] -> {"L{l}.H{h}": score}."""
    return {f"L{layer}.H{head}": float(scores[layer, head]) for layer in range(scores.shape[0])
            for head in range(scores.shape[1])}


def _mlps(model: Any, task: Task, ablation: str) -> dict[str, float]:
    from circuits.frozen.facts import ModelFacts
    from circuits.patching.activation import layer_patching_scores

    if not ModelFacts.of(model).has_mlp:
        return {}
    per_layer = layer_patching_scores(model, task, "mlp", per_position=False, ablation=ablation)
    return {f"mlp{layer}": float(per_layer[layer]) for layer in range(per_layer.shape[0])}


def activation_patching(model: Any, task: Task, *, ablation: str = "corrupted") -> dict[str, float]:
    """m(clean) - m(clean with the component's output ablated), every head and MLP."""
    from circuits.patching.activation import head_patching_scores

    return {**_heads(head_patching_scores(model, task, ablation=ablation)), **_mlps(model, task, ablation)}


def path_patching(model: Any, task: Task, *, ablation: str = "corrupted") -> dict[str, float]:
    """Path patching of every head to the logits (its direct effect), MLPs by activation patching."""
    from circuits.patching.path import path_head_scores

    return {**_heads(path_head_scores(model, task, "logits", ablation=ablation)), **_mlps(model, task, ablation)}


def cdt_nodes(model: Any, task: Task, *, ablation: str = "mean") -> dict[str, float]:
    """CD-T's relevance of every head to the task metric (its default rules; CD-T ablates by the mean or zero)."""
    from circuits.cdt.scores import head_scores

    return _heads(head_scores(model, task, ablation="mean" if ablation == "corrupted" else ablation))


def cdt_published_nodes(model: Any, task: Task, *, ablation: str = "mean") -> dict[str, float]:
    """CD-T with the published code's rules (:meth:`circuits.cdt.rules.Rules.published`)."""
    from circuits.cdt.rules import Rules
    from circuits.cdt.scores import head_scores

    return _heads(head_scores(model, task, ablation="mean" if ablation == "corrupted" else ablation,
                              **Rules.published().to_dict()))


NODE_METHODS = {"activation-patching": activation_patching, "path-patching": path_patching, "cdt": cdt_nodes,
                "cdt-published": cdt_published_nodes}


def edges_from_nodes(node_scores: Mapping[str, float], edges: Iterable[str]) -> dict[str, float]:
    """Score each ``"sender->receiver"`` edge by min(|score(sender)|, |score(receiver)|); ``emb`` and ``logit`` (and
    any component a method does not score, such as an MLP to CD-T) count as infinitely strong ends."""

    def strength(node: str) -> float:
        base = node.rsplit(".", 1)[0] if node.endswith((".q", ".k", ".v")) else node
        return abs(node_scores[base]) if base in node_scores else math.inf

    out = {}
    for edge in edges:
        sender, _, receiver = edge.partition("->")
        value = min(strength(sender), strength(receiver))
        out[edge] = 0.0 if math.isinf(value) else value
    return out
