"""Continuous sparsification of weight masks toward the bigram distribution (Chang & Bergen 2025, after Savarese et
al. 2020).

One logit s per masked weight; the soft mask is m = sigmoid(beta * s), with beta annealed geometrically from 1 to
``beta_final`` over the steps; the deterministic hard mask (evaluation) is s > 0. The loss on a batch of text rows
(full contexts, as the paper trains: every real position of a row whose current token's bigram row is kept)::

    loss = mean_positions CE(p_bigram(. | current token), q_masked(. | context)) + lambda * mean(m)

(mean(m): the expected kept fraction; the paper's L0 term sum(m) divided by the mask size). The model's weights are
frozen; Adam updates the logits only. With ``budget`` < 1, lambda grows by 5% after every step whose expected kept
fraction is above the budget (from 0.001 when it was 0), and the final hard mask keeps at most ``budget`` of the weights (the largest logits
among s > 0). Logits and Adam's state are checkpointed (safetensors, atomically) every ``checkpoint_s`` seconds
into ``workdir``; a run started again with the same settings continues from there.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuits.bigram.counts import BigramTable
from circuits.bigram.masks import MaskGroup, masked_logits
from workbench.atomic import atomic_dir, write_json

__all__ = ["MaskTraining", "ResumeMismatchError", "hard_masks", "train_masks"]


class ResumeMismatchError(ValueError):
    """A workdir holds a checkpoint made with other settings."""


@dataclass
class MaskTraining:
    """The trained logits {name: [weight shape]}, one history row per step (step, loss, kept_soft, beta, lambda),
    the final lambda and the step a resume started from (0: fresh)."""

    logits: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    lam: float = 0.0
    resumed_from: int = 0


def bigram_loss(model: Any, table: BigramTable, tokens: torch.Tensor, real: torch.Tensor,
                masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the masked model against the bigram row of each position's current token, over the
    real positions (``real`` [batch, seq] bool) whose row is kept; (loss, positions). Zero with no position."""
    use = real & table.kept(tokens)
    log_q = torch.log_softmax(masked_logits(model, tokens, masks).float(), dim=-1)[use]   # [P, V]
    if log_q.shape[0] == 0:
        return log_q.sum() * 0.0, 0
    return table.cross_entropy(log_q, tokens[use]).mean(), int(log_q.shape[0])


def hard_masks(logits: dict[str, torch.Tensor], budget: float = 1.0) -> dict[str, torch.Tensor]:
    """s > 0 as float masks; with ``budget`` < 1, only the largest positive logits up to ``budget`` of all weights."""
    masks = {n: (s > 0).float() for n, s in logits.items()}
    total = sum(s.numel() for s in logits.values())
    kept = sum(int(m.sum()) for m in masks.values())
    limit = int(math.floor(budget * total))
    if kept > limit:
        flat = torch.cat([s.detach().reshape(-1) for s in logits.values()])
        threshold = torch.topk(flat, max(limit, 1)).values[-1] if limit > 0 else flat.max() + 1
        masks = {n: ((s > 0) & (s >= threshold)).float() for n, s in logits.items()}
    return masks


def _save(workdir: Path, step: int, logits: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          settings: dict, history: list, lam: float) -> None:
    tensors = {f"logit/{n}": s.detach().contiguous().cpu() for n, s in logits.items()}
    for n, s in logits.items():
        for key, value in optimizer.state.get(s, {}).items():
            tensors[f"adam/{key}/{n}"] = (value if torch.is_tensor(value) else torch.tensor(value)).contiguous().cpu()
    with atomic_dir(workdir / "resume", overwrite=True) as tmp:
        save_file(tensors, tmp / "state.safetensors")
        write_json(tmp / "state.json", {"step": step, "settings": settings, "history": history, "lambda": lam})


def _load(workdir: Path, logits: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          settings: dict) -> tuple[int, list, float] | None:
    folder = workdir / "resume"
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    saved = json.loads(json.dumps(state["settings"]))
    if saved != json.loads(json.dumps(settings)):
        diffs = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ResumeMismatchError(f"{folder}: the checkpoint was made with other settings ({', '.join(diffs)}); "
                                  "use another --workdir or delete that folder")
    tensors = load_file(folder / "state.safetensors")
    for n, s in logits.items():
        with torch.no_grad():
            s.copy_(tensors[f"logit/{n}"])
        entry = {k.split("/")[1]: v.to(s.device) for k, v in tensors.items()
                 if k.startswith("adam/") and k.split("/", 2)[2] == n}
        if entry:
            entry["step"] = entry["step"].cpu()
            optimizer.state[s] = entry
    return int(state["step"]), list(state["history"]), float(state["lambda"])


def train_masks(model: Any, table: BigramTable, groups: list[MaskGroup], batches: Callable[[], Iterator[Any]], *,
                steps: int, lr: float = 0.05, lam: float = 1.0, beta_final: float = 100.0, init: float = 0.0,
                budget: float = 1.0, workdir: Path | None = None, settings: dict | None = None,
                checkpoint_s: float = 60.0, stop_after: int | None = None, progress: bool = False) -> MaskTraining:
    """Train one logit per weight of ``groups`` for ``steps`` Adam steps on ``batches()`` (an endless iterator of
    token batches with ``tokens`` and ``attention_mask`` [batch, seq]; it is restarted on resume and the batches
    already used are skipped, so a resumed run sees what an uninterrupted one would). ``stop_after``: end (with a
    checkpoint) after that many steps of this call, as if killed. Everything lives on the model's device."""
    device = next(model.parameters()).device
    table = table.to(device)
    logits = {g.name: torch.full(g.shape, float(init), device=device, requires_grad=True) for g in groups}
    total = sum(g.size for g in groups)
    optimizer = torch.optim.Adam(list(logits.values()), lr=lr)
    settings = dict(settings or {}, steps=steps, lr=lr, lam=lam, beta_final=beta_final, init=init, budget=budget)
    start, history = 0, []
    if workdir is not None:
        loaded = _load(Path(workdir), logits, optimizer, settings)
        if loaded is not None:
            start, history, lam = loaded
    resumed_from = start
    stream = batches()
    for _ in range(start):
        next(stream)
    last_save = time.monotonic()
    from tqdm.auto import tqdm

    bar = tqdm(range(start, steps), desc="bigram masks", disable=not progress, initial=start, total=steps)
    for step in bar:
        batch = next(stream)
        tokens = batch.tokens.to(device)
        real = batch.attention_mask.to(device).bool()
        beta = beta_final ** (step / max(steps - 1, 1))
        soft = {n: torch.sigmoid(beta * s) for n, s in logits.items()}
        ce, _ = bigram_loss(model, table, tokens, real, soft)
        kept = sum(m.sum() for m in soft.values()) / total
        loss = ce + lam * kept
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step + 1, "loss": float(ce.detach()), "kept_soft": float(kept.detach()), "beta": beta, "lambda": lam})
        if budget < 1.0 and float(kept.detach()) > budget:
            lam = max(lam, 1e-3) * 1.05
        bar.set_postfix(ce=f"{float(ce.detach()):.3f}", kept=f"{float(kept.detach()):.4f}")
        done = step + 1
        stopping = stop_after is not None and done - resumed_from >= stop_after
        if workdir is not None and (done == steps or stopping or time.monotonic() - last_save > checkpoint_s):
            _save(Path(workdir), done, logits, optimizer, settings, history, lam)
            last_save = time.monotonic()
        if stopping:
            break
    return MaskTraining({n: s.detach() for n, s in logits.items()}, history, lam, resumed_from)
