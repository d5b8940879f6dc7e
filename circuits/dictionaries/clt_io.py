"""Transcoders on disk in circuit-tracer's layout: a folder with ``config.yaml`` and safetensors files.

``model_kind: cross_layer_transcoder`` (a :class:`~circuits.dictionaries.clt.CrossLayerTranscoder`), per layer i::

    W_enc_{i}.safetensors   W_enc_{i} [n, d]   b_enc_{i} [n]   b_dec_{i} [d]   (JumpReLU: threshold_{i} [n])
    W_dec_{i}.safetensors   W_dec_{i} [n, L - i, d]            (decoders to the MLP outputs of layers i..L-1)

``model_kind: transcoder_set`` (per-layer transcoders), per layer i ``layer_{i}.safetensors`` with ``W_enc`` [n, d],
``W_dec`` [n, d], ``b_enc`` [n], ``b_dec`` [d], ``W_skip`` [d, d] stored as circuit-tracer applies it
(``x @ W_skip.T``), and for TopK a scalar ``k`` tensor.

``config.yaml`` holds what circuit-tracer's loaders read (``model_kind``, ``feature_input_hook``,
``feature_output_hook``; ``activation`` and ``k`` for a transcoder set) plus ``model_name``, ``n_layers``,
``d_model``, ``d_transcoder`` and, for a CLT, ``activation`` / ``k`` / ``bandwidth`` (circuit-tracer has no TopK
CLT: it would read a TopK CLT's files as ReLU). Hooks are written as this project's hook suffixes
(``ln2.hook_normalized`` -> ``hook_mlp_out``, i.e. ``blocks.{l}.<hook>``); circuit-tracer's transformer-lens
models call the same point ``mlp.hook_in`` / ``hook_mlp_out``.

Loading is strict: a missing or non-mapping ``config.yaml``, a missing, extra or mis-shaped tensor, a non-float or
non-finite weight raise :class:`DictionaryFileError` naming the file and tensor; other hooks raise
:class:`DictionaryMismatchError`. :func:`check_clt_fits` refuses a CLT made for another model (layer count or
d_model), also with DictionaryMismatchError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuits.dictionaries.clt import CLT_ACTIVATIONS, HOOK_IN, HOOK_OUT, CrossLayerTranscoder
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.saelens_io import (
    _FLOATS,
    DictionaryFileError,
    DictionaryMismatchError,
    read_safetensors_header,
)
from workbench.atomic import atomic_dir, write_text

__all__ = ["CONFIG_FILE", "check_clt_fits", "is_circuit_tracer_folder", "load_circuit_tracer", "load_clt",
           "load_transcoder_set", "save_clt", "save_transcoder_set"]

CONFIG_FILE = "config.yaml"


def _dump(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def save_clt(clt: CrossLayerTranscoder, folder: Path | str, *, model_name: str | None = None) -> Path:
    """Write ``clt`` into ``folder`` in circuit-tracer's CLT layout (created atomically; replaced if it exists)."""
    folder = Path(folder)
    cfg = {"model_kind": "cross_layer_transcoder", "model_name": model_name or clt.model_name,
           "feature_input_hook": HOOK_IN, "feature_output_hook": HOOK_OUT, "n_layers": clt.n_layers,
           "d_model": clt.d_model, "d_transcoder": clt.d_sae, "activation": clt.activation, "k": clt.k,
           "bandwidth": clt.bandwidth}
    th = clt.threshold
    with atomic_dir(folder, overwrite=True) as tmp:
        for i in range(clt.n_layers):
            enc = {f"W_enc_{i}": clt.W_enc[i].t(), f"b_enc_{i}": clt.b_enc[i], f"b_dec_{i}": clt.b_dec[i]}
            if th is not None:
                enc[f"threshold_{i}"] = th[i]
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in enc.items()},
                      str(tmp / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": clt.W_dec[i].detach().cpu().contiguous().clone()},
                      str(tmp / f"W_dec_{i}.safetensors"))
        write_text(tmp / CONFIG_FILE, _dump(cfg))
    return folder


def save_transcoder_set(transcoders: Mapping[int, Dictionary], folder: Path | str, *,
                        model_name: str | None = None) -> Path:
    """Write per-layer transcoders ``{layer: Dictionary}`` (layers 0..L-1, one activation) in circuit-tracer's
    ``transcoder_set`` layout. (The SAELens layout stays this project's own format for single dictionaries.)"""
    folder = Path(folder)
    layers = sorted(transcoders)
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"a transcoder set needs one transcoder for each layer 0..L-1, got layers {layers}")
    first = transcoders[0]
    for layer in layers:
        tc = transcoders[layer]
        if tc.kind not in ("transcoder", "skip_transcoder") or (tc.hook_in, tc.hook_out) != (
                f"blocks.{layer}.{HOOK_IN}", f"blocks.{layer}.{HOOK_OUT}"):
            raise ValueError(f"layer {layer}: a {tc.kind} on {tc.hook_in} -> {tc.hook_out}; accepted: a transcoder on "
                             f"blocks.{layer}.{HOOK_IN} -> blocks.{layer}.{HOOK_OUT}")
        if (tc.activation, tc.k, tc.d_in, tc.d_sae) != (first.activation, first.k, first.d_in, first.d_sae):
            raise ValueError(f"layer {layer}: activation or width differs from layer 0's")
    cfg = {"model_kind": "transcoder_set", "model_name": model_name or first.model_name,
           "feature_input_hook": HOOK_IN, "feature_output_hook": HOOK_OUT, "activation": first.activation,
           "k": first.k, "n_layers": len(layers), "d_model": first.d_in, "d_transcoder": first.d_sae}
    with atomic_dir(folder, overwrite=True) as tmp:
        for layer in layers:
            tc = transcoders[layer]
            t = {"W_enc": tc.W_enc.t(), "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
            if tc.W_skip is not None:
                t["W_skip"] = tc.W_skip.t()
            t = {k: v.detach().cpu().contiguous().clone() for k, v in t.items()}
            if tc.activation == "topk":
                t["k"] = torch.tensor(tc.k)
            save_file(t, str(tmp / f"layer_{layer}.safetensors"))
        write_text(tmp / CONFIG_FILE, _dump(cfg))
    return folder


# ---------------------------------------------------------------------------------------------------- loading
def is_circuit_tracer_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds a ``config.yaml`` (circuit-tracer's layout) rather than SAELens' ``cfg.json``."""
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: Path | str) -> dict[str, Any]:
    """The folder's ``config.yaml`` as a dict; DictionaryFileError when missing, not YAML or not a mapping."""
    import yaml

    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise DictionaryFileError(f"{path}: missing; a circuit-tracer transcoder folder holds {CONFIG_FILE} and "
                                  "safetensors files")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DictionaryFileError(f"{path}: invalid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(cfg, dict):
        raise DictionaryFileError(f"{path}: not a YAML mapping (got {type(cfg).__name__})")
    kind = cfg.get("model_kind")
    if kind not in ("cross_layer_transcoder", "transcoder_set"):
        raise DictionaryFileError(f"{path}: model_kind {kind!r}; accepted: cross_layer_transcoder, transcoder_set")
    hooks = (cfg.get("feature_input_hook"), cfg.get("feature_output_hook"))
    if hooks != (HOOK_IN, HOOK_OUT):
        raise DictionaryMismatchError(
            f"{path}: the transcoders read blocks.L.{hooks[0]} and write blocks.L.{hooks[1]}; accepted: "
            f"feature_input_hook {HOOK_IN} (the MLP's normalised input) and feature_output_hook {HOOK_OUT}")
    return cfg


def _tensors(path: Path, want: dict[str, tuple[int, ...] | None], optional: tuple[str, ...] = ()
             ) -> dict[str, torch.Tensor]:
    """The tensors of one file, checked against ``want`` (name -> shape, None: any) before loading: every name
    present, nothing else (besides ``optional``), float dtypes, the shapes, finite values."""
    if not path.is_file():
        raise DictionaryFileError(f"{path}: missing")
    declared = read_safetensors_header(path)
    missing = sorted(set(want) - set(declared))
    if missing:
        raise DictionaryFileError(f"{path}: missing tensors {missing}; found {sorted(declared)}")
    extra = sorted(set(declared) - set(want) - set(optional))
    if extra:
        raise DictionaryFileError(f"{path}: unknown tensors {extra} (expected {sorted(want)})")
    for name, shape in want.items():
        dtype, got = declared[name]
        if dtype not in _FLOATS:
            raise DictionaryFileError(f"{path}: {name} has dtype {dtype}; accepted: {', '.join(_FLOATS)}")
        if shape is not None and got != shape:
            raise DictionaryFileError(f"{path}: {name} has shape {got}, expected {shape}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own error type
        raise DictionaryFileError(f"{path}: unreadable safetensors file ({exc})") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DictionaryFileError(f"{path}: {name} holds NaN or Inf values")
    return tensors


def _int_field(cfg: dict[str, Any], key: str, where: Path, optional: bool = False) -> int | None:
    value = cfg.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DictionaryFileError(f"{where}: {key} must be an integer >= 1, got {value!r}")
    return value


def _layer_count(folder: Path, pattern: str) -> int:
    files = sorted(folder.glob(pattern))
    if not files:
        raise DictionaryFileError(f"{folder}: no {pattern} files")
    return len(files)


def load_clt(folder: Path | str, device: str | torch.device = "cpu") -> CrossLayerTranscoder:
    """Read a circuit-tracer CLT folder (written here or by circuit-tracer) into a CrossLayerTranscoder."""
    folder = Path(folder)
    cfg = read_config(folder)
    where = folder / CONFIG_FILE
    if cfg["model_kind"] != "cross_layer_transcoder":
        raise DictionaryFileError(f"{where}: model_kind {cfg['model_kind']!r}; expected cross_layer_transcoder")
    L = _layer_count(folder, "W_enc_*.safetensors")
    if cfg.get("n_layers") is not None and _int_field(cfg, "n_layers", where) != L:
        raise DictionaryFileError(f"{where}: n_layers {cfg['n_layers']} but the folder holds {L} W_enc_*.safetensors")
    header = read_safetensors_header(folder / "W_enc_0.safetensors") if (folder / "W_enc_0.safetensors").is_file() \
        else None
    if header is None or "W_enc_0" not in header or len(header["W_enc_0"][1]) != 2:
        raise DictionaryFileError(f"{folder / 'W_enc_0.safetensors'}: missing, or without a 2-d W_enc_0 tensor")
    n, d = header["W_enc_0"][1]
    activation = cfg.get("activation") or ("jumprelu" if "threshold_0" in header else "relu")
    if activation not in CLT_ACTIVATIONS:
        raise DictionaryFileError(f"{where}: activation {activation!r}; accepted: {', '.join(CLT_ACTIVATIONS)}")
    k = _int_field(cfg, "k", where) if activation == "topk" else None
    bandwidth = cfg.get("bandwidth", 0.05)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
        raise DictionaryFileError(f"{where}: bandwidth must be a positive number, got {bandwidth!r}")
    try:
        with torch.device("meta"):
            clt = CrossLayerTranscoder(L, d, n, activation=activation, k=k, bandwidth=float(bandwidth))
    except ValueError as exc:
        raise DictionaryFileError(f"{where}: {exc}") from exc
    clt = clt.to_empty(device=device)
    with torch.no_grad():
        for i in range(L):
            want = {f"W_enc_{i}": (n, d), f"b_enc_{i}": (n,), f"b_dec_{i}": (d,)}
            if activation == "jumprelu":
                want[f"threshold_{i}"] = (n,)
            enc = _tensors(folder / f"W_enc_{i}.safetensors", want)
            dec = _tensors(folder / f"W_dec_{i}.safetensors", {f"W_dec_{i}": (n, L - i, d)})
            clt.W_enc[i].copy_(enc[f"W_enc_{i}"].t())
            clt.b_enc[i].copy_(enc[f"b_enc_{i}"])
            clt.b_dec[i].copy_(enc[f"b_dec_{i}"])
            clt.W_dec[i].copy_(dec[f"W_dec_{i}"])
            if activation == "jumprelu":
                th = enc[f"threshold_{i}"]
                if not bool((th > 0).all()):
                    raise DictionaryFileError(f"{folder / f'W_enc_{i}.safetensors'}: threshold_{i} holds values <= 0 "
                                              "(a JumpReLU threshold is positive)")
                clt.log_threshold[i].copy_(th.log())
    clt.model_name = cfg.get("model_name")
    return clt


def load_transcoder_set(folder: Path | str, device: str | torch.device = "cpu") -> dict[int, Dictionary]:
    """Read a circuit-tracer ``transcoder_set`` folder (``layer_{i}.safetensors``) into ``{layer: Dictionary}``."""
    folder = Path(folder)
    cfg = read_config(folder)
    where = folder / CONFIG_FILE
    if cfg["model_kind"] != "transcoder_set":
        raise DictionaryFileError(f"{where}: model_kind {cfg['model_kind']!r}; expected transcoder_set")
    activation = cfg.get("activation") or "relu"
    if activation not in ("relu", "topk"):
        raise DictionaryFileError(f"{where}: activation {activation!r}; accepted: relu, topk")
    k = _int_field(cfg, "k", where) if activation == "topk" else None
    out = {}
    for i in range(_layer_count(folder, "layer_*.safetensors")):
        path = folder / f"layer_{i}.safetensors"
        declared = read_safetensors_header(path) if path.is_file() else {}
        if "W_enc" not in declared or len(declared["W_enc"][1]) != 2:
            raise DictionaryFileError(f"{path}: missing, or without a 2-d W_enc tensor")
        n, d = declared["W_enc"][1]
        want = {"W_enc": (n, d), "W_dec": (n, d), "b_enc": (n,), "b_dec": (d,)}
        skip = "W_skip" in declared
        if skip:
            want["W_skip"] = (d, d)
        t = _tensors(path, want, optional=("k",))
        tc = Dictionary("skip_transcoder" if skip else "transcoder", d, n, activation=activation, k=k,
                        hook_in=f"blocks.{i}.{HOOK_IN}", hook_out=f"blocks.{i}.{HOOK_OUT}")
        with torch.no_grad():
            tc.W_enc.copy_(t["W_enc"].t())
            tc.W_dec.copy_(t["W_dec"])
            tc.b_enc.copy_(t["b_enc"])
            tc.b_dec.copy_(t["b_dec"])
            if skip:
                tc.W_skip.copy_(t["W_skip"].t())
        tc.model_name = cfg.get("model_name")
        out[i] = tc.to(device)
    return out


def load_circuit_tracer(folder: Path | str, device: str | torch.device = "cpu"
                        ) -> CrossLayerTranscoder | dict[int, Dictionary]:
    """A circuit-tracer folder of either kind: a CrossLayerTranscoder, or ``{layer: Dictionary}``."""
    kind = read_config(folder)["model_kind"]
    return load_clt(folder, device) if kind == "cross_layer_transcoder" else load_transcoder_set(folder, device)


def check_clt_fits(clt: CrossLayerTranscoder, model: Any) -> None:
    """DictionaryMismatchError unless ``clt`` has one encoder per layer of ``model`` and its d_model."""
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    if (clt.n_layers, clt.d_model) != (n_layers, d_model):
        raise DictionaryMismatchError(
            f"the cross-layer transcoder has {clt.n_layers} layers of width {clt.d_model}, but the model has "
            f"{n_layers} layers of width {d_model} (made for {clt.model_name or 'another model'}?)")
