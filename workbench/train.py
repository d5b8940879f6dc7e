"""A small resumable trainer for the project's own causal language models.

Determinism and resumption: the batch of step ``s`` is a pure function of ``s`` (the caller's ``batch_fn``), and a
resume checkpoint holds the weights, the optimizer state and the loss history at a step. A run killed at any moment
and started again continues from its last resume checkpoint and ends with the same weights, bit for bit, as a run
that was never interrupted (on the same machine and thread count).

On disk, under ``workdir``:
- ``resume/step-<N>/``: ``model.safetensors``, ``optim.safetensors``, ``state.json`` (only the newest is kept);
- ``checkpoints/step-<N>/``: a Hugging Face folder (weights, config, tokenizer) for every step in ``save_steps``.
Every folder is written atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench.atomic import atomic_dir, clean_stale_tmp, write_json

RESUME = "resume"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainConfig:
    """Optimisation settings. ``save_steps`` lists the steps (updates done; 0 = initial weights) kept as checkpoints;
    ``eval_steps`` more steps evaluated (without a checkpoint)."""

    steps: int
    lr: float = 1e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0
    resume_every: int = 100
    save_steps: tuple[int, ...] = field(default_factory=tuple)
    eval_steps: tuple[int, ...] = field(default_factory=tuple)

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def saved_steps(folder: Path) -> list[int]:
    """Steps with a whole ``step-<N>`` folder under ``folder`` (temporary leftovers ignored)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _optim_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return {k: v.contiguous() for k, v in tensors.items()}, {"param_groups": state["param_groups"]}


def _optim_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_resume(workdir: Path, step: int, model, optimizer, history: list[dict]) -> None:
    root = workdir / RESUME
    with atomic_dir(step_dir(root, step), overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        tensors, meta = _optim_to_tensors(optimizer)
        save_file(tensors, tmp / "optim.safetensors")
        write_json(tmp / "state.json", {"step": step, "optim": meta, "history": history})
    for old in saved_steps(root):
        if old != step:
            shutil.rmtree(step_dir(root, old), ignore_errors=True)


def _load_resume(workdir: Path, model, optimizer) -> tuple[int, list[dict]]:
    root = workdir / RESUME
    clean_stale_tmp(root)
    steps = saved_steps(root)
    if not steps:
        return 0, []
    folder = step_dir(root, steps[-1])
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(folder / "model.safetensors"))
    optimizer.load_state_dict(_optim_from_tensors(load_file(folder / "optim.safetensors"), state["optim"]))
    return int(state["step"]), list(state["history"])


def save_hf_checkpoint(folder: Path, model, tokenizer=None) -> None:
    """Save ``model`` (and ``tokenizer``) as a Hugging Face folder, atomically (replacing an older one)."""
    with atomic_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def train_causal_lm(
    model,
    batch_fn: Callable[[int], torch.Tensor],
    cfg: TrainConfig,
    workdir: Path | str,
    *,
    tokenizer=None,
    eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
    progress: bool = True,
    description: str = "training",
    interventions: Sequence[Any] = (),
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
) -> list[dict]:
    """Train a Hugging Face causal LM (``model(input_ids, labels=...)``) for ``cfg.steps`` updates, resumably.

    ``batch_fn(step)`` returns the token batch [batch, seq] of update ``step`` (a pure function of ``step``).
    ``eval_fn(model, step)`` (optional) is called at every saved or evaluated step and its numbers are kept in the
    history. ``interventions`` change the model while it trains (clamps, :mod:`workbench.clamp`; subsampled
    attention, :mod:`workbench.ssa`): each has ``attach(model)``, ``begin_step(step, tokens)`` (before update
    ``step``), ``begin_eval(step)`` (before the evaluation after ``step`` updates) and ``detach()`` (at the end).
    ``loss_fn(model, batch)`` (optional) replaces the next-token loss, for other models and batches (the zoo's
    image classifiers: a batch of (images, labels)).
    Returns the history: one dict per update (``step``, ``loss``, ``lr``), plus ``eval`` entries at saved steps.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(workdir / CHECKPOINTS)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    start, history = _load_resume(workdir, model, optimizer)
    save_steps, eval_steps = set(cfg.save_steps), set(cfg.save_steps) | set(cfg.eval_steps)

    def save_point(done: int) -> None:
        if done in eval_steps:
            model.eval()
            for iv in interventions:
                iv.begin_eval(done)
            if eval_fn is not None:
                with torch.no_grad():
                    history.append({"step": done, "eval": eval_fn(model, done)})
            if done in save_steps:
                save_hf_checkpoint(step_dir(workdir / CHECKPOINTS, done), model, tokenizer)
            model.train()

    for iv in interventions:
        iv.attach(model)
    try:
        model.train()
        if start == 0:
            save_point(0)
        bar = tqdm(total=cfg.steps, initial=start, desc=description, disable=not progress, unit="step")
        for step in range(start, cfg.steps):
            lr = cfg.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tokens = batch_fn(step)
            for iv in interventions:
                iv.begin_step(step, tokens)
            loss = model(input_ids=tokens, labels=tokens).loss if loss_fn is None else loss_fn(model, tokens)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            history.append({"step": done, "loss": float(loss.detach()), "lr": lr})
            save_point(done)
            if done % cfg.resume_every == 0 or done == cfg.steps:
                _save_resume(workdir, done, model, optimizer, history)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        bar.close()
    finally:
        for iv in interventions:
            iv.detach()
    model.eval()
    return history


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain JSON-ready data."""
    out = asdict(cfg)
    out["save_steps"] = list(cfg.save_steps)
    out["eval_steps"] = list(cfg.eval_steps)
    out["betas"] = list(cfg.betas)
    return out
