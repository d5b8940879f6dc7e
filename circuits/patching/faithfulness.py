"""Faithfulness of a circuit: F = (m(C) - m(empty)) / (m(M) - m(empty)).

m is the task metric averaged over examples; M the model; C the model with every head output and MLP output
outside the circuit ablated (at every position it does not cover); empty the model with all of them ablated.
The embeddings and the unembedding are never ablated. F = 1 for the whole model, 0 for the empty circuit.

:func:`prune_greedy` removes nodes one at a time while F stays at or above a bound (:func:`circuits.discovery.greedy_prune`
with F from :class:`Faithfulness`); it can try several removals per batched pass (speculatively, with the same result as
one at a time) and start with one coarse cut of the weakest nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from circuits.discovery import greedy_prune
from circuits.patching.ablation import References, check_ablation, patch_metrics, references
from circuits.patching.nodes import components, keep_masks
from workbench.circuit import Circuit
from workbench.data.task_base import Task

__all__ = ["Faithfulness", "faithfulness", "faithfulness_many", "prune_greedy"]


def faithfulness_many(
    model,
    task: Task,
    circuits: Sequence[Circuit | Iterable[str]],
    *,
    ablation: str = "mean",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
    metric_empty: float | None = None,
) -> tuple[torch.Tensor, float, float]:
    """Faithfulness of several circuits at once: (F [K], m(M), m(empty)).

    metric_empty: m(empty) when already known (from an earlier call with the same ``refs``); otherwise the empty
    circuit is scored in the same batched pass.
    """
    check_ablation(ablation)
    refs = refs if refs is not None else references(model, task, ablation)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    masks = [keep_masks(components(model, task, c), L, H, P) for c in circuits]
    empty = [] if metric_empty is not None else [
        (torch.zeros(L, P, H, dtype=torch.bool), torch.zeros(L, P, dtype=torch.bool))
    ]
    heads = torch.stack([m[0] for m in empty + masks])
    mlps = torch.stack([m[1] for m in empty + masks])
    metrics = patch_metrics(model, task, refs, ~heads, ~mlps, max_rows=max_rows, progress=progress, desc="circuits")
    if metric_empty is None:
        metric_empty, metrics = float(metrics[0]), metrics[1:]
    m_empty, m_full = float(metric_empty), refs.clean_metric
    denom = m_full - m_empty
    if abs(denom) < 1e-12:
        raise ValueError(
            f"faithfulness is undefined: the model and the empty circuit score the same on task {task.name!r} "
            f"(m = {m_full:.6g}); the ablation {ablation!r} removes nothing the metric sees"
        )
    return (metrics - m_empty) / denom, m_full, m_empty


def faithfulness(model, task: Task, circuit: Circuit | Iterable[str], *, ablation: str = "mean") -> float:
    """F = (m(C) - m(empty)) / (m(M) - m(empty)) of ``circuit`` on ``task`` (a float).

    circuit: a :class:`~workbench.circuit.Circuit` (or node ids) whose heads are ``L{l}.H{h}`` (all positions) or
    ``L{l}.H{h}@{p}`` and MLPs ``mlp{l}`` / ``mlp{l}@{p}``. Every head and MLP output outside it is ablated:
    ``"mean"`` (its mean over the task's corrupted prompts at that position), ``"zero"`` or ``"corrupted"``
    (the same example's corrupted run). Out-of-range layers, heads or positions raise PatchingInputError.
    """
    scores, _, _ = faithfulness_many(model, task, [circuit], ablation=ablation)
    return float(scores[0])


class Faithfulness:
    """F of circuits on one task under one ablation, the references built once (on first use unless given) and
    m(empty) scored once.

    ``metric_model`` / ``metric_empty``: m(M) and m(empty), known after the first call.
    """

    def __init__(self, model, task: Task, *, ablation: str = "mean", refs: References | None = None,
                 max_rows: int | None = None) -> None:
        check_ablation(ablation)
        self.model, self.task, self.ablation, self.max_rows, self.refs = model, task, ablation, max_rows, refs
        self.metric_model: float | None = None
        self.metric_empty: float | None = None

    def __call__(self, circuits: Sequence[Circuit | Iterable[str]]) -> list[float]:
        """F of each circuit (a list of floats), in one batched pass (the first call also scores the empty one)."""
        if self.refs is None:
            self.refs = references(self.model, self.task, self.ablation)
        f, self.metric_model, self.metric_empty = faithfulness_many(
            self.model, self.task, circuits, ablation=self.ablation, refs=self.refs, max_rows=self.max_rows,
            metric_empty=self.metric_empty)
        return f.tolist()


def prune_greedy(
    model,
    task: Task,
    nodes: Sequence[str],
    order: Sequence[str],
    *,
    bound: float,
    ablation: str = "mean",
    refs: References | None = None,
    batch: int = 1,
    coarse: int = 0,
    max_rows: int | None = None,
    progress: bool = False,
) -> tuple[list[str], float, int]:
    """Greedy pruning by faithfulness (:func:`circuits.discovery.greedy_prune` with F from :class:`Faithfulness`):
    (kept node ids, their F, number of circuits scored).

    nodes: the circuit's node ids (all kept unless pruned). order: the nodes to try removing, first tried first
    (weakest first); nodes not in ``order`` are never removed. A removal is kept when F of what remains stays at or
    above ``bound``. batch (the speed, not the result) and coarse (one cut of the weakest first): see
    :func:`circuits.discovery.greedy_prune`.
    """
    score = Faithfulness(model, task, ablation=ablation, refs=refs, max_rows=max_rows)
    return greedy_prune(score, nodes, order, bound=bound, batch=batch, coarse=coarse, progress=progress)
