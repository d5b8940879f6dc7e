"""Dictionaries on disk in SAELens' layout: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Written in SAELens 6's layout: top-level ``architecture`` (``standard`` = ReLU SAE, ``topk`` with ``k``, ``transcoder``,
``skip_transcoder``), ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``; transcoders add ``d_out``; and a ``metadata`` object (``model_name``, ``hook_name``,
``hook_layer``, ``hook_head_index``, ``prepend_bos``, ``context_size``, ``sae_lens_version``; transcoders add
``hook_name_out``, ``hook_layer_out``, ``hook_head_index_out``, which SAELens 6 keeps in the metadata only; files
with them at the top level, as earlier versions wrote them, load too). Weight keys are ``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec`` [d_sae, d_out],
``b_dec`` and, for skip transcoders, ``W_skip`` stored as SAELens stores it, [d_out, d_in] (this package keeps the
transpose). SAELens has no TopK transcoder; those are written with architecture ``topk_transcoder`` /
``topk_skip_transcoder`` (readable here, not by SAELens). Pre-6 files (``hook_name``/``hook_point`` and
``activation_fn_str`` at the top level) load too.

Loading is strict, and checks before it allocates: the safetensors header is read and checked first (a pickle,
a torch.save archive, an empty, truncated or oversized-header file is refused), the tensor names must be exactly
those of the architecture (an unknown tensor such as a separate output bias ``b_dec_out`` is refused rather than
ignored), the shapes must match the cfg, and every weight must be finite. Errors are :class:`DictionaryFileError`
(a ValueError) naming the file and the tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from circuits.dictionaries.model import Dictionary
from workbench.atomic import atomic_dir, write_json
from workbench.safetensors_header import SafetensorsFileError, read_header

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"

_ARCH = {
    ("sae", "relu"): "standard", ("sae", "topk"): "topk",
    ("transcoder", "relu"): "transcoder", ("skip_transcoder", "relu"): "skip_transcoder",
    ("transcoder", "topk"): "topk_transcoder", ("skip_transcoder", "topk"): "topk_skip_transcoder",
}
_FROM_ARCH = {v: k for k, v in _ARCH.items()}


class DictionaryFileError(ValueError):
    """A dictionary folder is missing files, has an unsupported architecture, or its weights do not match its cfg."""


class DictionaryMismatchError(ValueError):
    """A dictionary does not fit a model: unknown hook, or a width that differs from the hook's activation width."""


def hook_layer(hook: str) -> int | None:
    """The layer index in a hook name (``blocks.6.hook_mlp_out`` -> 6), None for hooks outside the blocks."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def save_dictionary(
    d: Dictionary, folder: Path | str, *, model_name: str | None = None, context_size: int | None = None,
    prepend_bos: bool = True, extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``d`` into ``folder`` (created atomically; replaced if it exists). Returns the folder."""
    folder = Path(folder)
    cfg: dict[str, Any] = {
        "architecture": _ARCH[(d.kind, d.activation)],
        "d_in": d.d_in, "d_sae": d.d_sae, "dtype": str(d.W_enc.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": d.apply_b_dec_to_input, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {
            "model_name": model_name, "hook_name": d.hook_in, "hook_layer": hook_layer(d.hook_in), "hook_head_index": None,
            "prepend_bos": prepend_bos, "context_size": context_size, "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
        },
    }
    if d.activation == "topk":
        cfg.update({"k": d.k, "rescale_acts_by_decoder_norm": False})
    if d.kind != "sae":
        cfg["d_out"] = d.d_out
        cfg["metadata"].update({"hook_name_out": d.hook_out, "hook_layer_out": hook_layer(d.hook_out),
                                "hook_head_index_out": None})
    if extra:
        cfg["workbench"] = extra
    tensors = {name: p.detach().cpu().contiguous().clone() for name, p in d.named_parameters()}
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].t().contiguous()
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        write_json(tmp / CFG_FILE, cfg)
    return folder


def read_cfg(folder: Path | str) -> dict[str, Any]:
    """The folder's ``cfg.json`` as a dict (DictionaryFileError when missing or not a JSON object)."""
    path = Path(folder) / CFG_FILE
    if not path.is_file():
        raise DictionaryFileError(f"{path}: missing; a SAELens dictionary folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DictionaryFileError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise DictionaryFileError(f"{path}: not a JSON object")
    return cfg


def _interpret(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """Normalise SAELens 6 and pre-6 cfg dicts into constructor arguments."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else cfg.get("meta") or {}
    arch = cfg.get("architecture", "standard")
    act_str = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    k = cfg.get("k")
    if arch == "standard" and act_str == "topk":  # pre-6 TopK files: standard architecture with a topk activation
        arch = "topk"
        k = k or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch not in _FROM_ARCH:
        raise DictionaryFileError(
            f"{where}: architecture {arch!r} is not supported; accepted: {', '.join(sorted(_FROM_ARCH))}"
        )
    if act_str not in (None, "relu", "topk"):
        raise DictionaryFileError(f"{where}: activation {act_str!r} is not supported; accepted: relu, topk")
    if cfg.get("normalize_activations", "none") not in ("none", False, None):
        raise DictionaryFileError(
            f"{where}: normalize_activations={cfg['normalize_activations']!r} is not supported; fold the scaling "
            "factor into the weights first (accepted: 'none')"
        )
    kind, activation = _FROM_ARCH[arch]
    hook_in = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook_in:
        raise DictionaryFileError(f"{where}: no hook name (metadata.hook_name or hook_name)")
    if not isinstance(hook_in, str):
        raise DictionaryFileError(f"{where}: the hook name must be a string, got {hook_in!r}")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DictionaryFileError(f"{where}: {key} must be an integer >= 1, got {value!r}")
    d_out = cfg.get("d_out")
    if kind != "sae":
        if isinstance(d_out, bool) or not isinstance(d_out, int) or d_out < 1:
            raise DictionaryFileError(f"{where}: a {kind} needs d_out, an integer >= 1, got {d_out!r}")
        hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
        if not isinstance(hook_out, str) or not hook_out:
            raise DictionaryFileError(f"{where}: a {kind} needs its output hook (metadata.hook_name_out)")
    if activation == "topk" and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg["d_sae"]):
        raise DictionaryFileError(f"{where}: TopK needs k, an integer in [1, d_sae = {cfg['d_sae']}], got {k!r}")
    return dict(
        kind=kind, d_in=cfg["d_in"], d_sae=cfg["d_sae"], activation=activation, k=k, hook_in=hook_in,
        hook_out=(meta.get("hook_name_out") or cfg.get("hook_name_out")) if kind != "sae" else None, d_out=d_out,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", kind == "sae")),
        model_name=meta.get("model_name") or cfg.get("model_name"),
    )


#: the safetensors dtypes accepted as dictionary weights
_FLOATS = ("F64", "F32", "F16", "BF16")


def read_safetensors_header(path: Path | str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a safetensors file declares, ``{name: (dtype, shape)}``, read from its header alone
    (:func:`workbench.safetensors_header.read_header`); DictionaryFileError naming the file for anything that is not a
    whole safetensors file."""
    try:
        return read_header(path)
    except SafetensorsFileError as exc:
        raise DictionaryFileError(str(exc)) from exc


def expected_shapes(kind: str, d_in: int, d_sae: int, d_out: int | None) -> dict[str, tuple[int, ...]]:
    """The tensors of a dictionary file and their shapes as stored (``W_skip`` as SAELens stores it,
    [d_out, d_in])."""
    d_out = d_in if d_out is None else d_out
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if kind == "skip_transcoder":
        shapes["W_skip"] = (d_out, d_in)
    return shapes


_CONVERT_HINT = {
    "b_dec_out": "a separate output bias (out = z @ W_dec + b_dec_out, with b_dec an input shift); this layout is "
                 "not read blindly: convert it (b_enc -= b_dec @ W_enc when b_dec is subtracted from the input, "
                 "then b_dec = b_dec_out) and save without b_dec_out",
    "threshold": "a JumpReLU threshold; JumpReLU dictionaries are not supported",
}


def load_dictionary(folder: Path | str, device: str | torch.device = "cpu") -> Dictionary:
    """Read a SAELens-layout folder (written here or elsewhere) into a :class:`Dictionary` (float32 kept as stored).

    The cfg's ``model_name`` is kept as ``d.model_name``. DictionaryFileError names what is missing or wrong: the
    header, names, dtypes and shapes are checked before any weight is allocated; unknown or missing tensors and
    non-finite weights are refused. A ``scaling_factor`` tensor of ones (a no-op) is accepted and dropped.
    """
    folder = Path(folder)
    cfg = read_cfg(folder)
    args = _interpret(cfg, folder / CFG_FILE)
    model_name = args.pop("model_name")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise DictionaryFileError(f"{weights_path}: missing")
    declared = read_safetensors_header(weights_path)
    expected = expected_shapes(args["kind"], args["d_in"], args["d_sae"], args["d_out"])
    missing = sorted(set(expected) - set(declared))
    if missing:
        raise DictionaryFileError(f"{weights_path}: missing weights {missing}; found {sorted(declared)}")
    unknown = sorted(set(declared) - set(expected) - {"scaling_factor"})
    if unknown:
        hints = "".join(f"; {n} looks like {_CONVERT_HINT[n]}" for n in unknown if n in _CONVERT_HINT)
        raise DictionaryFileError(
            f"{weights_path}: unknown tensors {unknown} for architecture {cfg.get('architecture', 'standard')!r} "
            f"(expected exactly {sorted(expected)}){hints}")
    for name, shape in expected.items():
        dtype, got = declared[name]
        if dtype not in _FLOATS:
            raise DictionaryFileError(f"{weights_path}: {name} has dtype {dtype}; accepted: {', '.join(_FLOATS)}")
        if got != shape:
            raise DictionaryFileError(f"{weights_path}: {name} has shape {got}, the cfg implies {shape}")
    if "scaling_factor" in declared and declared["scaling_factor"][1] not in ((args["d_sae"],), ()):
        raise DictionaryFileError(f"{weights_path}: scaling_factor has shape {declared['scaling_factor'][1]}, "
                                  f"expected ({args['d_sae']},)")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors' own error type; the header checks above catch the usual causes
        raise DictionaryFileError(f"{weights_path}: unreadable safetensors file ({exc})") from exc
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DictionaryFileError(f"{weights_path}: {name} holds {bad} NaN or Inf values of {t.numel()}")
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not bool((scale == 1).all()):
        raise DictionaryFileError(f"{weights_path}: scaling_factor is not all ones; fold it into the weights first "
                                  "(W_dec rows times scaling_factor) and save without it")
    try:
        with torch.device("meta"):
            d = Dictionary(**args)
    except ValueError as exc:
        raise DictionaryFileError(f"{folder / CFG_FILE}: {exc}") from exc
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].t().contiguous()
    for name in expected:
        setattr(d, name, nn.Parameter(tensors[name].to(device)))
    d.model_name = model_name
    return d


def hook_widths(model, hooks: list[str]) -> dict[str, int]:
    """The last-dimension width of each hook's activation (one forward over two tokens)."""
    from workbench.harvest import check_hooks

    check_hooks(model, hooks)
    device = str(getattr(model.cfg, "device", "cpu"))
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long, device=device), names_filter=hooks)
    return {h: int(cache[h].shape[-1]) for h in hooks}


def check_fits(d: Dictionary, model) -> None:
    """Raise DictionaryMismatchError unless ``d``'s hooks exist in ``model`` with widths ``d_in`` / ``d_out``."""
    hooks = sorted({d.hook_in, d.hook_out})
    try:
        widths = hook_widths(model, hooks)
    except ValueError as exc:
        raise DictionaryMismatchError(f"dictionary hooks do not exist in the model: {exc}") from exc
    if widths[d.hook_in] != d.d_in:
        raise DictionaryMismatchError(
            f"dictionary d_in is {d.d_in} but the model's {d.hook_in} is {widths[d.hook_in]} wide "
            f"(made for {getattr(d, 'model_name', None) or 'another model'}?)"
        )
    if widths[d.hook_out] != d.d_out:
        raise DictionaryMismatchError(
            f"dictionary d_out is {d.d_out} but the model's {d.hook_out} is {widths[d.hook_out]} wide"
        )
