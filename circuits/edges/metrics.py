"""The task's metric over a batch of edge-masked runs, in the logits' own dtype, and the KL divergence to the clean run.

:meth:`workbench.data.Task.metric` computes in float32; the edge methods check identities in float64, so the three
task metrics (``log_prob``, ``logit_diff``, ``prob_diff``) are computed here over logits [K, B, T, V] in their dtype
(equal to the task's own in float32; ``tests/test_edges.py`` checks it).
"""

from __future__ import annotations

import torch

from workbench.data.task_base import Task

__all__ = ["kl_to_clean", "scored_logits", "task_metric"]


def scored_logits(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """The logits the metric reads: [K, B, P, V] (``log_prob``: its score positions, else the answer position)."""
    if task.metric_name == "log_prob":
        return logits[:, :, task.score_positions.to(logits.device)]
    rows = torch.arange(task.batch_size, device=logits.device)
    return logits[:, rows, task.answer_positions.to(logits.device)][:, :, None]


def task_metric(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """The task's metric (mean over examples) of each run: logits [K, B, T, V] -> [K]."""
    dev = logits.device
    if task.metric_name == "log_prob":
        pos = task.score_positions.to(dev)
        lp = torch.log_softmax(logits[:, :, pos], dim=-1)  # [K, B, P, V]
        target = task.clean_tokens.to(dev)[:, pos + 1]  # [B, P]
        return lp.gather(-1, target.expand(lp.shape[0], -1, -1)[..., None])[..., 0].mean((1, 2))
    final = scored_logits(task, logits)[:, :, 0]  # [K, B, V]
    if task.metric_name == "logit_diff":
        correct = final.gather(-1, task.correct.to(dev).expand(final.shape[0], -1)[..., None])[..., 0]
        incorrect = final.gather(-1, task.incorrect.to(dev).expand(final.shape[0], -1)[..., None])[..., 0]
        return (correct - incorrect).mean(1)
    probs = torch.softmax(final, dim=-1)[:, :, task.candidate_tokens.to(dev)]  # [K, B, k]
    return (probs * task.candidate_signs.to(dev, probs.dtype)).sum(-1).mean(1)


def kl_to_clean(task: Task, clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || run) at the scored positions, mean over examples and positions: clean [B, T, V], logits
    [K, B, T, V] -> [K]."""
    p = torch.log_softmax(scored_logits(task, clean_logits[None]), dim=-1)
    q = torch.log_softmax(scored_logits(task, logits), dim=-1)
    return (p.exp() * (p - q)).sum(-1).mean((1, 2))
