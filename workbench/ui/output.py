"""What the command line prints: text for people, or with ``--json`` one strict JSON object (no NaN or Infinity)
as the last line of standard output."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (so the JSON text has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    """Print ``text`` for people, or with ``--json`` one strict JSON object as the last line of standard output."""
    if getattr(args, "json", False):
        print(json.dumps(strict_json(obj), default=str, allow_nan=False))
    else:
        print(text)
