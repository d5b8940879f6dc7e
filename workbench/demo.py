"""``workbench demo``: compute the demo run of every analysis that exists, skipping those already stored.

Each demo is small (toy models, small budgets) so that ``make app`` has something to show within minutes.
A demo is a function ``(store, device, progress) -> RunInfo`` that writes one run; :data:`DEMOS` names each by
``"module:function"`` so that the core never imports an analysis package until the demo runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.store import Store


@dataclass(frozen=True)
class Demo:
    """A demo run: its run kind, the model it uses, and the function that computes and stores it."""

    kind: str
    model: str | None
    run: Callable[[Store, str | None, bool], Any] | str

    def function(self) -> Callable[[Store, str | None, bool], Any]:
        """The demo's function (imported on first use when given as ``"module:function"``)."""
        if callable(self.run):
            return self.run
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


def zoo_training_demo(store: Store, device: str | None, progress: bool, name: str = "induction-2l") -> Any:
    """Train (or reuse) zoo member ``name`` and store its training curve and report as a ``zoo-training`` run."""
    import pandas as pd
    import torch

    from workbench import zoo

    zoo.build(name, progress=progress)
    info = zoo.manifest(name)
    losses = pd.DataFrame([h for h in info["history"] if "loss" in h])
    evals = pd.DataFrame([{"step": h["step"], **h["eval"]} for h in info["history"] if "eval" in h])
    report = info.get("report", {})
    with store.create("zoo-training", model=f"toy/{name}", params={"config": info["config"]}) as run:
        run.save_table("loss", losses)
        run.save_table("eval", evals)
        if report:
            run.save_tensors(
                "heads",
                {
                    "induction_scores": torch.tensor(report["induction_scores"]),
                    "previous_token_scores": torch.tensor(report["previous_token_scores"]),
                },
            )
            run.summary.update({k: v for k, v in report.items() if not isinstance(v, list) or k.startswith("best")})
        run.summary["final_loss"] = info["final_loss"]
        run.summary["checkpoints"] = len(info["steps"])
    return run.info


DEMOS: list[Demo] = [
    Demo(kind="zoo-training", model="toy/induction-2l", run=zoo_training_demo),
    Demo(kind="sparsity", model="smollm2-135m", run="probes.demos:sparsity_demo"),
    Demo(kind="massive", model="smollm2-135m", run="probes.demos:massive_demo"),
    Demo(kind="probe", model="smollm2-135m", run="probes.demos:probe_demo"),
    Demo(kind="dynamics", model=None, run="probes.dynamics_demo:demo"),
    Demo(kind="dictionary", model="smollm2-135m", run="circuits.dictionaries.demo:demo"),
    Demo(kind="cdt", model="toy/induction-2l", run="circuits.cdt.demo:demo"),
    Demo(kind="patching", model="toy/induction-2l", run="circuits.patching.demo:demo"),
    Demo(kind="paths", model="smollm2-135m", run="circuits.paths.demo:demo"),
    Demo(kind="tc-circuit", model="toy/llama-d64-l4", run="circuits.transcoder_paths.demo:demo"),
]


def run_demos(device: str | None = None, force: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run every demo whose run is not stored yet (all with ``force``); returns one status dict per demo.

    A demo that raises is reported with status ``failed`` and its error; the others still run.
    """
    store = Store()
    done = []
    for demo in DEMOS:
        existing = store.latest(demo.kind, model=demo.model)
        if existing is not None and not force:
            done.append({"kind": demo.kind, "model": demo.model, "status": "stored", "path": str(existing.path)})
            continue
        try:
            info = demo.function()(store, device, progress)
        except Exception as exc:  # one failing demo must not keep the others (or the dashboard) from running
            done.append({"kind": demo.kind, "model": demo.model, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            continue
        done.append({"kind": demo.kind, "model": demo.model, "status": "computed", "path": str(info.path)})
    return done
