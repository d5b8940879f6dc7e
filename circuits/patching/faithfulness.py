"""Faithfulness of a circuit: F = (m(C) - m(empty)) / (m(M) - m(empty)).

m is the task metric averaged over examples; M the model; C the model with every head output and MLP output
outside the circuit ablated (at every position it does not cover); empty the model with all of them ablated.
The embeddings and the unembedding are never ablated. F = 1 for the whole model, 0 for the empty circuit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from circuits.graph import Circuit
from circuits.patching.ablation import References, check_ablation, patch_metrics, references
from circuits.patching.nodes import components, keep_masks
from workbench.data.task_base import Task

__all__ = ["faithfulness", "faithfulness_many"]


def faithfulness_many(
    model,
    task: Task,
    circuits: Sequence[Circuit | Iterable[str]],
    *,
    ablation: str = "mean",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """Faithfulness of several circuits at once: (F [K], m(M), m(empty))."""
    check_ablation(ablation)
    refs = refs if refs is not None else references(model, task, ablation)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    masks = [keep_masks(components(model, task, c), L, H, P) for c in circuits]
    empty = (torch.zeros(1, L, P, H, dtype=torch.bool), torch.zeros(1, L, P, dtype=torch.bool))
    heads = torch.cat([empty[0]] + [m[0].unsqueeze(0) for m in masks])
    mlps = torch.cat([empty[1]] + [m[1].unsqueeze(0) for m in masks])
    metrics = patch_metrics(model, task, refs, ~heads, ~mlps, max_rows=max_rows, progress=progress, desc="circuits")
    m_empty, m_full = float(metrics[0]), refs.clean_metric
    denom = m_full - m_empty
    if abs(denom) < 1e-12:
        raise ValueError(
            f"faithfulness is undefined: the model and the empty circuit score the same on task {task.name!r} "
            f"(m = {m_full:.6g}); the ablation {ablation!r} removes nothing the metric sees"
        )
    return (metrics[1:] - m_empty) / denom, m_full, m_empty


def faithfulness(model, task: Task, circuit: Circuit | Iterable[str], *, ablation: str = "mean") -> float:
    """F = (m(C) - m(empty)) / (m(M) - m(empty)) of ``circuit`` on ``task`` (a float).

    circuit: a :class:`~circuits.graph.Circuit` (or node ids) whose heads are ``L{l}.H{h}`` (all positions) or
    ``L{l}.H{h}@{p}`` and MLPs ``mlp{l}`` / ``mlp{l}@{p}``. Every head and MLP output outside it is ablated:
    ``"mean"`` (its mean over the task's corrupted prompts at that position), ``"zero"`` or ``"corrupted"``
    (the same example's corrupted run). Out-of-range layers, heads or positions raise PatchingInputError.
    """
    scores, _, _ = faithfulness_many(model, task, [circuit], ablation=ablation)
    return float(scores[0])
