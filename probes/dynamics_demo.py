"""Demo: a small ``dynamics`` run for the dashboard (the smallest built zoo member, else a few-step tiny model)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from probes.dynamics import config_sequences, folder_statistics
from probes.dynamics_run import run_dynamics, store_dynamics, summarise
from workbench.store import RunInfo, Store

SMALLEST = "llama-d64-l2"


def demo(store: Store, device: str | None = None, progress: bool = False) -> RunInfo:
    """Store a ``dynamics`` run: of ``toy/llama-d64-l2`` when it is built (about 30 s), otherwise of a tiny
    Llama-style model trained for 40 steps on the news corpus in a temporary folder (about 30 s on a CPU).

    ``device`` is accepted for the demo interface; checkpoints are read on the CPU.
    """
    from workbench import zoo

    if zoo.is_built(SMALLEST):
        return run_dynamics(SMALLEST, store, n_sequences=10, progress=progress)
    return _tiny_demo(store, progress)


def _tiny_demo(store: Store, progress: bool) -> RunInfo:
    from workbench.train import CHECKPOINTS, saved_steps
    from workbench.zoo_families import MEMBERS, train_member, with_overrides
    from workbench.zoo_tokenizer import TextConfig

    cfg = with_overrides(MEMBERS[SMALLEST], name="llama-tiny-demo", d_model=32, n_heads=2, d_mlp=88, steps=40,
                         n_checkpoints=10, batch=8, context=64, eval_windows=4, text=TextConfig(("news",), 512))
    config: dict[str, Any] = cfg.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        train_member(cfg, Path(tmp), progress=progress)
        root = Path(tmp) / CHECKPOINTS
        stats = folder_statistics(root, saved_steps(root), config_sequences(config, 10), False, cfg.name, progress)
    return store_dynamics(summarise(stats, {cfg.name: config}, cfg.name), store, f"toy/{cfg.name}", 10)
