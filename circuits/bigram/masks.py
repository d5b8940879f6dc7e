"""Masks over a model's weights: which weights are masked, and the masked forward.

The masked weights (the paper's choice): every weight matrix of the attention (query, key, value, output; a fused
query-key-value matrix counts as ``qkv``) and of the MLP (``in``, ``gate``, ``out``) in every layer. Token
embeddings, position embeddings, the unembedding, every norm and every bias are kept whole. A weight matrix the
forward pass never reads (transformer-lens' bridge keeps a fused ``qkv`` beside the split q/k/v of GPT-2) is found by
one backward pass and left out.

The forward runs the model itself through ``torch.func.functional_call`` with each masked weight replaced by
``weight * mask``: the model's own parameters are never changed, and gradients reach only the masks. The mask is a
float tensor of the weight's shape (1 keeps, 0 drops); the model is whatever was loaded (with the library's weight
processing, the weights masked are the processed ones: a zero stays a zero either way, as norms fold into rows and
columns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

__all__ = ["MaskGroup", "SUBLAYERS", "find_groups", "masked_logits", "masked_params"]

#: sublayer labels in report order
SUBLAYERS = ("q", "k", "v", "qkv", "o", "in", "gate", "out")

_ATTN_PARENTS = {"attn", "self_attn", "attention", "self_attention"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn"}
_ATTN_LEAVES = {"q_proj": "q", "q": "q", "query": "q", "k_proj": "k", "k": "k", "key": "k", "v_proj": "v",
                "v": "v", "value": "v", "qkv": "qkv", "c_attn": "qkv", "query_key_value": "qkv", "Wqkv": "qkv",
                "o_proj": "o", "o": "o", "out_proj": "o", "c_proj": "o", "dense": "o"}
_MLP_LEAVES = {"up_proj": "in", "c_fc": "in", "fc1": "in", "fc_in": "in", "dense_h_to_4h": "in", "in": "in",
               "gate_proj": "gate", "gate": "gate", "down_proj": "out", "c_proj": "out", "fc2": "out",
               "fc_out": "out", "dense_4h_to_h": "out", "out": "out"}


@dataclass(frozen=True)
class MaskGroup:
    """One masked weight matrix: ``name`` (the model's parameter name), ``layer``, ``sublayer`` (one of
    :data:`SUBLAYERS`, or the module's own name when unknown), ``kind`` ("attn" or "mlp"), ``shape``."""

    name: str
    layer: int
    sublayer: str
    kind: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def label(self) -> str:
        """``"L0.attn.q"``-style short name."""
        return f"L{self.layer}.{self.kind}.{self.sublayer}"


def _parts(name: str) -> list[str]:
    return [p for p in name.split(".") if p != "_original_component"]


def _classify(name: str) -> tuple[int, str, str] | None:
    parts = _parts(name)
    if parts[-1] != "weight" or len(parts) < 4:
        return None
    layer = next((int(p) for p in parts if re.fullmatch(r"\d+", p)), None)
    if layer is None:
        return None
    parent, leaf = parts[-3], parts[-2]
    if parent in _ATTN_PARENTS:
        return layer, _ATTN_LEAVES.get(leaf, leaf), "attn"
    if parent in _MLP_PARENTS:
        return layer, _MLP_LEAVES.get(leaf, leaf), "mlp"
    return None


def find_groups(model: Any, kinds: tuple[str, ...] = ("attn", "mlp")) -> list[MaskGroup]:
    """The masked weight matrices of ``model`` (a bridge or any module) of the given kinds, in layer order then
    :data:`SUBLAYERS` order; matrices the forward never reads are left out (found with one backward pass on a
    two-token input). ValueError when none is found."""
    params = dict(model.named_parameters())
    found = []
    for name, p in params.items():
        info = _classify(name)
        if info is not None and p.dim() >= 2 and info[2] in kinds:
            found.append(MaskGroup(name, info[0], info[1], info[2], tuple(p.shape)))
    if not found:
        raise ValueError(f"no attention or MLP weight matrices found among the model's {len(params)} parameters")
    device = next(iter(params.values())).device
    probe = {g.name: torch.ones(g.shape, device=device, dtype=params[g.name].dtype, requires_grad=True) for g in found}
    tokens = torch.zeros((1, 2), dtype=torch.long, device=device)
    masked_logits(model, tokens, probe).float().square().sum().backward()
    used = [g for g in found if probe[g.name].grad is not None]
    order = {s: i for i, s in enumerate(SUBLAYERS)}
    return sorted(used, key=lambda g: (g.layer, g.kind != "attn", order.get(g.sublayer, len(order)), g.name))


def masked_params(model: Any, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter replacements for :func:`torch.func.functional_call`: ``weight * mask`` for every masked name."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() * mask.to(params[name].dtype) for name, mask in masks.items()}


def masked_logits(model: Any, tokens: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits [batch, seq, d_vocab] on ``tokens`` [batch, seq] with each weight ``name`` of ``masks``
    multiplied by ``masks[name]`` (same shape); differentiable in the masks. Rows are right-padded, so a causal
    model needs no attention mask: padding never reaches a real position.

    ``tie_weights=False``: the bridge reaches each module under several names, and torch's tied-weight bookkeeping
    then leaves the replacement in place after the call (the model's own weights changed for good); each masked
    matrix is one module's own parameter, so replacing it by its one name is enough."""
    return functional_call(model, masked_params(model, masks), (tokens,), strict=False, tie_weights=False)
