"""Start a ``workbench`` verb from another program (the dashboard) with a live progress fraction.

The command line is the one place that maps parameters to library calls, so the dashboard's "start an analysis"
form is generated from a verb's argparse options (:func:`verb_options`) and runs the verb in a subprocess
(:func:`run_verb`), reading tqdm's progress from standard error and the verb's ``--json`` object from the last line of
standard output.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Verbs that are not analyses (they do not write one run from parameters).
NOT_ANALYSES = {"models", "zoo", "runs", "demo", "app"}
_SKIP_OPTIONS = {"help", "json", "func"}
_PCT = re.compile(r"(\d{1,3})%\|")
_FRACTION = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a verb: its flag, destination, default, choices, type name ("int", "float", "str", "flag")."""

    flag: str
    dest: str
    default: Any
    choices: tuple | None
    type: str
    help: str
    required: bool
    many: bool = False  # takes several values (nargs "+" or "*"): the form's text is split on spaces and commas


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def analysis_verbs() -> list[str]:
    """The verbs that compute and store one analysis run (every verb but models, zoo, runs, demo, app)."""
    from workbench.cli import build_parser

    return sorted(v for v in _subparsers(build_parser()) if v not in NOT_ANALYSES)


def verb_options(verb: str) -> list[OptionSpec]:
    """The options of ``verb`` as :class:`OptionSpec` (what a form needs); raises LookupError for an unknown verb."""
    from workbench.cli import build_parser

    verbs = _subparsers(build_parser())
    if verb not in verbs:
        raise LookupError(f"unknown verb {verb!r}; verbs: {sorted(verbs)}")
    specs = []
    for action in verbs[verb]._actions:
        if action.dest in _SKIP_OPTIONS or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1] if action.option_strings else action.dest
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = "flag"
        elif action.type in (int, float):
            kind = action.type.__name__
        else:
            kind = "str"
        specs.append(OptionSpec(flag=flag, dest=action.dest, default=action.default,
                                choices=tuple(action.choices) if action.choices else None, type=kind,
                                help=action.help or "", required=bool(action.required),
                                many=action.nargs in ("+", "*")))
    return specs


def build_argv(verb: str, values: dict[str, Any]) -> list[str]:
    """The argument list for ``verb`` from option values keyed by dest (None or "" leaves an option out)."""
    argv = [verb]
    for spec in verb_options(verb):
        value = values.get(spec.dest, spec.default)
        if spec.type == "flag":
            if value and value != spec.default:
                argv.append(spec.flag)
            continue
        if value is None or value == "":
            continue
        parts = [v for v in re.split(r"[\s,]+", str(value).strip()) if v] if spec.many else [str(value)]
        if not spec.flag.startswith("-"):
            argv += parts
        elif value != spec.default:
            argv += [spec.flag, *parts]
    return argv + ["--json"]


def parse_progress(text: str) -> float | None:
    """The last progress fraction (0..1) in a chunk of tqdm output, or None."""
    fractions = [int(m.group(1)) / 100 for m in _PCT.finditer(text)]
    if not fractions:
        fractions = [int(a) / max(int(b), 1) for a, b in _FRACTION.findall(text)]
    return min(max(fractions[-1], 0.0), 1.0) if fractions else None


def run_verb(argv: list[str], on_progress: Callable[[float, str], None] | None = None,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``workbench <argv>`` in a subprocess; report tqdm progress; return its ``--json`` object.

    Raises RuntimeError with the verb's error message when it exits non-zero or prints no JSON.
    """
    cmd = [sys.executable, "-m", "workbench.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None and proc.stdout is not None
    err_tail = ""
    while True:
        chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(4096)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        err_tail = (err_tail + text)[-4000:]
        fraction = parse_progress(text)
        if fraction is not None and on_progress is not None:
            line = re.split(r"[\r\n]", text.strip())[-1] if text.strip() else ""
            on_progress(fraction, line)
    out = proc.stdout.read().decode(errors="replace")
    code = proc.wait()
    if code != 0:
        lines = [ln for ln in re.split(r"[\r\n]", err_tail) if ln.strip()]
        message = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
        raise RuntimeError(f"workbench {' '.join(argv)} failed (exit {code}): {message}")
    last = [ln for ln in out.splitlines() if ln.strip()]
    if not last:
        raise RuntimeError(f"workbench {' '.join(argv)} printed no JSON object")
    return json.loads(last[-1])
