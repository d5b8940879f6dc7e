"""Helpers shared by the verbs of the command line: JSON output and the common ``--model/--device/--json`` options."""

from __future__ import annotations

import argparse
import json
from typing import Any


def emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    """Print ``text`` for people, or with ``--json`` one JSON object as the last line of standard output."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(text)


def add_model_args(parser: argparse.ArgumentParser, default_model: str = "smollm2-135m") -> None:
    """Add ``--model``, ``--device`` and ``--json``, which every analysis verb takes."""
    parser.add_argument("--model", default=default_model, help=f"model spec (default {default_model}; see `workbench models`)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (summary and run folder) last")


def run_payload(info: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON object an analysis verb prints: its summary plus the stored run's kind, id and folder."""
    return {"summary": summary, "run": {"kind": info.kind, "run_id": info.run_id, "path": str(info.path)}}
