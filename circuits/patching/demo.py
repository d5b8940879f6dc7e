"""The patching demo for the dashboard: the induction circuit of ``toy/induction-2l`` found by path patching."""

from __future__ import annotations

from typing import Any

from workbench.store import Store


def demo(store: Store, device: str | None = None, progress: bool = False) -> Any:
    """Discover the induction circuit of toy/induction-2l by path patching (mean ablation, 8 prompts) and store it
    as a ``patching`` run (mode ``discover``); about 10-20 s on a CPU. Returns the RunInfo."""
    from circuits.patching.runs import patching_run
    from workbench.data import make_task
    from workbench.models import load_model

    model = load_model("toy/induction-2l", device=device)
    task = make_task("induction", model.tokenizer, n=8, seed=0, half_len=20)
    task = task.to(next(model.parameters()).device)
    return patching_run(store, model, "toy/induction-2l", task, mode="discover", ablation="mean", top_k=2,
                        min_faithfulness=0.8, params={"seed": 0, "demo": True}, progress=progress)
