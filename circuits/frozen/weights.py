"""A model's weights as plain stacked tensors in any dtype, and the elementwise pieces of a forward over them.

Both families the workbench loads are covered:

- GPT-style: LayerNorm (weight and bias), learned absolute positions, GELU / ReLU MLP with biases;
- Llama-style: RMSNorm, rotary positions (``rotate_half`` convention), grouped-query attention, SiLU-gated MLP.

The weights come from the bridge's stacked tensors (``W_Q`` [L, H, d, dh], ``W_K``/``W_V`` [L, KV, d, dh], ...); biases the
checkpoint lacks are zeros. Building from the stacked weights rather than the bridge's modules is what makes a float64
run possible whatever dtype the model was loaded in; :func:`circuits.frozen.clean.capture` reproduces the bridge's
activations (checked by the tests against its hooks). The architecture is read from :class:`ModelFacts`.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuits.frozen.facts import ModelFacts

__all__ = ["Weights", "activation", "attention_pattern", "model_weights", "normalize", "rotate"]


@dataclass
class Weights:
    """Stacked weights of one model (shapes with L layers, H query heads, KV key-value heads, d = d_model, dh, m = d_mlp, V).

    The MLP tensors are None for attention-only models.
    """

    W_E: torch.Tensor  # [V, d]
    W_pos: torch.Tensor | None  # [n_ctx, d] (learned positions) or None (rotary)
    W_Q: torch.Tensor  # [L, H, d, dh]
    W_K: torch.Tensor  # [L, KV, d, dh]
    W_V: torch.Tensor  # [L, KV, d, dh]
    W_O: torch.Tensor  # [L, H, dh, d]
    b_Q: torch.Tensor  # [L, H, dh]
    b_K: torch.Tensor  # [L, KV, dh]
    b_V: torch.Tensor  # [L, KV, dh]
    b_O: torch.Tensor  # [L, d]
    W_in: torch.Tensor | None  # [L, d, m] (the "up" projection of a gated MLP)
    b_in: torch.Tensor | None  # [L, m]
    W_gate: torch.Tensor | None  # [L, d, m] for gated MLPs
    W_out: torch.Tensor | None  # [L, m, d]
    b_out: torch.Tensor | None  # [L, d]
    W_U: torch.Tensor  # [d, V]
    b_U: torch.Tensor  # [V]
    ln1_w: torch.Tensor  # [L, d]
    ln1_b: torch.Tensor  # [L, d] (zeros for RMSNorm)
    ln2_w: torch.Tensor  # [L, d]
    ln2_b: torch.Tensor  # [L, d]
    lnf_w: torch.Tensor  # [d]
    lnf_b: torch.Tensor  # [d]
    rms: bool  # RMSNorm (else LayerNorm)
    eps: float
    act: str  # "tanh" (GELU tanh approximation), "exact" (GELU), "relu" or "silu"
    rotary_base: float | None  # None for learned positions

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def n_kv(self) -> int:
        return int(self.W_K.shape[1])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[-1])

    @property
    def gated(self) -> bool:
        return self.W_gate is not None

    @property
    def has_mlp(self) -> bool:
        return self.W_in is not None

    def rotary(self, seq: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(cos, sin)`` [seq, dh] of the rotary embedding (``rotate_half`` layout), or None for learned positions."""
        if self.rotary_base is None:
            return None
        dh = self.d_head
        inv = 1.0 / (self.rotary_base ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
        freqs = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(self.W_Q), emb.sin().to(self.W_Q)


def _get(model, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    try:
        value = getattr(model, name)
    except AttributeError:
        value = None
    if value is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return value.detach()


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_weights(model, dtype: torch.dtype | None = None, *, method: str = "the frozen forward") -> Weights:
    """The :class:`Weights` of a ``TransformerBridge`` in ``dtype`` (default: the model's), cached per model and dtype.

    Raises :class:`~circuits.frozen.facts.UnsupportedModelError` (a ValueError naming ``method``) for an architecture
    the frozen forward does not cover (parallel attention/MLP, mixture of experts, soft-capped logits, scaled rotary
    embeddings, an unknown activation).
    """
    dtype = dtype or next(model.parameters()).dtype
    per_model = _CACHE.setdefault(model, {})
    if dtype in per_model:
        return per_model[dtype]
    facts = ModelFacts.of(model).check(method)
    L, d = facts.n_layers, facts.d_model
    W_Q = model.W_Q.detach()
    W_K = model.W_K.detach()
    H, kv, dh = W_Q.shape[1], W_K.shape[1], W_Q.shape[-1]
    mlp = facts.has_mlp
    W_in = model.W_in.detach() if mlp else None
    m = W_in.shape[-1] if mlp else 0

    def norm(module) -> tuple[torch.Tensor, torch.Tensor]:
        w = getattr(module, "weight", None)
        b = getattr(module, "bias", None)
        w = w.detach() if w is not None else torch.ones(d, dtype=W_Q.dtype, device=W_Q.device)
        b = b.detach() if b is not None else torch.zeros(d, dtype=W_Q.dtype, device=W_Q.device)
        return w, b

    ln1 = [norm(block.ln1) for block in model.blocks]
    ln2 = [norm(block.ln2) if mlp else norm(None) for block in model.blocks]
    lnf_w, lnf_b = norm(model.ln_final)
    weights = Weights(
        W_E=model.W_E.detach(),
        W_pos=model.W_pos.detach() if facts.positional == "standard" else None,
        W_Q=W_Q, W_K=W_K, W_V=model.W_V.detach(), W_O=model.W_O.detach(),
        b_Q=_get(model, "b_Q", (L, H, dh), W_Q), b_K=_get(model, "b_K", (L, kv, dh), W_Q),
        b_V=_get(model, "b_V", (L, kv, dh), W_Q), b_O=_get(model, "b_O", (L, d), W_Q),
        W_in=W_in, b_in=_get(model, "b_in", (L, m), W_Q) if mlp else None,
        W_gate=model.W_gate.detach() if mlp and facts.gated else None,
        W_out=model.W_out.detach() if mlp else None, b_out=_get(model, "b_out", (L, d), W_Q) if mlp else None,
        W_U=model.W_U.detach(), b_U=_get(model, "b_U", (model.W_U.shape[-1],), W_Q),
        ln1_w=torch.stack([w for w, _ in ln1]), ln1_b=torch.stack([b for _, b in ln1]),
        ln2_w=torch.stack([w for w, _ in ln2]), ln2_b=torch.stack([b for _, b in ln2]),
        lnf_w=lnf_w, lnf_b=lnf_b, rms=facts.rms, eps=facts.eps, act=facts.act or "",
        rotary_base=facts.rotary_base,
    )
    for name, value in vars(weights).items():
        if isinstance(value, torch.Tensor):
            setattr(weights, name, value.to(dtype))
    per_model[dtype] = weights
    return weights


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP nonlinearity ``kind`` (see :class:`Weights`), elementwise on any shape."""
    if kind == "tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "exact":
        return F.gelu(x)
    if kind == "relu":
        return F.relu(x)
    return F.silu(x)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [..., T, heads, dh] with cos/sin [T, dh] (a linear map, no bias)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def normalize(w: Weights, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """LayerNorm or RMSNorm of ``x`` [..., d] with the model's eps (or ``eps``)."""
    eps = w.eps if eps is None else eps
    if w.rms:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    centred = x - x.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight + bias


def attention_pattern(w: Weights, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax pattern [..., H, Tq, Tk] from rotated q [..., T, H, dh] and k [..., T, KV, dh]."""
    group = w.n_heads // w.n_kv
    k = k.repeat_interleave(group, dim=-2)
    scores = torch.einsum("...qhe,...khe->...hqk", q, k) / math.sqrt(w.d_head)
    T = q.shape[-3]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)
