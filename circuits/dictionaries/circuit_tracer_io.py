"""A per-layer transcoder set in circuit-tracer's folder layout (``model_kind: transcoder_set``), and back.

Layout (what circuit-tracer 0.5.0's ``load_transcoders`` / ``load_transcoder_set`` read from a hub snapshot)::

    folder/config.yaml            model_kind: transcoder_set, feature_input_hook, feature_output_hook, scan,
                                  and (read by no circuit-tracer loader) activation_function / k / layers
    folder/layer_<i>.safetensors  W_enc [d_sae, d_in] (applied as F.linear(x, W_enc, b_enc)), b_enc [d_sae],
                                  W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] (x @ W_skip.T), optional

Hooks: for a Llama-family model ``mlp.hook_in`` (the ``post_attention_layernorm`` output, the norm's weight applied)
and ``mlp.hook_out`` (the MLP output), which circuit-tracer's nnsight backend maps to the HF modules and its
TransformerLens backend finds on its wrapped MLPs.

The workbench's transcoders read ``blocks.L.ln2.hook_normalized`` of a model whose weight processing folded the
norm's weight ``g`` into the MLP (``hook_normalized`` = x / rms(x)); circuit-tracer reads x / rms(x) * g. Give
``norm_weights`` (layer -> g [d]) and the encoder is written as ``W_enc[i, f] / g[i]`` (and ``W_skip`` likewise), so
that both compute the same pre-activations. circuit-tracer's own loader knows ReLU and JumpReLU only: a TopK set is
marked ``activation_function: topk`` with its ``k`` in config.yaml, and whoever loads it there must set the
activation (TopK then ReLU, as here) itself.

Shapes: d_in = d_out = d_model, d_sae = features per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from circuits.dictionaries.model import Dictionary
from workbench.atomic import atomic_dir

__all__ = ["CONFIG_FILE", "CircuitTracerSetError", "export_transcoder_set", "hf_norm_weights", "layer_file", "read_transcoder_set"]

CONFIG_FILE = "config.yaml"


class CircuitTracerSetError(ValueError):
    """A transcoder set that cannot be written or read in circuit-tracer's layout (not per-layer transcoders,
    missing layers, a file without the keys or shapes circuit-tracer reads)."""


def layer_file(layer: int) -> str:
    """The file name circuit-tracer globs for layer ``layer``."""
    return f"layer_{layer}.safetensors"


def export_transcoder_set(transcoders: Mapping[int, Dictionary], folder: Path | str, *, scan: str,
                          norm_weights: Mapping[int, torch.Tensor] | None = None,
                          feature_input_hook: str = "mlp.hook_in", feature_output_hook: str = "mlp.hook_out") -> Path:
    """Write ``transcoders`` (layer -> per-layer transcoder or skip transcoder, layers 0..L-1 all present) into
    ``folder`` (created atomically, replaced if it exists) in circuit-tracer's layout; float32 tensors.

    ``norm_weights``: layer -> the weight [d_in] of the norm before each transcoder's input that the model's weight
    processing folded away (see the module docstring); None when the transcoders read the norm's full output.
    Raises :class:`CircuitTracerSetError` for missing layers, an SAE, mixed activations or widths.
    """
    layers = sorted(transcoders)
    if not layers or layers != list(range(len(layers))):
        raise CircuitTracerSetError(f"circuit-tracer needs a transcoder for every layer 0..L-1; got layers {layers}")
    kinds = {(tc.kind, tc.activation, tc.k, tc.d_in, tc.d_out) for tc in transcoders.values()}
    if any(k[0] not in ("transcoder", "skip_transcoder") for k in kinds):
        raise CircuitTracerSetError("only per-layer transcoders (kind transcoder or skip_transcoder) can be exported; "
                                    f"got kinds {sorted({k[0] for k in kinds})}")
    if len({k[1:] for k in kinds}) != 1:
        raise CircuitTracerSetError(f"every layer must share activation, k and widths; got {sorted(kinds, key=str)}")
    first = transcoders[layers[0]]
    config: dict[str, Any] = {
        "model_kind": "transcoder_set", "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook, "scan": scan, "layers": len(layers),
        "activation_function": first.activation, "d_model": first.d_in, "d_transcoder": first.d_sae,
        "workbench_hooks": {"in": first.hook_in, "out": first.hook_out},
    }
    if first.activation == "topk":
        config["k"] = int(first.k)
    with atomic_dir(Path(folder), overwrite=True) as tmp:
        for layer in layers:
            g = None if norm_weights is None else norm_weights[layer]
            save_file(_layer_tensors(transcoders[layer], g), str(tmp / layer_file(layer)))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(folder)


def _layer_tensors(tc: Dictionary, g: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """circuit-tracer's tensors of one transcoder, its input rescaled by 1 / g (see the module docstring)."""
    W_enc, b_enc = tc.W_enc.detach().double(), tc.b_enc.detach().double()
    if tc.apply_b_dec_to_input:  # (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc)
        b_enc = b_enc - tc.b_dec.detach().double() @ W_enc
    inv = torch.ones(tc.d_in, dtype=torch.float64)
    if g is not None:
        g = g.detach().double().cpu()
        if g.shape != (tc.d_in,) or not bool((g.abs() > 0).all()):
            raise CircuitTracerSetError(f"a norm weight must have shape ({tc.d_in},) with no zero entry; got "
                                        f"shape {tuple(g.shape)}")
        inv = 1.0 / g
    out = {"W_enc": (W_enc * inv[:, None]).T, "b_enc": b_enc, "W_dec": tc.W_dec.detach().double(),
           "b_dec": tc.b_dec.detach().double()}
    if tc.W_skip is not None:
        out["W_skip"] = (tc.W_skip.detach().double() * inv[:, None]).T
    return {k: v.float().contiguous() for k, v in out.items()}


def read_transcoder_set(folder: Path | str) -> tuple[dict[str, Any], dict[int, Dictionary]]:
    """(config.yaml as a dict, layer -> Dictionary) of a set in circuit-tracer's layout. The dictionaries read
    circuit-tracer's input (the norm's output with its weight); their hooks are the config's ``workbench_hooks``
    where present. Raises :class:`CircuitTracerSetError` for a missing file, key or a wrong shape."""
    folder = Path(folder)
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CircuitTracerSetError(f"{folder}: no readable {CONFIG_FILE} ({exc})") from exc
    if not isinstance(config, dict) or config.get("model_kind") != "transcoder_set":
        raise CircuitTracerSetError(f"{folder / CONFIG_FILE}: model_kind must be transcoder_set")
    files = sorted(folder.glob("layer_*.safetensors"))
    n = len(files)
    if n == 0 or {p.name for p in files} != {layer_file(i) for i in range(n)}:
        raise CircuitTracerSetError(f"{folder}: expected layer_0..layer_{{L-1}}.safetensors, got "
                                    f"{[p.name for p in files]}")
    hooks = config.get("workbench_hooks") or {}
    out: dict[int, Dictionary] = {}
    for layer in range(n):
        t = load_file(str(folder / layer_file(layer)))
        missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(t)
        if missing:
            raise CircuitTracerSetError(f"{folder / layer_file(layer)}: missing {sorted(missing)}")
        d_sae, d_in = t["W_enc"].shape
        d_out = t["b_dec"].shape[0]
        if t["b_enc"].shape != (d_sae,) or t["W_dec"].shape != (d_sae, d_out) or (
                "W_skip" in t and t["W_skip"].shape != (d_out, d_in)):
            raise CircuitTracerSetError(f"{folder / layer_file(layer)}: shapes do not fit: "
                                        f"{ {k: tuple(v.shape) for k, v in t.items()} }")
        topk = config.get("activation_function") == "topk"
        hook_in = _relayer(str(hooks.get("in", f"blocks.0.{config.get('feature_input_hook')}")), layer)
        hook_out = _relayer(str(hooks.get("out", f"blocks.0.{config.get('feature_output_hook')}")), layer)
        d = Dictionary("skip_transcoder" if "W_skip" in t else "transcoder", d_in, d_sae, d_out=d_out,
                       activation="topk" if topk else "relu", k=config.get("k") if topk else None,
                       hook_in=hook_in, hook_out=hook_out)
        with torch.no_grad():
            d.W_enc.copy_(t["W_enc"].T)
            d.b_enc.copy_(t["b_enc"])
            d.W_dec.copy_(t["W_dec"])
            d.b_dec.copy_(t["b_dec"])
            if d.W_skip is not None:
                d.W_skip.copy_(t["W_skip"].T)
        out[layer] = d
    return config, out


def hf_norm_weights(model_folder: Path | str, n_layers: int,
                    key: str = "model.layers.{layer}.post_attention_layernorm.weight") -> dict[int, torch.Tensor]:
    """layer -> the MLP-input norm's weight [d] read from a Hugging Face folder's safetensors (``key`` with
    ``{layer}``; the default is the Llama / Qwen name), for :func:`export_transcoder_set`'s ``norm_weights``."""
    from safetensors import safe_open

    want = {key.format(layer=layer): layer for layer in range(n_layers)}
    out: dict[int, torch.Tensor] = {}
    for path in sorted(Path(model_folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                if name in want:
                    out[want[name]] = f.get_tensor(name).float()
    if len(out) != n_layers:
        raise CircuitTracerSetError(f"{model_folder}: found the norm weight {key!r} for layers {sorted(out)} of "
                                    f"0..{n_layers - 1}")
    return out


def _relayer(hook: str, layer: int) -> str:
    """``blocks.<any>.rest`` -> ``blocks.<layer>.rest`` (the config names layer 0's hooks)."""
    parts = hook.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        parts[1] = str(layer)
    return ".".join(parts)
