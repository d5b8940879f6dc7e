"""The clean run frozen into affine sublayers: every attention block and MLP block becomes ``x -> M_i x + b_i``.

Frozen from the clean run: the norm scales (``hook_scale``), the attention patterns and the MLP gates. Then

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

__all__ = ["FrozenRun", "PathInputError", "Sublayer", "freeze", "validate_tokens"]


class PathInputError(ValueError):
    """Input the path analysis cannot take (empty prompt, too long, bad length, unsupported model)."""


def _weight(obj: Any, name: str) -> torch.Tensor | None:
    """A weight or bias of a bridge component, None where the model has none."""
    try:
        value = getattr(obj, name)
    except AttributeError:
        return None
    return value.detach() if isinstance(value, torch.Tensor) else None


def _norm_params(module: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    comp = getattr(module, "_original_component", module)
    return _weight(comp, "weight"), _weight(comp, "bias")


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


def _hook_names(n_layers: int, gated: bool, has_mlp: bool) -> set[str]:
    names = {"blocks.0.hook_resid_pre", "ln_final.hook_scale"}
    for layer in range(n_layers):
        names |= {f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.hook_attn_out"}
        if has_mlp:
            names |= {f"blocks.{layer}.ln2.hook_scale", f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post",
                      f"blocks.{layer}.hook_mlp_out"}
            if gated:
                names.add(f"blocks.{layer}.mlp.hook_pre_linear")
    return names


def _activation(name: str):
    import torch.nn.functional as F

    table = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu,
             "gelu_new": lambda z: F.gelu(z, approximate="tanh"), "gelu_pytorch_tanh": lambda z: F.gelu(z, approximate="tanh"),
             "gelu_fast": lambda z: F.gelu(z, approximate="tanh")}
    if name not in table:
        raise PathInputError(f"gated MLP activation {name!r} is not supported; supported: {', '.join(sorted(table))}")
    return table[name]


def freeze(model: Any, tokens: torch.Tensor | str | list[str]) -> FrozenRun:
    """Run ``model`` on ``tokens`` once and freeze it into affine sublayers (see the module docstring).

    model: a ``TransformerBridge`` in compatibility mode (GPT-style: LayerNorm, learned positions, GELU/ReLU MLP,
    biases; or Llama-style: RMSNorm, rotary, grouped-query attention, gated MLP). tokens: a prompt, a list of prompts,
    or ids [batch, pos]. Computed in the model's dtype (convert the model to float64 for a float64 decomposition).
    """
    cfg = model.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        raise PathInputError("models with parallel attention and MLP blocks are not supported (sublayers must be sequential)")
    tokens = validate_tokens(model, tokens)
    n_layers = int(cfg.n_layers)
    has_mlp = not getattr(cfg, "attn_only", False)
    gated = bool(getattr(cfg, "gated_mlp", False))
    center = str(getattr(cfg, "normalization_type", "LN") or "").startswith("LN")
    names = _hook_names(n_layers, gated, has_mlp)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n in names)

    def norm(module: Any, scale: torch.Tensor) -> Norm:
        w, b = _norm_params(module)
        return Norm(scale, w, b, center)

    sublayers, outputs = [], []
    for layer in range(n_layers):
        block = model.blocks[layer]
        attn = Sublayer("attn", layer, norm(block.ln1, cache[f"blocks.{layer}.ln1.hook_scale"]),
                        {"pattern": cache[f"blocks.{layer}.attn.hook_pattern"], "W_V": _weight(block.attn, "W_V"),
                         "W_O": _weight(block.attn, "W_O")})
        attn.bias = _attn_bias(attn, _weight(block.attn, "b_V"), _weight(block.attn, "b_O"), cache, layer)
        sublayers.append(attn)
        outputs.append(cache[f"blocks.{layer}.hook_attn_out"])
        if has_mlp:
            sublayers.append(_mlp(block, layer, norm(block.ln2, cache[f"blocks.{layer}.ln2.hook_scale"]), cache, gated, cfg))
            outputs.append(cache[f"blocks.{layer}.hook_mlp_out"])
    final = norm(model.ln_final, cache["ln_final.hook_scale"])
    W_U = model.W_U.detach()
    b_U = _weight(model, "b_U")
    readout_bias = torch.zeros(W_U.shape[1], dtype=W_U.dtype, device=W_U.device)
    if final.bias is not None:
        readout_bias = readout_bias + final.bias @ W_U
    if b_U is not None:
        readout_bias = readout_bias + b_U
    return FrozenRun(tokens.cpu(), cache["blocks.0.hook_resid_pre"], sublayers, final, W_U, readout_bias,
                     logits.detach(), outputs, n_layers)


def _attn_bias(attn: Sublayer, b_V: torch.Tensor | None, b_O: torch.Tensor | None, cache: Any, layer: int) -> torch.Tensor:
    """``b_i`` of an attention sublayer: the norm bias and b_V through the frozen pattern, plus b_O. -> [batch, pos, d]."""
    t = attn.tensors
    shape = cache[f"blocks.{layer}.hook_attn_out"].shape
    bias = torch.zeros(shape, dtype=t["W_O"].dtype, device=t["W_O"].device)
    v0 = torch.zeros(t["W_V"].shape[0], t["W_V"].shape[2], dtype=bias.dtype, device=bias.device)  # [kv, e]
    if attn.norm.bias is not None:
        v0 = v0 + torch.einsum("d,gde->ge", attn.norm.bias, t["W_V"])
    if b_V is not None:
        v0 = v0 + b_V.reshape(v0.shape)
    if v0.abs().max() > 0:
        n_heads, n_kv = t["W_O"].shape[0], t["W_V"].shape[0]
        v_heads = v0.repeat_interleave(n_heads // n_kv, dim=0)  # [heads, e]
        weight = t["pattern"].sum(-1)  # [b, h, q]: 1 up to rounding; kept for exactness
        bias = bias + torch.einsum("bhq,he,hed->bqd", weight, v_heads, t["W_O"])
    if b_O is not None:
        bias = bias + b_O
    return bias


def _mlp(block: Any, layer: int, norm: Norm, cache: Any, gated: bool, cfg: Any) -> Sublayer:
    W_in, W_out = _weight(block.mlp, "W_in"), _weight(block.mlp, "W_out")
    b_in, b_out = _weight(block.mlp, "b_in"), _weight(block.mlp, "b_out")
    pre = cache[f"blocks.{layer}.mlp.hook_pre"]
    if gated:
        gate = _activation(str(cfg.act_fn))(pre)  # act(N(x) W_gate), frozen
    else:
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        nonzero = pre != 0
        gate = torch.where(nonzero, post / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
    sub = Sublayer("mlp", layer, norm, {"gate": gate, "W_in": W_in, "W_out": W_out})
    const = torch.zeros(W_in.shape[1], dtype=W_in.dtype, device=W_in.device)
    if norm.bias is not None:
        const = const + norm.bias @ W_in
    if b_in is not None:
        const = const + b_in
    bias = (const * gate) @ W_out
    if b_out is not None:
        bias = bias + b_out
    sub.bias = bias
    return sub
