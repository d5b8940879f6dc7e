"""Checking a local Hugging Face model folder before transformers reads it: a corrupt ``config.json`` or weights
file is refused with an error naming the file (transformers' own messages name neither), and pickled weights are
never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.safetensors_header import SafetensorsFileError, read_header

__all__ = ["ModelFileError", "check_model_folder"]

PICKLED = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "pytorch_model.pt", "tf_model.h5",
           "flax_model.msgpack")


class ModelFileError(ValueError):
    """A local model folder whose config or weights file cannot be read; the message names the file."""


def _config(folder: Path) -> None:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path}: not UTF-8 text ({exc}); expected a Hugging Face model config") from exc
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid JSON ({exc}); expected a Hugging Face model config") from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: not a JSON object; expected a Hugging Face model config")
    if not isinstance(config.get("model_type"), str):
        raise ModelFileError(f"{path}: no model_type; expected a Hugging Face model config (e.g. \"model_type\": "
                             "\"llama\")")


def _weights(folder: Path) -> None:
    index = folder / "model.safetensors.index.json"
    files = sorted(folder.glob("*.safetensors"))
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{index}: not a safetensors index (a JSON object with weight_map): {exc}") from exc
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelFileError(f"{index}: lists shards that are missing: {', '.join(missing)}")
        files = [folder / s for s in shards]
    if not files:
        pickled = [name for name in PICKLED if (folder / name).exists()]
        if pickled:
            raise ModelFileError(f"{folder / pickled[0]}: pickle-based weights are never loaded here; convert them "
                                 "to model.safetensors (transformers: model.save_pretrained(folder))")
        raise ModelFileError(f"{folder}: no weights (expected model.safetensors or a sharded "
                             "model.safetensors.index.json)")
    for path in files:
        try:
            read_header(path)
        except SafetensorsFileError as exc:
            raise ModelFileError(str(exc)) from exc


def check_model_folder(folder: Path | str) -> None:
    """Raise :class:`ModelFileError` unless ``folder`` holds a readable ``config.json`` and whole safetensors
    weights (only the headers are read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder; a model is a Hugging Face folder with config.json and "
                             "model.safetensors")
    if not (folder / "config.json").is_file():
        raise ModelFileError(f"{folder} is not a Hugging Face model folder (no config.json)")
    _config(folder)
    _weights(folder)
