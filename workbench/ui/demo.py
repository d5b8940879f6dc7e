"""``workbench demo``: the demo run of every registered analysis that has one, skipping those already stored.

Each demo is the analysis's own ``demo`` config on its ``demo_model`` (small budgets, small models), so that the
dashboard has something to show within minutes. A demo that fails is reported and the others still run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.analysis import Analysis


def demo_analyses() -> list[Analysis]:
    """The registered analyses that have a demo."""
    from workbench.ui.registry import analyses

    return [a for a in analyses() if a.demo is not None]


def demo_model(analysis: Analysis) -> str | None:
    """The model spec a demo run is stored under."""
    return analysis.demo_model if analysis.needs_model else analysis.spec_of(None, analysis.demo)


def run_demos(device: str | None = None, force: bool = False, progress: bool = True,
              demos: Sequence[Analysis] | None = None) -> list[dict[str, Any]]:
    """Run every demo whose run is not stored yet (all with ``force``); one status dict per demo: ``kind``,
    ``model``, ``status`` (``stored``, ``computed`` or ``failed``) and ``path`` or ``error``."""
    from workbench.store import Store

    store = Store()
    done = []
    for analysis in demo_analyses() if demos is None else demos:
        model = demo_model(analysis)
        row = {"kind": analysis.kind, "verb": analysis.verb, "model": model}
        existing = store.latest(analysis.kind, model=model)
        if existing is not None and not force:
            done.append({**row, "status": "stored", "path": str(existing.path)})
            continue
        try:
            info, _ = analysis.launch(analysis.demo_model if analysis.needs_model else None, analysis.demo,
                                      store=store, device=device, progress=progress)
        except Exception as exc:  # one failing demo must not keep the others (or the dashboard) from running
            done.append({**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            continue
        done.append({**row, "status": "computed", "path": str(info.path)})
    return done
