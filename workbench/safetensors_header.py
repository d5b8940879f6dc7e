"""Reading a safetensors file's header alone: what tensors it declares, and whether it is a whole safetensors file,
before anything is allocated for its data (a corrupt, truncated, pickled or header-bomb file is refused, naming it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["ITEMSIZE", "MAX_HEADER_BYTES", "SafetensorsFileError", "read_header"]

#: the largest safetensors header accepted (the format's own limit)
MAX_HEADER_BYTES = 100_000_000

#: safetensors dtypes and their byte sizes
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
            "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class SafetensorsFileError(ValueError):
    """A file that is not a whole safetensors file; the message names it and says what is wrong."""


def read_header(path: Path | str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a safetensors file declares, ``{name: (dtype, shape)}``, read from its header alone (nothing is
    allocated for the data). SafetensorsFileError naming the file for anything that is not a whole safetensors file:
    empty, truncated, a pickle or torch.save archive, a header too large or not JSON, offsets outside the file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise SafetensorsFileError(f"{path}: empty file; expected safetensors weights")
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 <= n <= min(MAX_HEADER_BYTES, size - 8):
            if head[:2] == b"PK":
                raise SafetensorsFileError(f"{path}: a zip archive (torch.save format), not safetensors; pickled "
                                           "weights are never loaded here: convert them to safetensors")
            if head[:1] == b"\x80":
                raise SafetensorsFileError(f"{path}: a Python pickle, not safetensors; pickled weights are never "
                                           "loaded here: convert them to safetensors")
            if n < 0:
                raise SafetensorsFileError(f"{path}: truncated ({size} bytes); not a safetensors file")
            raise SafetensorsFileError(f"{path}: header length {n} exceeds the file ({size} bytes) or the "
                                       f"{MAX_HEADER_BYTES}-byte limit; truncated or not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsFileError(f"{path}: the safetensors header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsFileError(f"{path}: the safetensors header is not a JSON object")
    out, data = {}, size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = dtype in ITEMSIZE and all(isinstance(x, int) and x >= 0 for x in (*shape, lo, hi))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise SafetensorsFileError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}")
        if hi > data or hi - lo != math.prod(shape) * ITEMSIZE[dtype]:
            raise SafetensorsFileError(f"{path}: tensor {name!r} ({dtype} {list(shape)}) lies outside the file's "
                                       f"{data} data bytes; the file is truncated or corrupt")
        out[name] = (dtype, shape)
    return out
