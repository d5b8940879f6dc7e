"""What the circuit methods need to know about a model's architecture, read from a bridge in one place.

Every method that freezes a clean run (path ensembles, transcoder circuits, CD-T, patching) asks :meth:`ModelFacts.of`
rather than reading ``model.cfg`` itself: which norm (LayerNorm centres, RMSNorm does not) and its epsilon, whether the
MLP is gated and its activation, query and key-value heads, rotary or learned positions, which biases exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ACTIVATIONS", "ModelFacts", "UnsupportedModelError"]

# the bridge's activation names -> the kind the frozen forward computes (see circuits.frozen.weights.activation)
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact", "relu": "relu",
               "silu": "silu", "swish": "silu"}

_UNSUPPORTED = (
    ("parallel_attn_mlp", "parallel attention and MLP"), ("num_experts", "mixture of experts"),
    ("attn_scores_soft_cap", "soft-capped attention"), ("output_logits_soft_cap", "soft-capped logits"),
    ("use_qk_norm", "query/key norms"), ("post_embedding_ln", "a norm after the embedding"),
)


class UnsupportedModelError(ValueError):
    """The model has an architectural feature the frozen circuit methods do not cover."""


def _has(model: Any, name: str) -> bool:
    try:
        value = getattr(model, name)
    except AttributeError:
        return False
    return isinstance(value, torch.Tensor)


@dataclass(frozen=True)
class ModelFacts:
    """Architecture facts of one model.

    norm: "LN" (LayerNorm: centres) or "RMS"; eps: its epsilon; gated: gated MLP (``act(x W_gate) * x W_in``);
    act_fn: the bridge's activation name, act: its kind ("tanh", "exact", "relu", "silu"; None if unknown);
    positional: "standard" (learned) or "rotary", rotary_base for rotary; n_kv_heads: key-value heads (grouped-query
    attention when fewer than n_heads); has_mlp: False for attention-only models; biases: the stacked biases the
    model has (of "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U"); unsupported: the features no frozen method
    covers (see :meth:`check`).
    """

    n_layers: int
    d_model: int
    d_mlp: int
    d_head: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    n_ctx: int
    norm: str
    eps: float
    has_mlp: bool
    gated: bool
    act_fn: str
    act: str | None
    positional: str
    rotary_base: float | None
    biases: frozenset[str]
    bos_id: int | None
    unsupported: tuple[str, ...]

    @property
    def centered(self) -> bool:
        """True for LayerNorm (subtracts the mean), False for RMSNorm."""
        return self.norm == "LN"

    @property
    def rms(self) -> bool:
        return self.norm == "RMS"

    @property
    def n_rep(self) -> int:
        """Query heads per key-value head (head h reads key-value head h // n_rep)."""
        return self.n_heads // self.n_kv_heads

    @property
    def rotary(self) -> bool:
        return self.positional == "rotary"

    @classmethod
    def of(cls, model: Any) -> ModelFacts:
        """The facts of a ``TransformerBridge`` (read from its config and stacked weights)."""
        cfg = model.cfg
        norm_type = str(getattr(cfg, "normalization_type", "LN") or "")
        if norm_type.startswith("LN"):
            norm = "LN"
        elif norm_type.startswith("RMS"):
            norm = "RMS"
        else:
            norm = norm_type or "none"
        unsupported = []
        for attr, what in _UNSUPPORTED:
            value = getattr(cfg, attr, None)
            if value not in (None, False, 0, -1, -1.0):
                unsupported.append(f"{what} ({attr}={value!r})")
        if norm not in ("LN", "RMS"):
            unsupported.append(f"normalization {norm_type!r} (covered: LayerNorm, RMSNorm)")
        rope = getattr(cfg, "rope_parameters", None) or {}
        positional = str(getattr(cfg, "positional_embedding_type", "standard"))
        if positional == "rotary" and (rope.get("rope_type", "default") != "default"
                                       or getattr(cfg, "use_NTK_by_parts_rope", False)):
            unsupported.append(f"scaled rotary embeddings (rope parameters {rope})")
        if positional not in ("standard", "rotary"):
            unsupported.append(f"positions {positional!r} (covered: learned, rotary)")
        n_heads = int(cfg.n_heads)
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
        act_fn = str(getattr(cfg, "act_fn", "") or "")
        has_mlp = not getattr(cfg, "attn_only", False)
        bos = getattr(cfg, "bos_token_id", None)
        if bos is None and getattr(model, "tokenizer", None) is not None:
            bos = model.tokenizer.bos_token_id
        d_mlp = int(getattr(cfg, "d_mlp", 0) or 0) if has_mlp else 0
        return cls(
            n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), d_mlp=d_mlp, d_head=int(cfg.d_head),
            n_heads=n_heads, n_kv_heads=n_kv, d_vocab=int(cfg.d_vocab), n_ctx=int(getattr(cfg, "n_ctx", 0) or 0),
            norm=norm, eps=float(getattr(cfg, "eps", 1e-5)), has_mlp=has_mlp,
            gated=bool(getattr(cfg, "gated_mlp", False)), act_fn=act_fn, act=ACTIVATIONS.get(act_fn),
            positional=positional,
            rotary_base=float(rope.get("rope_theta", cfg.rotary_base)) if positional == "rotary" else None,
            biases=frozenset(n for n in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U") if _has(model, n)),
            bos_id=None if bos is None else int(bos), unsupported=tuple(unsupported),
        )

    def check(self, method: str, *, mlp: bool = True) -> ModelFacts:
        """``self``, or UnsupportedModelError naming what ``method`` does not cover (``mlp``: it needs MLP blocks
        with a known activation)."""
        if self.unsupported:
            raise UnsupportedModelError(f"{method} does not cover models with {'; '.join(self.unsupported)}")
        if mlp and self.has_mlp and self.act is None:
            raise UnsupportedModelError(
                f"{method} does not know the activation {self.act_fn!r}; known: {', '.join(ACTIVATIONS)}")
        return self
