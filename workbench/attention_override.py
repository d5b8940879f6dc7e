"""An attention function for Hugging Face models that lets training-time interventions edit attention.

transformers picks each attention layer's function by ``config._attn_implementation``. This module registers one
more, ``"workbench"``: the eager computation (scores, additive causal mask, float32 softmax, weighted values), plus
three optional per-module attributes read on every call:

- ``module.workbench_score_mask``: an additive mask [batch or 1, 1, query, key] added to the scores (0 keeps a key,
  ``-inf`` drops it): stochastically subsampled attention (:mod:`workbench.ssa`);
- ``module.workbench_pattern_edits``: functions ``pattern [batch, heads, query, key] -> pattern`` applied after the
  softmax (clamped attention patterns, :mod:`workbench.clamp`);
- ``module.workbench_record``: a list; when present, the (edited) pattern is appended to it, detached.

With none of them set the result equals transformers' eager attention bit for bit. :func:`override` switches a model
to this function and back; the switch changes no weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

NAME = "workbench"
_registered = False


def workbench_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                        **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the module's edits. query [b, heads, q, d], key/value [b, kv_heads, k, d];
    returns (output [b, q, heads, d], pattern [b, heads, q, k])."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    extra = getattr(module, "workbench_score_mask", None)
    if extra is not None:
        scores = scores + extra.to(scores.dtype)
    pattern = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for edit in getattr(module, "workbench_pattern_edits", ()):
        pattern = edit(pattern)
    record = getattr(module, "workbench_record", None)
    if record is not None:
        record.append(pattern.detach())
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def register() -> None:
    """Register :func:`workbench_attention` (and transformers' eager mask for it) under :data:`NAME`; idempotent."""
    global _registered
    if _registered:
        return
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, workbench_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    _registered = True


def attention_modules(model: Any) -> list[Any]:
    """The self-attention module of each decoder layer of a Llama-style HF causal LM, in layer order."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no model.layers (a Llama-style Hugging Face causal LM is needed)")
    return [layer.self_attn for layer in layers]


def set_override(model: Any, on: bool) -> None:
    """Switch ``model`` to the workbench attention function (``on``) or back to the implementation it had before."""
    register()
    config = model.config
    current = config._attn_implementation
    if on and current != NAME:
        model.workbench_previous_attention = current
        config._attn_implementation = NAME
    elif not on and current == NAME:
        config._attn_implementation = getattr(model, "workbench_previous_attention", "eager")


@contextmanager
def override(model: Any) -> Iterator[None]:
    """Run ``model`` with the workbench attention function inside the block (restored after it)."""
    was = model.config._attn_implementation
    set_override(model, True)
    try:
        yield
    finally:
        if was != NAME:
            set_override(model, False)


@contextmanager
def recorded_patterns(model: Any) -> Iterator[list[list[torch.Tensor]]]:
    """Inside the block every forward appends each layer's pattern [b, heads, q, k] to ``patterns[layer]``."""
    modules = attention_modules(model)
    patterns: list[list[torch.Tensor]] = [[] for _ in modules]
    with override(model):
        for module, store in zip(modules, patterns, strict=True):
            module.workbench_record = store
        try:
            yield patterns
        finally:
            for module in modules:
                module.workbench_record = None
