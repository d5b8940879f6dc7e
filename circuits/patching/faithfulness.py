"""Faithfulness of a circuit: F = (m(C) - m(empty)) / (m(M) - m(empty)).

m is the task metric averaged over examples; M the model; C the model with every head output and MLP output
outside the circuit ablated (at every position it does not cover); empty the model with all of them ablated.
The embeddings and the unembedding are never ablated. F = 1 for the whole model, 0 for the empty circuit.

:func:`prune_greedy` removes nodes one at a time while F stays at or above a bound; it can try several removals per
batched pass (speculatively, with the same result as one at a time) and start with one coarse cut of the weakest nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from circuits.graph import Circuit
from circuits.patching.ablation import References, check_ablation, patch_metrics, references
from circuits.patching.nodes import components, keep_masks
from workbench.data.task_base import Task

__all__ = ["faithfulness", "faithfulness_many", "prune_greedy"]


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

    circuit: a :class:`~circuits.graph.Circuit` (or node ids) whose heads are ``L{l}.H{h}`` (all positions) or
    ``L{l}.H{h}@{p}`` and MLPs ``mlp{l}`` / ``mlp{l}@{p}``. Every head and MLP output outside it is ablated:
    ``"mean"`` (its mean over the task's corrupted prompts at that position), ``"zero"`` or ``"corrupted"``
    (the same example's corrupted run). Out-of-range layers, heads or positions raise PatchingInputError.
    """
    scores, _, _ = faithfulness_many(model, task, [circuit], ablation=ablation)
    return float(scores[0])


def _prefix_trials(kept: list[str], removed: set[str], order: list[str], start: int, size: int) -> list[list[str]]:
    """Trial j (j = 1..size): ``kept`` without the removed nodes and without ``order[start:start + j]``."""
    trials = []
    gone = set(removed)
    for node in order[start:start + size]:
        gone.add(node)
        trials.append([n for n in kept if n not in gone])
    return trials


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
    """Greedy pruning by faithfulness: (kept node ids, their F, number of circuits scored).

    nodes: the circuit's node ids (all kept unless pruned). order: the nodes to try removing, first tried first
    (weakest first); nodes not in ``order`` are never removed. A removal is kept when F of what remains stays at or
    above ``bound``.

    batch: most removals tried per batched pass. A pass scores the circuits that drop the next 1, 2, ..., s
    candidates on top of what is already removed; the first that falls below the bound is where the one-at-a-time
    greedy would keep a node, so the result is the same as ``batch=1`` (only the trials after it are wasted). The
    pass size s doubles after a pass whose removals were all kept (up to ``batch``) and halves after one that stopped
    early, so long runs of removals share passes and runs of kept nodes waste little.
    coarse: if > 0, first score ``coarse`` cuts (the weakest 1/coarse, 2/coarse, ... of ``order``) in one pass and
    remove the largest cut that keeps F at or above the bound; the greedy then runs over the rest. Faster on large
    circuits, but no longer the one-at-a-time result.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if coarse < 0:
        raise ValueError(f"coarse must be 0 (off) or a positive number of cuts, got {coarse}")
    if not 0 < bound <= 1:
        raise ValueError(f"bound must be in (0, 1], got {bound!r}")
    refs = refs if refs is not None else references(model, task, ablation)
    kept = list(dict.fromkeys(nodes))
    in_circuit = set(kept)
    missing = [n for n in order if n not in in_circuit]
    if missing:
        raise ValueError(f"order names nodes that are not in the circuit: {', '.join(missing[:5])}")
    order = list(dict.fromkeys(order))
    (f_now,), _, m_empty = faithfulness_many(model, task, [kept], ablation=ablation, refs=refs, max_rows=max_rows)
    f_now, scored, start = float(f_now), 1, 0
    opts = {"ablation": ablation, "refs": refs, "max_rows": max_rows, "metric_empty": m_empty}
    removed: set[str] = set()
    if coarse and len(order) > 1:
        cuts = sorted({max(1, round(len(order) * j / coarse)) for j in range(1, coarse + 1)})
        trials = [[n for n in kept if n not in set(order[:c])] for c in cuts]
        f_cuts, _, _ = faithfulness_many(model, task, trials, **opts)
        scored += len(cuts)
        good = [i for i, f in enumerate(f_cuts.tolist()) if f >= bound]
        if good:
            best = max(cuts[i] for i in good)
            removed.update(order[:best])
            f_now, start = float(f_cuts[cuts.index(best)]), best
    bar = tqdm(total=len(order) - start, desc="pruning", disable=not progress, leave=False)
    step = 1
    while start < len(order):
        size = min(step, len(order) - start)
        trials = _prefix_trials(kept, removed, order, start, size)
        f_trials, _, _ = faithfulness_many(model, task, trials, **opts)
        scored += size
        accepted = 0
        for f in f_trials.tolist():
            if f < bound:
                break
            accepted += 1
            f_now = f
        removed.update(order[start:start + accepted])
        step = min(batch, 2 * step) if accepted == size else max(1, step // 2)
        start += accepted + (1 if accepted < size else 0)  # the first failed node is kept
        bar.update(min(size, accepted + 1))
    bar.close()
    return [n for n in kept if n not in removed], f_now, scored
