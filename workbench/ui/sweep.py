"""``workbench sweep FILE.toml``: a grid of runs of any registered analysis, run as Ray tasks.

The sweep file (:mod:`workbench.sweep_file`) is read and every task's config checked before Ray starts. Tasks whose
run is already in the store are skipped, so a stopped sweep resumes. Models not yet on disk (SmolLM2's conversion,
zoo members) are prepared once, here, before the tasks start. Each task loads its model, runs the analysis
through the contract (:meth:`workbench.analysis.Analysis.launch`) and writes its own run to the store, atomically
(a task killed mid-write leaves no run). Ray retries a failed task (``--retries``); what still fails is reported in
the summary with its error, and the exit status is 1.

Locally (the default) the sweep starts its own Ray instance on this machine (``--workers`` CPUs, one per task by
default, no dashboard) and stops it at the end; ``--address`` joins a running cluster (started with
``ray start``), whose nodes need the project installed, and the store and ``WORKBENCH_HOME`` (the models) on a shared
filesystem at the same path: each task is told the store's folder and ``WORKBENCH_HOME`` explicitly. A task takes ``--cpus-per-task`` CPUs (torch runs that many threads)
and ``--gpus-per-task`` GPUs (fractions share one); it runs on its GPU when it has one, else on the CPU. Every
attempt of every task leaves a small JSON record (host, pid, threads, seconds, error) in ``<store>/.sweeps/<sweep
id>/``, beside the sweep's summary.

Ray is an optional dependency (``pip install 'interp-workbench[sweep]'``); it is imported only when tasks run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.atomic import write_json
from workbench.errors import ConfigError
from workbench.sweep_file import SweepPlan, SweepTask, find_done, plan_sweep, read_sweep, show_value
from workbench.ui.output import emit, strict_json

INSTALL_HINT = "pip install 'interp-workbench[sweep]'"
#: the summary's numbers shown in the text table per task (all of them are in --json)
HEADLINE_SHOWN = 3


class MissingDependencyError(RuntimeError):
    """An optional dependency the command needs is not installed."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"sweeps run on Ray, which is not installed: {INSTALL_HINT} "
                                     "(or pip install 'ray>=2.9')") from exc
    return ray


def start_ray(ray: Any, *, address: str | None = None, workers: int | None = None) -> bool:
    """Connect this process to Ray: ``address`` joins a cluster, else a new local instance with ``workers`` CPUs
    (default: every core). Returns False when Ray was already initialised here (then it is left as it is)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline first: no usage report
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionError(f"cannot join the Ray cluster at {address}: {exc} (is it up? a cluster with token "
                                  "authentication also needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token "
                                  "here)") from exc
    else:
        ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


def prepare_models(specs: Iterable[str | None]) -> None:
    """Convert or train here, once, every model the tasks will load that is not on disk yet (SmolLM2's conversion, a
    zoo member's training), so that concurrent tasks never build the same model at once."""
    from workbench.models import resolve

    for spec in sorted({s for s in specs if s is not None}):
        resolve(spec)


def _write_attempt(log: Path, index: int, record: dict[str, Any]) -> Path:
    path = log / f"task-{index:05d}-{uuid.uuid4().hex[:8]}.json"
    write_json(path, record)
    return path


def run_task(task: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """One task, in a Ray worker: run ``task["verb"]`` on ``task["model"]`` with ``task["params"]`` and store the run
    under ``env["store"]`` (``WORKBENCH_HOME`` set to ``env["home"]``, torch limited to ``env["threads"]`` threads).
    Returns the run's id, folder, summary and seconds; raises what the analysis raised (Ray then retries)."""
    os.environ["WORKBENCH_HOME"] = env["home"]
    os.environ["WORKBENCH_RUNS"] = env["store"]
    log = Path(env["log"])
    t0 = time.perf_counter()
    record = {"task": task["index"], "host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    attempt = _write_attempt(log, task["index"], {**record, "status": "running"})
    try:
        import torch

        from workbench.store import Store
        from workbench.ui.registry import get

        torch.set_num_threads(int(env["threads"]))
        record["threads"] = torch.get_num_threads()
        analysis = get(task["verb"])
        config = analysis.config(**task["params"])
        model = task["model"] if analysis.needs_model else None
        info, _ = analysis.launch(model, config, store=Store(env["store"]), device=env.get("device"), progress=False)
    except BaseException as exc:
        write_json(attempt, {**record, "status": "failed", "seconds": time.perf_counter() - t0,
                             "error": f"{type(exc).__name__}: {exc}"})
        raise
    seconds = time.perf_counter() - t0
    write_json(attempt, {**record, "status": "done", "seconds": seconds, "run_id": info.run_id})
    return {"run_id": info.run_id, "path": str(info.path), "seconds": seconds, "summary": strict_json(info.summary)}


def _error_text(exc: BaseException) -> str:
    """One line: the task's own exception (Ray wraps it) or Ray's error (a worker that died, ...)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = " ".join(str(cause).split())
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's scalar numbers (not booleans), measurements (floats) before counts (integers)."""
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return dict(sorted(numbers.items(), key=lambda kv: not isinstance(kv[1], float)))


def _attempts(log: Path, index: int) -> int:
    return len(list(log.glob(f"task-{index:05d}-*.json")))


def run_remote(ray: Any, plan: SweepPlan, todo: list[SweepTask], env: dict[str, Any], *, cpus: int, gpus: float, retries: int,
               progress: bool) -> dict[int, dict[str, Any]]:
    """Submit ``todo`` as Ray tasks and wait for them all (a tqdm bar over completions): task index -> outcome
    (``status`` done or failed, and the run's fields or the error)."""
    from tqdm.auto import tqdm

    remote = ray.remote(run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=retries, retry_exceptions=True)
    refs = {remote.remote({"index": t.index, "verb": plan.analysis.verb, "model": t.model, "params": t.params}, env): t
            for t in todo}
    pending, out = list(refs), {}
    with tqdm(total=len(pending), desc=f"sweep {plan.analysis.verb}", unit="task", disable=not progress,
              file=sys.stderr) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                task = refs[ref]
                try:
                    out[task.index] = {"status": "done", **ray.get(ref)}
                except ray.exceptions.RayError as exc:
                    out[task.index] = {"status": "failed", "error": _error_text(exc)}
                bar.update(1)
    return out


def _row(task: SweepTask, outcome: dict[str, Any], log: Path) -> dict[str, Any]:
    summary = outcome.get("summary") or {}
    return {"task": task.index, "model": task.model, "values": task.values, "status": outcome["status"],
            "run_id": outcome.get("run_id"), "path": outcome.get("path"), "seconds": outcome.get("seconds"),
            "attempts": _attempts(log, task.index), "headline": _headline(summary),
            "warnings": list(summary.get("warnings") or []), "error": outcome.get("error")}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    grid = list(rows[0]["values"]) if rows else []
    head = ["#", "model", *grid, "status", "run id", "seconds", "tries", "headline"]
    body = []
    for r in rows:
        shown = list(r["headline"].items())[:HEADLINE_SHOWN]
        numbers = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        body.append([str(r["task"]), r["model"] or "-", *(show_value(r["values"][k]) for k in grid), r["status"],
                     r["run_id"] or "-", seconds, str(r["attempts"] or "-"), numbers or "-"])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head).rstrip(), *(fmt.format(*b).rstrip() for b in body)]


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--workers", args.workers, 1), ("--cpus-per-task", args.cpus_per_task, 1),
                             ("--retries", args.retries, 0), ("--gpus-per-task", args.gpus_per_task, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.address and args.workers is not None:
        raise ConfigError("--workers sets the CPUs of a local Ray instance; a cluster (--address) brings its own")
    if args.device and args.device.startswith("cuda") and not args.gpus_per_task:
        raise ConfigError(f"--device {args.device} needs --gpus-per-task > 0 (Ray schedules a GPU only for the tasks "
                          "that ask for one)")
    if args.device and not args.address:
        from workbench.ui.device import check_device

        check_device(args.device)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep ``args.file``: check it, skip stored runs, run the rest on Ray, print the summary table."""
    from workbench.paths import workbench_home
    from workbench.store import Store
    from workbench.ui.registry import get

    t0 = time.perf_counter()
    _check_args(args)
    plan = plan_sweep(read_sweep(args.file), get, source=str(args.file))
    store = Store()
    done = {} if args.force else find_done(store, plan)
    todo = [t for t in plan.tasks if t.index not in done]
    sweep_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    log = store.root / ".sweeps" / sweep_id
    outcomes: dict[int, dict[str, Any]] = {
        i: {"status": "skipped", "run_id": r.run_id, "path": str(r.path), "summary": r.summary}
        for i, r in done.items()}
    if args.dry_run:
        outcomes.update({t.index: {"status": "to run"} for t in todo})
    elif todo:
        ray = import_ray()
        prepare_models(t.model for t in todo if plan.analysis.needs_model)
        log.mkdir(parents=True, exist_ok=True)
        env = {"home": str(workbench_home()), "store": str(store.root.resolve()), "log": str(log.resolve()),
               "threads": args.cpus_per_task, "device": args.device or (None if args.gpus_per_task else "cpu")}
        started = start_ray(ray, address=args.address, workers=args.workers)
        try:
            outcomes.update(run_remote(ray, plan, todo, env, cpus=args.cpus_per_task, gpus=args.gpus_per_task,
                                       retries=args.retries, progress=not args.quiet))
        finally:
            if started:
                ray.shutdown()
    rows = [_row(t, outcomes[t.index], log) for t in plan.tasks]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    info = {"id": sweep_id, "file": str(args.file), "analysis": plan.analysis.verb, "kind": plan.analysis.kind,
            "tasks": len(rows), **counts, "seconds": time.perf_counter() - t0, "store": str(store.root),
            "log": str(log) if log.is_dir() else None}
    payload = {"sweep": info, "tasks": rows}
    if log.is_dir():
        with contextlib.suppress(OSError):
            write_json(log / "summary.json", strict_json(payload))
    lines = _table(rows)
    lines.append(f"{plan.analysis.verb}: {len(rows)} tasks, {counts['done']} done, {counts['skipped']} skipped "
                 f"(already stored), {counts['failed']} failed" + (f"; {len(todo)} to run" if args.dry_run else "")
                 + f" ({info['seconds']:.0f} s)")
    lines += [f"failed: task {r['task']} ({r['model']}): {r['error']}" for r in rows if r["status"] == "failed"]
    lines += [f"warning: task {r['task']} ({r['model']}): {w}" for r in rows for w in r["warnings"]]
    emit(args, payload, "\n".join(lines))
    return 1 if counts["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` verb to the ``workbench`` parser."""
    p = sub.add_parser("sweep", help="run a grid of analyses (models x options) as Ray tasks, locally or on a cluster",
                       description="Run a grid of any registered analysis (models x option values) as Ray tasks, each "
                       "writing its own run to the store; runs already stored are skipped. The file names the "
                       "analysis, its models, fixed [options] and a [grid] of values (see workbench.sweep_file).")
    p.add_argument("file", metavar="FILE.toml", help="the sweep file: analysis, models, [options], [grid]")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to join (e.g. auto, or HEAD:6379); default: a new local Ray instance")
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray instance (default: every core)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPUs (and torch threads) per task (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per task, fractions allowed (default 0)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: each task's own GPU with --gpus-per-task > 0, else cpu)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed task (default 1)")
    p.add_argument("--force", action="store_true", help="rerun tasks whose run is already stored")
    p.add_argument("--dry-run", action="store_true", help="list the tasks and which are stored; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary table) last")
    p.set_defaults(func=cmd_sweep)
