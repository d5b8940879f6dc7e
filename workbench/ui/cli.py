"""The ``workbench`` command line: ``workbench <verb> --help`` for each verb.

The core verbs (models, zoo, runs, demo, app) live in :mod:`workbench.ui.verbs`; every analysis verb is generated
from its config dataclass (:mod:`workbench.analysis`), the way EleutherAI's sparsify builds its CLI: a field
``top_k: int = option(10, ...)`` becomes ``--top-k`` with that type, default, help and range; a ``Literal`` becomes
choices; a list takes several values (numbers also comma-separated: ``--layers 1,2 5``); a bool takes
``--x/--no-x``. Every analysis verb also takes ``--model``, ``--device``, ``--json`` and ``--quiet``.

With ``--json`` the last line of standard output is one strict JSON object (no NaN or Infinity: a non-finite number
is written as null). Progress bars go to standard error unless ``--quiet``, also under ``--json`` (the dashboard
reads them). Bad input exits with status 2 and a one-line message naming what was wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workbench.analysis import Analysis, ConfigError, FieldInfo, describe_fields
from workbench.ui.device import check_device
from workbench.ui.output import emit

_NUMBER = {int: int, float: float}


def _describe(info: FieldInfo) -> str:
    extra = []
    if info.minimum is not None or info.maximum is not None:
        low = "" if info.minimum is None else f"{'>' if info.exclusive_minimum else '>='} {info.minimum:g}"
        high = "" if info.maximum is None else f"<= {info.maximum:g}"
        extra.append(" and ".join(x for x in (low, high) if x))
    default = info.default
    if info.base is bool and not info.many:
        extra.append(f"default {'on' if default else 'off'}")
    elif not info.required and default is not None:
        extra.append(f"default {' '.join(map(str, default)) if isinstance(default, list) else default}")
    return info.help + (f" ({'; '.join(extra)})" if extra else "")


def _number_list(base: type):
    def parse(text: str) -> list:
        try:
            return [base(x) for x in text.replace(",", " ").split()]
        except ValueError as exc:
            kind = "integers" if base is int else "numbers"
            raise argparse.ArgumentTypeError(f"expected {kind} (space- or comma-separated), got {text!r}") from exc
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, config: type) -> None:
    """One argument per field of ``config``; an option the user does not give parses as None (the field's default
    then applies, see :func:`config_from_args`)."""
    for info in describe_fields(config):
        help_text = _describe(info)
        if info.positional:
            parser.add_argument(info.name, nargs=("+" if info.many else None) if info.required else
                                ("*" if info.many else "?"), default=None, help=help_text, metavar=info.name.upper())
            continue
        flags = [info.flag, *info.aliases]
        if info.base is bool:
            parser.add_argument(*flags, dest=info.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif info.many:
            kind = _number_list(info.base) if info.base in _NUMBER else (lambda t: [t])
            parser.add_argument(*flags, dest=info.name, nargs="+", type=kind, action="extend", default=None,
                                help=help_text, metavar=info.name.upper())
        else:
            parser.add_argument(*flags, dest=info.name, type=_NUMBER.get(info.base, str), default=None,
                                choices=info.choices, help=help_text, metavar=None if info.choices else info.name.upper())


def config_from_args(config: type, args: argparse.Namespace) -> Any:
    """The config built from parsed arguments: given options override the field defaults."""
    values = {}
    for info in describe_fields(config):
        value = getattr(args, info.name, None)
        if value is None:
            continue
        if info.many and value and isinstance(value[0], list):
            value = [v for part in value for v in part]
        values[info.name] = value
    try:
        return config(**values)
    except TypeError as exc:  # a required field left out
        missing = [i.name.upper() if i.positional else i.flag for i in describe_fields(config)
                   if i.required and i.name not in values]
        raise ConfigError(f"missing {', '.join(missing)}") from exc


def run_analysis(analysis: Analysis, args: argparse.Namespace) -> int:
    """Run one analysis verb: config from the options, model loaded, computed, stored, reported."""
    from workbench.store import Store

    config = config_from_args(analysis.config, args).check()
    model = None
    if analysis.needs_model:
        from workbench.models import load_model

        check_device(args.device)
        dtype = None
        if args.dtype is not None:
            import torch

            dtype = getattr(torch, args.dtype)
        model = load_model(args.model, device=args.device, dtype=dtype, weight_processing=args.weight_processing)
    info, result = analysis.launch(model, config, store=Store(), progress=not args.quiet)
    payload = {"summary": info.summary, "run": {"kind": info.kind, "run_id": info.run_id, "path": str(info.path)}}
    emit(args, payload, "\n".join([result.text(), f"run: {info.path}"]))
    return 0


def add_analysis_verb(sub: argparse._SubParsersAction, analysis: Analysis) -> None:
    """The verb of ``analysis``: its config's options plus --model, --device, --json, --quiet."""
    p = sub.add_parser(analysis.verb, help=analysis.help, description=analysis.describe or analysis.help)
    if analysis.needs_model:
        p.add_argument("--model", default=analysis.default_model,
                       help=f"model spec (default {analysis.default_model}; see `workbench models`)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when present)")
        p.add_argument("--dtype", default=None, choices=("float32", "float64", "bfloat16", "float16"),
                       help="weights' dtype (default float32; float64 is processed in float64)")
        p.add_argument("--weight-processing", action=argparse.BooleanOptionalAction, default=True,
                       help="fold LayerNorms and centre weights as transformer-lens does (default on; "
                            "--no-weight-processing keeps the checkpoint's raw weights, as CD-T's published code uses)")
    add_config_arguments(p, analysis.config)
    p.add_argument("--json", action="store_true", help="print one JSON object (summary and run folder) last")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: run_analysis(analysis, args))


def build_parser() -> argparse.ArgumentParser:
    """The full parser: the core verbs, then every registered analysis."""
    from workbench.ui import verbs
    from workbench.ui.registry import analyses

    parser = argparse.ArgumentParser(prog="workbench", description="Interpretability workbench for transformer LMs.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    verbs.register(sub)
    for analysis in analyses():
        add_analysis_verb(sub, analysis)
    return parser


#: errors that mean the input was wrong (exit 2); anything else is reported as an internal error (exit 1)
INPUT_ERRORS = (ValueError, LookupError, OSError, RuntimeError, RecursionError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script (``python -m workbench.ui.cli`` is the same)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error; --help still exits with 0
        if exc.code in (0, None):
            raise
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"workbench {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback (WORKBENCH_DEBUG=1 shows it)
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, INPUT_ERRORS) or type(exc).__name__ in ("SafetensorError", "UnpicklingError"):
            print(f"workbench {args.verb}: error: {message}", file=sys.stderr)
            return 2
        print(f"workbench {args.verb}: internal error ({type(exc).__name__}): {message} "
              "(set WORKBENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
