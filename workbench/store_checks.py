"""Cheap checks of a stored run's files, run when the store lists them: nothing here reads a file's data.

- :func:`escapes` tells whether a path (a kind folder, a run folder, a file) resolves outside the store, through a
  symbolic link anywhere on the way.
- :func:`safetensors_problem` parses a ``.safetensors`` header (8-byte little-endian length, then JSON) and checks
  that its tensors tile the data exactly up to the end of the file (so a truncated or padded file is caught).
- :func:`parquet_problem` checks the ``PAR1`` magic at both ends of a ``.parquet`` file and a footer that fits.
- :func:`too_deep` tells whether a parsed JSON value nests deeper than a bound, without recursion.

Each ``*_problem`` function returns None for a file that passes and a sentence saying what is wrong otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: bytes per element of each safetensors dtype
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
#: the largest safetensors header the store reads (the safetensors library's own bound)
MAX_HEADER = 100_000_000
PARQUET_MAGIC = b"PAR1"


def real_path(path: Path, parent_real: Path | None = None) -> Path:
    """Where ``path`` really is, following every link. With ``parent_real`` (the real path of ``path.parent``)
    only a ``path`` that is itself a link is resolved (one ``lstat`` instead of a walk of every component)."""
    if parent_real is not None and not path.is_symlink():
        return parent_real / path.name
    return path.resolve()


def escapes(path: Path, root: Path, *, root_real: Path | None = None, parent_real: Path | None = None) -> Path | None:
    """Where ``path`` really is when that is outside ``root`` (following every link), else None.

    ``root_real`` (``root`` resolved) and ``parent_real`` (see :func:`real_path`) save resolving them again.
    """
    real = real_path(path, parent_real)
    return None if real.is_relative_to(root_real if root_real is not None else root.resolve()) else real


def too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` (parsed JSON: dicts, lists, scalars) nests more than ``limit`` containers deep."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def safetensors_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The parsed header of a safetensors file of ``size`` bytes and the offset where its data starts.

    Raises ValueError naming what is wrong (too short, header length past the end, header not a JSON object).
    """
    if size < 8:
        raise ValueError(f"{size} bytes is too short for a safetensors file (8-byte header length missing)")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER or 8 + n > size:
            raise ValueError(f"header length {n} runs past the end of the {size}-byte file")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"header is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def safetensors_problem(path: Path, size: int, keys: list[str] | None = None) -> str | None:
    """What is wrong with the safetensors file at ``path`` (``size`` bytes), from its header alone; None if nothing.

    Every tensor's byte range must match its dtype and shape, the ranges must tile the data with no gap or overlap,
    and the data must end exactly at the end of the file. ``keys``, when given, are the tensor names it must hold.
    """
    try:
        header, start = safetensors_header(path, size)
    except ValueError as exc:
        return str(exc)
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and isinstance(shape, list)
            ok = ok and all(isinstance(d, int) and d >= 0 for d in shape)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            return f"tensor {name!r} has a malformed header entry"
        width = SAFETENSORS_DTYPES.get(dtype)
        if width is not None and hi - lo != width * math.prod(shape):
            return f"tensor {name!r} ({dtype} {shape}) has {hi - lo} bytes, expected {width * math.prod(shape)}"
        spans.append((lo, hi, name))
    end = 0
    for lo, hi, name in sorted(spans):
        if lo != end:
            return f"tensor {name!r} starts at byte {lo} of the data, expected {end} (gap or overlap)"
        end = hi
    if start + end != size:
        return f"the tensors end at byte {start + end} but the file has {size} bytes (truncated or padded)"
    if keys is not None and sorted(k for k in header if k != "__metadata__") != sorted(keys):
        return f"holds tensors {sorted(k for k in header if k != '__metadata__')}, the manifest lists {sorted(keys)}"
    return None


def parquet_problem(path: Path, size: int) -> str | None:
    """What is wrong with the parquet file at ``path`` (``size`` bytes), from its ends alone; None if nothing."""
    if size < 12:
        return f"{size} bytes is too short for a parquet file"
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(size - 8)
        tail = fh.read(8)
    if head != PARQUET_MAGIC:
        return "does not start with the parquet magic PAR1"
    if tail[4:] != PARQUET_MAGIC:
        return "does not end with the parquet magic PAR1 (truncated?)"
    footer = int.from_bytes(tail[:4], "little")
    if footer > size - 12:
        return f"footer length {footer} does not fit in the {size}-byte file"
    return None
