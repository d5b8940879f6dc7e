"""What is measured at each evaluation of a (clamped) induction-toy training run, and the phase change.

At every evaluation step the model runs on fixed ``[BOS] + A + A`` sequences (``workbench.induction_toy``) with the
clamps active at that step, and its attention patterns (after any clamp) are recorded:

- ``loss_first_half`` / ``loss_repeated_half``: mean next-token loss on each half (first token of each excluded);
- per head (layer l, head h): the induction score (attention from each repeated token to the token after its earlier
  copy) and the previous-token score (attention to position - 1), the project's own definitions
  (:func:`workbench.induction_toy.induction_head_scores`, :func:`~workbench.induction_toy.previous_token_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from workbench.attention_override import recorded_patterns
from workbench.induction_toy import (
    InductionConfig,
    induction_head_scores,
    induction_tokens,
    previous_token_scores,
    split_losses,
)

#: a drop of the repeated-half loss smaller than this (nats) between two evaluations is no phase change
MIN_DROP = 0.5


def formation_eval(cfg: InductionConfig, n: int = 64, seed: int = 999_999) -> Callable[[Any, int], dict[str, Any]]:
    """An ``eval_fn(model, step)`` for the trainer: the two halves' losses and per-head scores on ``n`` fixed
    sequences. ``induction`` and ``previous_token`` are [layers][heads] lists."""
    tokens = induction_tokens(n, cfg.half_len, cfg.vocab, seed)

    def eval_fn(model: Any, step: int) -> dict[str, Any]:
        x = tokens.to(model.device)
        with recorded_patterns(model) as patterns:
            logits = model(input_ids=x).logits
        first, repeated = split_losses(logits, x, cfg.half_len)
        ind = [induction_head_scores(p[-1].float(), cfg.half_len).tolist() for p in patterns]
        prev = [previous_token_scores(p[-1].float()).tolist() for p in patterns]
        return {"loss_first_half": first, "loss_repeated_half": repeated, "induction": ind, "previous_token": prev}

    return eval_fn


def phase_change(steps: Sequence[int], loss: Sequence[float], min_drop: float = MIN_DROP) -> tuple[int | None, float]:
    """The phase-change step of a repeated-half loss curve, and the drop that marks it.

    With evaluations at ``steps`` (increasing) and losses ``loss``, the phase change is the end step ``s_i`` of the
    interval with the steepest fall, the largest ``(loss[i-1] - loss[i]) / (s_i - s_{i-1})`` (with evenly spaced
    evaluations: the largest drop between consecutive evaluations). It is ``None`` ("no phase change") when that
    interval's drop ``loss[i-1] - loss[i]`` is below ``min_drop`` nats: a slow, steady decline has none. Returns
    ``(step or None, drop in nats of the steepest interval)``.
    """
    if len(steps) != len(loss):
        raise ValueError(f"{len(steps)} steps but {len(loss)} losses")
    if len(steps) < 2:
        return None, 0.0
    s = torch.tensor([float(x) for x in steps], dtype=torch.float64)
    v = torch.tensor([float(x) for x in loss], dtype=torch.float64)
    gaps = s[1:] - s[:-1]
    if bool((gaps <= 0).any()):
        raise ValueError("evaluation steps must increase")
    drops = v[:-1] - v[1:]
    i = int(torch.argmax(drops / gaps))
    drop = float(drops[i])
    return (int(steps[i + 1]) if drop >= min_drop else None), drop

