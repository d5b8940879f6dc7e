"""The dashboard's CD-T demo: head/position relevance and the CD-T circuit of ``toy/induction-2l`` (under a minute on CPU)."""

from __future__ import annotations

import dataclasses

from circuits.cdt.runs import analyse, save_run

__all__ = ["demo"]

MODEL = "toy/induction-2l"


def demo(store, device: str | None = None, progress: bool = True):
    """Store one ``cdt`` run on ``toy/induction-2l``: the induction task (8 examples, half length 24) scored by its
    single-position logit difference, every head at every position, and the discovered circuit; returns its RunInfo."""
    from workbench.data import make_task
    from workbench.models import load_model

    model = load_model(MODEL, device=device)
    task = make_task("induction", model.tokenizer, n=8, seed=0, half_len=24)
    task = dataclasses.replace(task, metric_name="logit_diff", score_positions=None)
    task = task.to(next(model.parameters()).device)
    result = analyse(model, task, per_position=True, top_k=5, run_discovery=True, faithfulness_bound=0.8,
                     progress=progress)
    params = {"task": "induction", "n": 8, "seed": 0, "task_options": {"half_len": 24}, "metric": "logit_diff",
              "sources": None, "targets": ["logit"], "per_position": True, "ablation": "mean", "top_k": 5,
              "discover": True, "faithfulness_bound": 0.8, "texts": []}
    return save_run(store, MODEL, params, result)
