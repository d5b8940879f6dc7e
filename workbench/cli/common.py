"""Helpers shared by the verbs of the command line: JSON output, the report of a stored run, and the option blocks
several verbs take (``--model/--device/--json``, ``--task/--n/--seed``).

Building the parser must stay cheap (``workbench --help`` and argument errors import neither torch nor the analyses):
verb modules import heavy libraries inside their handlers, and the choices argparse lists are plain tuples here that
mirror the libraries' constants (the tests check that they agree).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

# workbench.data.TASKS
TASKS: tuple[str, ...] = ("induction", "greater-than", "ioi", "sentiment")


def emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    """Print ``text`` for people, or with ``--json`` one JSON object as the last line of standard output."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(text)


def add_json_arg(parser: argparse.ArgumentParser, what: str | None = "summary and run folder") -> None:
    """Add ``--json``: print one JSON object (holding ``what``) as the last line of standard output."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object" + (f" ({what}) last" if what else ""))


def add_model_args(parser: argparse.ArgumentParser, default_model: str = "smollm2-135m") -> None:
    """Add ``--model``, ``--device`` and ``--json``, which every analysis verb takes."""
    parser.add_argument("--model", default=default_model, help=f"model spec (default {default_model}; see `workbench models`)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    add_json_arg(parser)


def add_task_args(parser: argparse.ArgumentParser, default_task: str, n: int = 8) -> None:
    """Add ``--task`` (one of :data:`TASKS`), ``--n`` (examples) and ``--seed``."""
    parser.add_argument("--task", default=default_task, choices=TASKS, help=f"task (default {default_task})")
    parser.add_argument("--n", type=int, default=n, help=f"examples (default {n})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples (default 0)")


def run_payload(info: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON object an analysis verb prints: its summary plus the stored run's kind, id and folder."""
    return {"summary": summary, "run": {"kind": info.kind, "run_id": info.run_id, "path": str(info.path)}}


def report_run(args: argparse.Namespace, info: Any, lines: list[str], summary: dict[str, Any] | None = None) -> int:
    """Print what a verb stored: ``lines`` and then ``run: <folder>`` for people, or with ``--json``
    :func:`run_payload` (``summary`` defaults to the run's own). Returns the exit status, 0."""
    summary = info.summary if summary is None else summary
    emit(args, run_payload(info, summary), "\n".join([*lines, f"run: {info.path}"]))
    return 0
