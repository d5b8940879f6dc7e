"""``workbench demo``: the demo run of every registered analysis that has one, skipping those already stored.

Each demo is the analysis's own ``demo`` config on its ``demo_model`` (small budgets, small models), so that the
dashboard has something to show within minutes. A demo that fails is reported and the others still run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.analysis import Analysis


def demo_analyses() -> list[Analysis]:
    """The registered analyses that have a demo."""
    from workbench.ui.registry import analyses

    return [a for a in analyses() if a.demo is not None]


def demo_model(analysis: Analysis) -> str | None:
    """The model spec a demo run is stored under."""
    return analysis.demo_model if analysis.needs_model else analysis.spec_of(None, analysis.demo)


def status_path() -> Path:
    """Where a demo pass reports its progress: ``$WORKBENCH_DEMO_STATUS``, default the run store's
    ``../demo-status.json``."""
    from workbench.paths import runs_dir

    env = os.environ.get("WORKBENCH_DEMO_STATUS")
    return Path(env) if env else runs_dir().parent / "demo-status.json"


def read_status(path: Path | None = None) -> dict[str, Any] | None:
    """The last demo pass's progress (``total``, ``done`` rows, ``current``, ``finished``), or None."""
    import json

    try:
        status = json.loads((path or status_path()).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def run_demos(device: str | None = None, force: bool = False, progress: bool = True,
              demos: Sequence[Analysis] | None = None, status: Path | None = None) -> list[dict[str, Any]]:
    """Run every demo whose run is not stored yet (all with ``force``); one status dict per demo: ``kind``,
    ``model``, ``status`` (``stored``, ``computed`` or ``failed``) and ``path`` or ``error``. With ``status``,
    the progress is written there (atomically) after each demo, for the dashboard to show."""
    from workbench.atomic import write_json
    from workbench.store import Store

    store = Store()
    todo = demo_analyses() if demos is None else list(demos)
    done: list[dict[str, Any]] = []
    started = time.time()

    def report(current: dict[str, Any] | None) -> None:
        if status is not None:
            write_json(status, {"pid": os.getpid(), "started": started, "total": len(todo), "done": done,
                                "current": current, "finished": current is None and len(done) == len(todo)})

    for analysis in todo:
        model = demo_model(analysis)
        row = {"kind": analysis.kind, "verb": analysis.verb, "model": model}
        existing = store.latest(analysis.kind, model=model)
        if existing is not None and not force:
            done.append({**row, "status": "stored", "path": str(existing.path)})
            continue
        report(row)
        t0 = time.time()
        try:
            info, _ = analysis.launch(analysis.demo_model if analysis.needs_model else None, analysis.demo,
                                      store=store, device=device, progress=progress)
        except Exception as exc:  # one failing demo must not keep the others (or the dashboard) from running
            done.append({**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                         "seconds": time.time() - t0})
            report(None)
            continue
        done.append({**row, "status": "computed", "path": str(info.path), "seconds": time.time() - t0})
        report(None)
    report(None)
    return done
