"""Activation patching: replace one component (a head, a head at one position, a whole attention layer or MLP)
in the clean run and measure how much of the task metric goes.

Score of a component = m(clean) - m(clean with that component replaced), m the task metric averaged over
examples. Positive: the component's clean output carries the behaviour (the same orientation as a CD-T relevance).
The replacement is the ablation: ``"mean"`` (default; its mean output over the task's corrupted prompts at that
position), ``"corrupted"`` (activation patching from the same example's corrupted run) or ``"zero"``.
One intervention per batch row; many rows per forward.
"""

from __future__ import annotations

import torch

from circuits.patching.ablation import References, check_ablation, patch_metrics, references
from workbench.data.task_base import Task

__all__ = ["LAYER_COMPONENTS", "head_patching_scores", "layer_patching_scores"]

LAYER_COMPONENTS: tuple[str, ...] = ("attn", "mlp")


def _head_masks(L: int, H: int, P: int, per_position: bool) -> torch.Tensor:
    """One-hot masks [K, L, pos, H]: K = L*H (whole heads) or L*H*pos, in (layer, head[, pos]) order."""
    if per_position:
        eye = torch.eye(L * H * P, dtype=torch.bool).reshape(L * H * P, L, H, P)
        return eye.permute(0, 1, 3, 2)
    eye = torch.eye(L * H, dtype=torch.bool).reshape(L * H, L, 1, H)
    return eye.expand(L * H, L, P, H)


def head_patching_scores(
    model,
    task: Task,
    *,
    per_position: bool = False,
    ablation: str = "mean",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Activation patching of every head: Tensor [L, H] (whole heads) or [L, H, pos] (``per_position``).

    score[l, h(, p)] = m(clean) - m(clean with head h of layer l (at position p) replaced by its ablation value).
    """
    check_ablation(ablation)
    refs = refs if refs is not None else references(model, task, ablation)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    heads = _head_masks(L, H, P, per_position)
    mlps = torch.zeros(heads.shape[0], L, P, dtype=torch.bool)
    metrics = patch_metrics(model, task, refs, heads, mlps, max_rows=max_rows, progress=progress, desc="heads")
    scores = refs.clean_metric - metrics
    return scores.reshape(L, H, P) if per_position else scores.reshape(L, H)


def layer_patching_scores(
    model,
    task: Task,
    component: str = "attn",
    *,
    per_position: bool = True,
    ablation: str = "mean",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Activation patching of whole layers: Tensor [L, pos] (``per_position``) or [L].

    component ``"attn"`` replaces every head of the layer (the whole attention output), ``"mlp"`` the MLP output.
    """
    if component not in LAYER_COMPONENTS:
        raise ValueError(f"unknown layer component {component!r}; accepted: {', '.join(LAYER_COMPONENTS)}")
    check_ablation(ablation)
    refs = refs if refs is not None else references(model, task, ablation)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    if per_position:
        sites = torch.eye(L * P, dtype=torch.bool).reshape(L * P, L, P)
    else:
        sites = torch.eye(L, dtype=torch.bool).reshape(L, L, 1).expand(L, L, P)
    K = sites.shape[0]
    if component == "attn":
        heads, mlps = sites.unsqueeze(-1).expand(K, L, P, H), torch.zeros(K, L, P, dtype=torch.bool)
    else:
        heads, mlps = torch.zeros(K, L, P, H, dtype=torch.bool), sites
    metrics = patch_metrics(model, task, refs, heads, mlps, max_rows=max_rows, progress=progress, desc=component)
    scores = refs.clean_metric - metrics
    return scores.reshape(L, P) if per_position else scores
