"""The clean run frozen into affine sublayers: every attention block and MLP block becomes ``x -> M_i x + b_i``.

Frozen from the clean run (:func:`circuits.frozen.clean.capture`): the norm scales (``hook_scale``), the attention
patterns and the MLP gates. Then

- a norm is linear: ``x -> center(x) / scale * w`` (LayerNorm centers, RMSNorm does not); its bias ``b`` is a
  constant of the sublayer the norm feeds (so it is part of that sublayer's ``b_i``; for the final norm, part of the
  readout's constant);
- attention is linear in its input's values: ``out = sum_h A_h (N(x) W_V,kv(h)) W_O,h`` with grouped-query heads
  sharing their key-value head (rotary embeddings touch queries and keys only, which the frozen pattern replaces);
  ``b_V``, ``b_O`` and the norm bias make the constant ``b_i``;
- an MLP ``act(N(x) W_in + b_in) W_out + b_out`` freezes the per-neuron ratio ``g = act(z) / z`` of the clean
  pre-activation ``z`` (``g`` = 0 where ``z`` = 0 exactly, where ``act(z) = 0`` too), so ``M_i x = ((N(x) W_in) * g) W_out``
  and ``b_i = ((b_norm W_in + b_in) * g) W_out + b_out``; then ``M_i x_clean + b_i = (z * g) W_out + b_out``, the clean
  output up to rounding. A gated MLP ``(act(N(x) W_gate) * N(x) W_in) W_out`` freezes ``act(N(x) W_gate)`` from the clean
  run; what is left is linear in ``x``.
- the readout ``logits = N_f(x) W_U + b_U`` is linear plus the constant ``b_f W_U + b_U``.

Every frozen map reproduces its clean value, so summing the path decomposition gives the clean logits back
(:mod:`circuits.paths.decompose`). :meth:`FrozenRun.reconstruction_errors` checks each map against the model's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from circuits.frozen.clean import LayerRun, capture
from circuits.frozen.facts import ModelFacts, UnsupportedModelError
from circuits.frozen.weights import Weights, model_weights

__all__ = ["FrozenRun", "PathInputError", "Sublayer", "freeze", "freeze_affine", "validate_tokens"]


class PathInputError(ValueError):
    """Input the path analysis cannot take (empty prompt, too long, bad length, unsupported model)."""


@dataclass
class Norm:
    """A frozen norm: ``x -> center(x) / scale * w`` (linear), bias ``b`` kept apart. scale: [batch, pos, 1]."""

    scale: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    center: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., batch, pos, d] -> same shape."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        x = x / self.scale
        return x * self.weight if self.weight is not None else x

    def to(self, dtype: torch.dtype) -> Norm:
        conv = (lambda t: None if t is None else t.to(dtype))  # noqa: E731
        return Norm(self.scale.to(dtype), conv(self.weight), conv(self.bias), self.center)


@dataclass
class Sublayer:
    """One frozen sublayer (``kind`` "attn" or "mlp" of block ``layer``): :meth:`apply` is ``M_i``, ``bias`` is ``b_i``.

    Attention tensors: pattern [batch, heads, q, k], W_V [kv_heads, d, d_head], W_O [heads, d_head, d].
    MLP tensors: gate [batch, pos, d_mlp] (frozen ratio or gate activation), W_in [d, d_mlp], W_out [d_mlp, d].
    bias: [batch, pos, d].
    """

    kind: str
    layer: int
    norm: Norm
    tensors: dict[str, torch.Tensor]
    bias: torch.Tensor = field(default=None)  # type: ignore[assignment]

    @property
    def name(self) -> str:
        """``attn3`` or ``mlp3``."""
        return f"{self.kind}{self.layer}"

    @property
    def n_heads(self) -> int:
        return self.tensors["W_O"].shape[0] if self.kind == "attn" else 0

    def apply_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs of the frozen attention map. x: [..., batch, pos, d] -> [..., heads, batch, pos, d]."""
        if self.kind != "attn":
            raise ValueError(f"{self.name} is an MLP; apply_heads needs an attention sublayer")
        z = self._z(x)  # [..., batch, q, heads, d_head]
        return torch.einsum("...bqhe,hed->...hbqd", z, self.tensors["W_O"])

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tensors
        y = self.norm(x)
        v = torch.einsum("...bpd,gde->...bpge", y, t["W_V"])  # [..., b, s, kv, e]
        n_heads, n_kv = t["W_O"].shape[0], t["W_V"].shape[0]
        pattern = t["pattern"]
        b, _, q, s = pattern.shape
        grouped = pattern.reshape(b, n_kv, n_heads // n_kv, q, s)
        z = torch.einsum("bgrqs,...bsge->...bqgre", grouped, v)
        return z.reshape(*z.shape[:-3], n_heads, z.shape[-1])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part ``M_i``. x: [..., batch, pos, d] -> [..., batch, pos, d]."""
        t = self.tensors
        if self.kind == "attn":
            z = self._z(x)
            return torch.einsum("...bqhe,hed->...bqd", z, t["W_O"])
        hidden = (self.norm(x) @ t["W_in"]) * t["gate"]
        return hidden @ t["W_out"]

    def to(self, dtype: torch.dtype) -> Sublayer:
        return Sublayer(self.kind, self.layer, self.norm.to(dtype), {k: v.to(dtype) for k, v in self.tensors.items()},
                        self.bias.to(dtype))


@dataclass
class FrozenRun:
    """A clean run frozen into affine sublayers.

    tokens: [batch, pos]; embed: [batch, pos, d] (token plus learned positions: the length-0 term);
    sublayers: the n frozen sublayers in order (attn0, mlp0, attn1, ...); final: the final norm;
    W_U: [d, vocab]; readout_bias: [vocab] (``b_f W_U + b_U``); clean_logits: [batch, pos, vocab];
    clean_outputs: each sublayer's clean output [batch, pos, d] (for :meth:`reconstruction_errors`).
    """

    tokens: torch.Tensor
    embed: torch.Tensor
    sublayers: list[Sublayer]
    final: Norm
    W_U: torch.Tensor
    readout_bias: torch.Tensor
    clean_logits: torch.Tensor
    clean_outputs: list[torch.Tensor]
    n_layers: int

    @property
    def n(self) -> int:
        """The number of sublayers."""
        return len(self.sublayers)

    def readout(self, x: torch.Tensor, constant: bool = False) -> torch.Tensor:
        """Logits of residual part(s) x: [..., batch, pos, d] -> [..., batch, pos, vocab] (linear part, plus the constant)."""
        out = self.final(x) @ self.W_U
        return out + self.readout_bias if constant else out

    def affine(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``M_i x + b_i`` for x: [..., batch, pos, d]."""
        return self.sublayers[i].apply(x) + self.sublayers[i].bias

    def reconstruction_errors(self) -> list[float]:
        """Per sublayer, max |M_i x_clean + b_i - clean output| / max |clean output|, x_clean rebuilt sublayer by sublayer."""
        x = self.embed
        errors = []
        for i, clean in enumerate(self.clean_outputs):
            out = self.affine(i, x)
            errors.append(float((out - clean).abs().max() / clean.abs().max().clamp_min(1e-30)))
            x = x + clean
        return errors

    def to(self, dtype: torch.dtype) -> FrozenRun:
        """A copy in ``dtype`` (e.g. float64 to separate the method's error from float32 rounding)."""
        return FrozenRun(self.tokens, self.embed.to(dtype), [s.to(dtype) for s in self.sublayers], self.final.to(dtype),
                         self.W_U.to(dtype), self.readout_bias.to(dtype), self.clean_logits.to(dtype),
                         [c.to(dtype) for c in self.clean_outputs], self.n_layers)


def model_device(model: Any) -> torch.device:
    """The device of the model's weights."""
    return next(model.parameters()).device


def validate_tokens(model: Any, tokens: torch.Tensor | str | list[str]) -> torch.Tensor:
    """Token ids [batch, pos] for ``tokens`` (a prompt, prompts or ids), with clear errors for empty or too long input."""
    if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and isinstance(tokens[0], str)):
        prompts = [tokens] if isinstance(tokens, str) else tokens
        if any(not p.strip() for p in prompts):
            raise PathInputError("empty prompt: give at least one non-blank character of text")
        tokens = model.to_tokens(prompts, truncate=False).cpu()
    if not isinstance(tokens, torch.Tensor):
        raise PathInputError(f"tokens must be a prompt string or a LongTensor [batch, pos], got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise PathInputError(f"empty input: tokens must be a non-empty [batch, pos] tensor, got shape {tuple(tokens.shape)}")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and tokens.shape[1] > n_ctx:
        raise PathInputError(f"the prompt has {tokens.shape[1]} tokens, longer than the model's context of {n_ctx} tokens")
    return tokens.long()


def freeze_affine(model: Any, tokens: torch.Tensor | str | list[str], dtype: torch.dtype | None = None) -> FrozenRun:
    """Run ``model`` on ``tokens`` once and freeze it into affine sublayers (see the module docstring).

    model: a ``TransformerBridge`` in compatibility mode (GPT-style: LayerNorm, learned positions, GELU/ReLU MLP,
    biases; or Llama-style: RMSNorm, rotary, grouped-query attention, gated MLP). tokens: a prompt, a list of prompts,
    or ids [batch, pos]. The clean run is :func:`circuits.frozen.clean.capture` of the model's weights in ``dtype``
    (default the model's own; a float64 model or ``dtype=torch.float64`` gives a float64 decomposition).
    """
    facts = ModelFacts.of(model)
    tokens = validate_tokens(model, tokens)
    try:
        run = capture(model, tokens.to(model_device(model)), dtype, method="the path decomposition")
        w = model_weights(model, dtype)
    except UnsupportedModelError as err:
        raise PathInputError(str(err)) from err

    def norm(scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> Norm:
        return Norm(1 / scale, weight, None if facts.rms else bias, facts.centered)

    sublayers, outputs = [], []
    for layer, lc in enumerate(run.layers):
        attn = Sublayer("attn", layer, norm(lc.scale1, w.ln1_w[layer], w.ln1_b[layer]),
                        {"pattern": lc.pattern, "W_V": w.W_V[layer], "W_O": w.W_O[layer]})
        attn.bias = _attn_bias(attn, w.b_V[layer], w.b_O[layer], lc.attn_out.shape)
        sublayers.append(attn)
        outputs.append(lc.attn_out)
        if w.has_mlp:
            mlp = _mlp(w, layer, lc, norm(lc.scale2, w.ln2_w[layer], w.ln2_b[layer]))
            sublayers.append(mlp)
            outputs.append(lc.mlp_out)
    final = norm(run.final_scale, w.lnf_w, w.lnf_b)
    readout_bias = w.b_U.clone()
    if final.bias is not None:
        readout_bias = readout_bias + final.bias @ w.W_U
    return FrozenRun(tokens.cpu(), run.embed, sublayers, final, w.W_U, readout_bias, run.logits, outputs,
                     facts.n_layers)


freeze = freeze_affine  # the name the path analyses have always used


def _attn_bias(attn: Sublayer, b_V: torch.Tensor, b_O: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``b_i`` of an attention sublayer: the norm bias and b_V through the frozen pattern, plus b_O. -> [batch, pos, d]."""
    t = attn.tensors
    bias = torch.zeros(shape, dtype=t["W_O"].dtype, device=t["W_O"].device)
    v0 = b_V.reshape(t["W_V"].shape[0], t["W_V"].shape[2]).clone()  # [kv, e]
    if attn.norm.bias is not None:
        v0 = v0 + torch.einsum("d,gde->ge", attn.norm.bias, t["W_V"])
    if v0.abs().max() > 0:
        n_heads, n_kv = t["W_O"].shape[0], t["W_V"].shape[0]
        v_heads = v0.repeat_interleave(n_heads // n_kv, dim=0)  # [heads, e]
        weight = t["pattern"].sum(-1)  # [b, h, q]: 1 up to rounding; kept for exactness
        bias = bias + torch.einsum("bhq,he,hed->bqd", weight, v_heads, t["W_O"])
    return bias + b_O


def _mlp(w: Weights, layer: int, lc: LayerRun, norm: Norm) -> Sublayer:
    """The frozen MLP of block ``layer``: the gate act(N(x) W_gate) (gated) or the ratio act(z) / z of its clean
    pre-activation z (0 where z = 0)."""
    W_in, W_out = w.W_in[layer], w.W_out[layer]
    if w.gated:
        gate = lc.gate
    else:
        pre, post = lc.up, lc.post
        nonzero = pre != 0
        gate = torch.where(nonzero, post / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
    sub = Sublayer("mlp", layer, norm, {"gate": gate, "W_in": W_in, "W_out": W_out})
    const = w.b_in[layer].clone()
    if norm.bias is not None:
        const = const + norm.bias @ W_in
    sub.bias = (const * gate) @ W_out + w.b_out[layer]
    return sub
