"""The on-disk format of activation shards, and the checks every reader and writer makes.

A shard folder holds ``manifest.json`` and ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: each shard
one tensor per hook ``[rows, width]`` (the same token positions, in the same order, for every hook), ``shard_rows``
rows each except possibly the last. The manifest records the format and its version, the model (spec and weight
fingerprint), hooks, widths, dtype, ``shard_rows``, the shards written (file, rows, where in the token stream each
starts), the token count, the seed, and a description and fingerprint of the token source. ``complete`` is false
while a write is under way (or was killed; it then resumes after its last complete shard).

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes: :func:`shard_layout` reads where each tensor lies, so a reader can memory-map it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from workbench.safetensors_header import SafetensorsFileError, read_header

FORMAT = "workbench-activation-shards"
VERSION = 1
MANIFEST = "manifest.json"
#: storage dtypes: manifest name -> (torch dtype, safetensors name)
DTYPES = {"float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16")}


class ShardError(ValueError):
    """A shard folder that cannot be used as asked; the message names what differs and what was expected."""


class ShardFormatError(ShardError):
    """A folder, manifest or shard file that is not (whole) activation shards of this format."""


class ShardMismatchError(ShardError):
    """Shards of another model, hook, width or setting than the one expected."""


def shard_name(index: int) -> str:
    """``shard-00007.safetensors`` for index 7."""
    return f"shard-{index:05d}.safetensors"


def dtype_name(dtype: torch.dtype | str) -> str:
    """The manifest's name of a storage dtype (float32, bfloat16 or float16); ShardError for another."""
    for name, (t, _) in DTYPES.items():
        if dtype in (t, name):
            return name
    raise ShardError(f"shard dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def model_fingerprint(model) -> str:
    """A short fingerprint of a model's weights: parameter names, shapes and first values (to 3 significant
    digits, so the same weights on another device or in another float dtype match). Another checkpoint, another
    model or other weights give another fingerprint."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        head = p.detach().reshape(-1)[:8].double().cpu().tolist()
        h.update(f"{name}{tuple(p.shape)}{[float(f'{v:.3g}') for v in head]}".encode())
    return h.hexdigest()[:16]


def tokens_fingerprint(batch: Any) -> str:
    """A fingerprint of one token batch (LongTensor [batch, seq] or TokenBatch): its ids and mask."""
    tokens = batch if isinstance(batch, torch.Tensor) else batch.tokens
    h = hashlib.sha256(str(tuple(tokens.shape)).encode())
    h.update(tokens.detach().cpu().to(torch.int64).numpy().tobytes())
    if not isinstance(batch, torch.Tensor):
        h.update(batch.attention_mask.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def read_manifest(folder: Path | str) -> dict[str, Any]:
    """The manifest of a shard folder; ShardFormatError naming the folder when it is missing, unreadable, or of
    another format or version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardFormatError(f"{folder}: not a folder; expected an activation shard folder (manifest.json and "
                               "shard-*.safetensors, written by `workbench harvest-shards`)")
    path = folder / MANIFEST
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ShardFormatError(f"{folder}: no {MANIFEST}; expected an activation shard folder written by "
                               "`workbench harvest-shards` (or circuits.dictionaries.shards.write_shards)") from exc
    except (OSError, ValueError) as exc:
        raise ShardFormatError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        got = man.get("format") if isinstance(man, dict) else type(man).__name__
        raise ShardFormatError(f"{path}: format {got!r}, expected {FORMAT!r}")
    if man.get("version") != VERSION:
        raise ShardFormatError(f"{path}: format version {man.get('version')!r}, this reader reads version {VERSION}")
    need = ("hooks", "widths", "dtype", "shard_rows", "shards", "tokens", "complete")
    missing = [k for k in need if k not in man]
    if missing or man["dtype"] not in DTYPES:
        raise ShardFormatError(f"{path}: malformed manifest (missing {missing}, dtype {man.get('dtype')!r})")
    return man


def shard_layout(path: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """``{tensor: (safetensors dtype, shape, byte offset of its data in the file)}`` of one shard, read from its
    header; ShardFormatError naming the file when it is missing, truncated or not safetensors."""
    try:
        declared = read_header(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError as exc:
        raise ShardFormatError(f"{path}: missing shard (listed in the manifest); the folder is incomplete") from exc
    except (SafetensorsFileError, OSError, ValueError) as exc:
        raise ShardFormatError(f"{path}: unreadable shard ({exc})") from exc
    return {k: (dt, shape, 8 + n + int(header[k]["data_offsets"][0])) for k, (dt, shape) in declared.items()}


def check_shard(path: Path, man: dict[str, Any], rows: int) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """The layout of one shard after checking it holds exactly the manifest's hooks, each ``[rows, width]`` in the
    manifest's dtype; ShardFormatError naming the file and what differs."""
    layout = shard_layout(path)
    foreign = sorted(set(layout) - set(man["hooks"]))
    if foreign:
        raise ShardFormatError(f"{path}: foreign tensors {foreign}; a shard holds only the manifest's hooks "
                               f"{man['hooks']}")
    want_dtype = DTYPES[man["dtype"]][1]
    for h in man["hooks"]:
        if h not in layout:
            raise ShardFormatError(f"{path}: no tensor for hook {h!r} (holds {sorted(layout)})")
        dt, shape, _ = layout[h]
        want = (rows, int(man["widths"][h]))
        if shape != want or dt != want_dtype:
            raise ShardFormatError(f"{path}: {h} is {dt} {list(shape)}, the manifest says {want_dtype} {list(want)}")
    return layout
