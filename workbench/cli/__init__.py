"""The ``workbench`` command line: ``workbench <verb> --help`` for each verb.

Each module of this package that defines ``register(subparsers)`` adds its verbs (``core`` holds models, zoo, runs,
demo and app; each analysis family has its own module). Verbs that take ``--json`` print one JSON object (their
summary, and the run's folder where one is written) as the last line of standard output. Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

_SKIP = {"common", "launch", "__main__"}


def build_parser() -> argparse.ArgumentParser:
    """The full parser: the core verbs first, then every family module's verbs in name order."""
    parser = argparse.ArgumentParser(prog="workbench", description="Interpretability workbench for transformer LMs.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _SKIP)
    for name in ["core", *[n for n in names if n != "core"]]:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        print(f"workbench {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
