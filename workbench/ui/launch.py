"""Start a ``workbench`` verb from another program (the dashboard) with a live progress fraction.

The dashboard's "start an analysis" form is generated from the same config fields as the command line
(:func:`verb_options`); :func:`build_argv` turns the form's values back into arguments, sending every text as typed
(a prompt keeps its spaces, commas and leading space; a list of texts is one entry per line) and numbers lists split
on spaces or commas. :func:`run_verb` runs the verb in a subprocess, reads tqdm's progress from standard error and
the verb's ``--json`` object from the last line of standard output.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Verbs that are not analyses (they do not write one run from parameters).
NOT_ANALYSES = {"models", "zoo", "runs", "demo", "app"}
_SKIP_OPTIONS = {"help", "json", "func", "quiet"}
_PCT = re.compile(r"(\d{1,3})%\|")
_FRACTION = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a verb: its flag, destination, default, choices, type name ("int", "float", "str", "flag").

    ``many``: takes several values; ``lines``: each value is a whole line of text (prompts), never split on spaces
    or commas; ``negatable``: a flag with a ``--no-`` form."""

    flag: str
    dest: str
    default: Any
    choices: tuple | None
    type: str
    help: str
    required: bool
    many: bool = False
    lines: bool = False
    negatable: bool = False
    path: bool = False


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def analysis_verbs() -> list[str]:
    """The verbs that compute and store one analysis run (the registry's)."""
    from workbench.ui.registry import analyses

    return sorted(a.verb for a in analyses())


def _field_specs(verb: str) -> list[OptionSpec]:
    from workbench.analysis import describe_fields
    from workbench.ui.registry import get

    analysis = get(verb)
    specs = []
    if analysis.needs_model:
        specs += [OptionSpec("--model", "model", analysis.default_model, None, "str", "model spec", False),
                  OptionSpec("--device", "device", None, None, "str", "cpu, cuda, cuda:N or mps", False),
                  OptionSpec("--dtype", "dtype", None, ("float32", "float64", "bfloat16", "float16"), "str",
                             "weights' dtype", False),
                  OptionSpec("--weight-processing", "weight_processing", True, None, "flag",
                             "fold LayerNorms and centre weights (off: the checkpoint's raw weights)", False,
                             negatable=True)]
    for info in describe_fields(analysis.config):
        kind = "flag" if info.base is bool else info.base.__name__
        flag = info.name if info.positional else info.flag
        specs.append(OptionSpec(flag, info.name, None if info.required else info.default, info.choices, kind, info.help,
                                info.required, many=info.many, lines=info.lines or (info.many and info.base is str),
                                negatable=info.base is bool, path=info.path))
    return specs


def _argparse_specs(parser: argparse.ArgumentParser) -> list[OptionSpec]:
    specs = []
    for action in parser._actions:
        if action.dest in _SKIP_OPTIONS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest
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


def verb_options(verb: str) -> list[OptionSpec]:
    """The options of ``verb`` as :class:`OptionSpec` (what a form needs); raises LookupError for an unknown verb."""
    from workbench.ui.cli import build_parser

    verbs = _subparsers(build_parser())
    if verb not in verbs:
        raise LookupError(f"unknown verb {verb!r}; verbs: {sorted(verbs)}")
    return _field_specs(verb) if verb not in NOT_ANALYSES else _argparse_specs(verbs[verb])


def _values(spec: OptionSpec, value: Any) -> list[str]:
    """The argument strings of one option value (a typed value, or the form's text)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if not spec.many:
        return [text]
    if spec.lines:  # one entry per line, each sent as typed (leading spaces included)
        return [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    return [v for v in re.split(r"[\s,]+", text.strip()) if v]


def _confined(spec: OptionSpec, parts: list[str], root: Path) -> None:
    base = root.resolve()
    for part in parts:
        target = Path(part).expanduser()
        target = (target if target.is_absolute() else base / target).resolve()
        if target != base and base not in target.parents:
            raise ValueError(f"{spec.flag} {part!r} is outside the workbench's home {base}; from the dashboard, files "
                             "and folders must be inside it (the command line takes any path)")


def build_argv(verb: str, values: dict[str, Any], *, confine: Path | None = None) -> list[str]:
    """The argument list for ``verb`` from option values keyed by dest (None or "" leaves an option out, as does a
    value equal to the default). With ``confine``, a file or folder option outside that folder raises ValueError
    (the dashboard's form keeps reads and writes inside the workbench's home)."""
    argv = [verb]
    for spec in verb_options(verb):
        value = values.get(spec.dest, spec.default)
        if spec.type == "flag":
            if bool(value) != bool(spec.default):
                argv.append(spec.flag if value else "--no-" + spec.flag[2:])
            continue
        if value is None or (isinstance(value, str) and value == "") or value == spec.default:
            continue
        parts = _values(spec, value)
        if not parts:
            continue
        if confine is not None and spec.path:
            _confined(spec, parts, confine)
        if not spec.flag.startswith("-"):
            argv += parts
        elif spec.many:
            argv += [spec.flag, *parts]
        elif parts[0].startswith("-"):
            argv.append(f"{spec.flag}={parts[0]}")  # '=' keeps a value that starts with '-' a value
        else:
            argv += [spec.flag, parts[0]]
    return argv + ["--json"]


def shell_command(argv: list[str]) -> str:
    """``workbench <argv>`` quoted for a POSIX shell (what the page shows)."""
    return "workbench " + " ".join(shlex.quote(a) for a in argv)


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
    cmd = [sys.executable, "-m", "workbench.ui.cli", *argv]
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
