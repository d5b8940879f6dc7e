"""The clean run kept node by node: every value the beta-only walk (:mod:`circuits.cdt.walk`) reads.

The decomposition keeps ``beta + gamma`` equal to the clean activation at every node, so ``gamma = clean - beta``
everywhere: a walk that knows the clean value of each node only has to carry ``beta``. This module runs the clean
forward once and keeps, per layer, the norms' scales, the pre-bias outputs of every linear map (the bias rule shares a
bias by ``|W beta|`` against ``|W gamma| = |W clean - W beta|``), the rotated queries and keys, the attention pattern
and the MLP's pre- and post-activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.cdt.weights import CleanCache, Weights, activation, attention_pattern, rotate

__all__ = ["FullCache", "LayerCache", "clean_forward", "full_forward"]


@dataclass
class LayerCache:
    """One block of the clean run over [B, T] (shapes: d = d_model, H / KV heads, dh, m = d_mlp)."""

    resid_pre: torch.Tensor  # [B, T, d]
    scale1: torch.Tensor  # [B, T, 1] ln1's 1 / sqrt(var + eps) (RMS: 1 / rms)
    normed1: torch.Tensor  # [B, T, d] ln1 output before its bias
    q_lin: torch.Tensor  # [B, T, H, dh] h @ W_Q (before bias and rotation)
    k_lin: torch.Tensor  # [B, T, KV, dh]
    v_lin: torch.Tensor  # [B, T, KV, dh]
    q: torch.Tensor  # [B, T, H, dh] with bias, rotated
    k: torch.Tensor  # [B, T, KV, dh] with bias, rotated
    v: torch.Tensor  # [B, T, KV, dh] with bias
    pattern: torch.Tensor  # [B, H, T, T]
    z: torch.Tensor  # [B, T, H, dh]
    attn_lin: torch.Tensor  # [B, T, d] z @ W_O summed over heads, before b_O
    resid_mid: torch.Tensor  # [B, T, d]
    scale2: torch.Tensor  # [B, T, 1]
    normed2: torch.Tensor  # [B, T, d] ln2 output before its bias
    up_lin: torch.Tensor  # [B, T, m] h @ W_in before b_in
    up: torch.Tensor  # [B, T, m]
    gate_pre: torch.Tensor | None  # [B, T, m] h @ W_gate (gated MLPs)
    gate: torch.Tensor | None  # [B, T, m] act(gate_pre)
    post: torch.Tensor  # [B, T, m]
    out_lin: torch.Tensor  # [B, T, d] post @ W_out before b_out
    mlp_out: torch.Tensor  # [B, T, d]
    resid_post: torch.Tensor  # [B, T, d]


@dataclass
class FullCache:
    """The clean run: tokens [B, T], the embedding [B, T, d], each layer, and the final norm's scale and output."""

    tokens: torch.Tensor
    embed: torch.Tensor
    layers: list[LayerCache]
    final_scale: torch.Tensor  # [B, T, 1]
    final_normed: torch.Tensor  # [B, T, d] ln_final output before its bias
    rotary: tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) [T, dh], None for learned positions

    def clean_cache(self) -> CleanCache:
        """The same run as the :class:`~circuits.cdt.weights.CleanCache` the reference walk starts from."""
        layers = self.layers
        return CleanCache(self.tokens, self.embed, [lc.resid_pre for lc in layers], [lc.z for lc in layers],
                          [lc.resid_mid for lc in layers], [lc.mlp_out for lc in layers], layers[-1].resid_post)


def _norm(w: Weights, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [.., 1], normed before bias [.., d]) of LayerNorm / RMSNorm with the model's eps."""
    if w.rms:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + w.eps)
        return scale, x * scale * weight
    centred = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + w.eps)
    return scale, centred * scale * weight


def _with_bias(y: torch.Tensor, bias: torch.Tensor, rules, by: torch.Tensor | None = None) -> torch.Tensor:
    """``y + bias``, the bias as :func:`circuits.cdt.rules.total_bias` of ``by`` (default ``y``) gives it under ``rules``."""
    if rules is None or not rules.share_eps:
        return y + bias
    from circuits.cdt.rules import total_bias

    return y + total_bias(bias, y if by is None else by, rules)


@torch.no_grad()
def full_forward(w: Weights, tokens: torch.Tensor, rules=None) -> FullCache:
    """Run the model over ``tokens`` [B, T] in the weights' dtype and keep every node (see :class:`LayerCache`).

    ``rules`` (a :class:`circuits.cdt.rules.Rules`, optional): with ``share_eps > 0`` every bias is added as the
    published code's shares add it to a total whose relevant part is zero (:func:`circuits.cdt.rules.total_bias`), so
    that this is the run those rules decompose; LayerNorm biases by the norm's input with ``norm_bias="input"``.
    """
    tokens = tokens.to(w.W_E.device)
    T = tokens.shape[1]
    x = w.W_E[tokens]
    if w.W_pos is not None:
        x = x + w.W_pos[:T]
    embed, rot, group = x, w.rotary(T), w.n_heads // w.n_kv
    by_input = rules is not None and rules.norm_bias == "input"

    def norm_out(x, normed, bias):
        return normed if w.rms else _with_bias(normed, bias, rules, x if by_input else None)

    layers = []
    for layer in range(w.n_layers):
        s1, n1 = _norm(w, x, w.ln1_w[layer])
        h = norm_out(x, n1, w.ln1_b[layer])  # RMSNorm has no bias
        q_lin = torch.einsum("btd,hde->bthe", h, w.W_Q[layer])
        k_lin = torch.einsum("btd,hde->bthe", h, w.W_K[layer])
        v_lin = torch.einsum("btd,hde->bthe", h, w.W_V[layer])
        q = _with_bias(q_lin, w.b_Q[layer], rules)
        k = _with_bias(k_lin, w.b_K[layer], rules)
        v = _with_bias(v_lin, w.b_V[layer], rules)
        if rot is not None:
            q, k = rotate(q, *rot), rotate(k, *rot)
        pattern = attention_pattern(w, q, k)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v.repeat_interleave(group, dim=-2))
        attn_lin = torch.einsum("bthe,hed->btd", z, w.W_O[layer])
        mid = x + _with_bias(attn_lin, w.b_O[layer], rules)
        s2, n2 = _norm(w, mid, w.ln2_w[layer])
        h2 = norm_out(mid, n2, w.ln2_b[layer])
        up_lin = h2 @ w.W_in[layer]
        up = _with_bias(up_lin, w.b_in[layer], rules)
        gate_pre = h2 @ w.W_gate[layer] if w.gated else None
        gate = activation(w.act, gate_pre) if w.gated else None
        post = up * gate if w.gated else activation(w.act, up)
        out_lin = post @ w.W_out[layer]
        out = _with_bias(out_lin, w.b_out[layer], rules)
        post_resid = mid + out
        layers.append(LayerCache(x, s1, n1, q_lin, k_lin, v_lin, q, k, v, pattern, z, attn_lin, mid, s2, n2, up_lin,
                                 up, gate_pre, gate, post, out_lin, out, post_resid))
        x = post_resid
    sf, nf = _norm(w, x, w.lnf_w)
    return FullCache(tokens, embed, layers, sf, nf, rot)


def clean_forward(w: Weights, tokens: torch.Tensor) -> CleanCache:
    """Run the model over ``tokens`` [B, T] in the weights' dtype and keep the activations CD-T starts from
    (the per-layer subset of :func:`full_forward`)."""
    return full_forward(w, tokens).clean_cache()
