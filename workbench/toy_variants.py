"""Variants of the induction toy trained under an intervention (a clamp, subsampled attention), cached and resumable.

A variant is identified by the toy's configuration, a description of its intervention and its evaluation steps; it
trains into ``$WORKBENCH_HOME/toy-variants/<key>/`` (resume checkpoints while training, the final checkpoint, and
``history.json`` written last), so an interrupted sweep continues where it stopped and a finished variant is reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workbench.atomic import write_json
from workbench.errors import ConfigError
from workbench.induction_toy import InductionConfig, train_induction
from workbench.paths import workbench_home

HISTORY = "history.json"


def toy_config(opts: Any) -> InductionConfig:
    """The toy of an analysis config with fields ``vocab``, ``half_len``, ``d_model``, ``heads``, ``layers``,
    ``batch``, ``steps``, ``lr``, ``seed`` (warm-up: 5% of the steps, at most 100)."""
    return InductionConfig(vocab=opts.vocab, half_len=opts.half_len, d_model=opts.d_model, n_heads=opts.heads,
                           n_layers=opts.layers, batch=opts.batch, steps=opts.steps, lr=opts.lr,
                           warmup=max(1, min(100, opts.steps // 20)), seed=opts.seed,
                           resume_every=max(50, opts.steps // 4))


def check_train_device(device: str | None) -> None:
    """ConfigError for a training device this machine lacks (None and ``cpu`` always pass)."""
    if device in (None, "cpu"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r} is not a device name; accepted: cpu, cuda, cuda:N") from exc
    if dev.type != "cuda" or not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: not available here; accepted: cpu"
                          + (", cuda, cuda:N" if torch.cuda.is_available() else ""))


def variant_dir(cfg: InductionConfig, what: dict[str, Any], eval_steps: Sequence[int]) -> Path:
    """The cache folder of a variant: a hash of the toy's config, ``what`` (the intervention, JSON-ready) and the
    evaluation steps."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("resume_every", "n_checkpoints")}  # no effect
    doc = json.dumps({"config": config, "what": what, "eval_steps": list(eval_steps)}, sort_keys=True)
    key = hashlib.sha256(doc.encode()).hexdigest()[:16]
    return workbench_home() / "toy-variants" / key


def train_variant(cfg: InductionConfig, what: dict[str, Any], interventions: Sequence[Any],
                  eval_fn: Callable[[Any, int], dict[str, Any]], eval_steps: Sequence[int], *,
                  device: str | None = None, progress: bool = False, reuse: bool = True) -> tuple[list[dict], Path]:
    """Train the toy under ``interventions`` (or reuse a finished identical variant): ``(history, folder)``.

    ``history`` is the trainer's (one entry per update, ``eval`` entries at ``eval_steps``); the final weights are in
    ``folder/checkpoints/step-<steps>``. The evaluation numbers are cached with the variant: ``what`` must name
    everything that changes them (a different ``eval_fn`` needs a different ``what``). ``folder/variant.json``
    keeps the seconds the last training session took.
    """
    folder = variant_dir(cfg, what, eval_steps)
    done = folder / HISTORY
    if reuse and done.is_file():
        return json.loads(done.read_text()), folder
    start = time.perf_counter()
    history = train_induction(cfg, folder, progress=progress, interventions=interventions, eval_fn=eval_fn,
                              eval_steps=eval_steps, save_steps=(cfg.steps,), device=device)
    write_json(folder / "variant.json", {"config": cfg.to_dict(), "what": what,
                                         "seconds_last_session": time.perf_counter() - start})
    write_json(done, history)
    return history, folder


def evenly_spaced(steps: int, count: int) -> list[int]:
    """``count + 1`` distinct evaluation steps from 0 to ``steps``, evenly spaced (fewer when ``steps < count``)."""
    return sorted({round(steps * i / count) for i in range(count + 1)})
