"""The clean run, once: every activation the frozen circuit methods read, from the model's weights in any dtype.

:func:`capture` runs the forward pass over the stacked weights (:func:`circuits.frozen.weights.model_weights`) in the
dtype asked for (float64 included, whatever dtype the model was loaded in) and keeps, per layer, the residual inputs,
the norms' scales and normalized outputs, queries, keys and values (before and after their bias and rotation), the
attention pattern, the head outputs ``z``, the attention and MLP outputs, the MLP's pre-activations, gate and
post-activations; then the final norm and the logits. Path ensembles, transcoder circuits and CD-T build on it; its
values equal the bridge's hooks up to rounding (``tests/test_frozen.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuits.frozen.weights import Weights, activation, attention_pattern, model_weights, rotate

__all__ = ["AddBias", "CleanRun", "LayerRun", "capture", "forward"]

# add_bias(y, bias, norm_input) -> y + bias; norm_input is the norm's input when the bias is a norm's, else None
AddBias = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class LayerRun:
    """One block of the clean run over [B, T] (shapes: d = d_model, H / KV heads, dh, m = d_mlp).

    Hook names of the bridge in brackets. The MLP fields are None in attention-only models, the gate fields in
    ungated ones.
    """

    resid_pre: torch.Tensor  # [B, T, d] (hook_resid_pre)
    scale1: torch.Tensor  # [B, T, 1] ln1's 1 / sqrt(var + eps) (RMS: 1 / rms) = 1 / ln1.hook_scale
    normed1: torch.Tensor  # [B, T, d] ln1 output before its bias (ln1.hook_normalized)
    q_lin: torch.Tensor  # [B, T, H, dh] h @ W_Q (before bias and rotation)
    k_lin: torch.Tensor  # [B, T, KV, dh]
    v_lin: torch.Tensor  # [B, T, KV, dh]
    q: torch.Tensor  # [B, T, H, dh] with bias, rotated
    k: torch.Tensor  # [B, T, KV, dh] with bias, rotated
    v: torch.Tensor  # [B, T, KV, dh] with bias (attn.hook_v)
    pattern: torch.Tensor  # [B, H, T, T] (attn.hook_pattern)
    z: torch.Tensor  # [B, T, H, dh] (attn.hook_z)
    attn_lin: torch.Tensor  # [B, T, d] z @ W_O summed over heads, before b_O
    resid_mid: torch.Tensor  # [B, T, d] (hook_resid_mid)
    scale2: torch.Tensor | None  # [B, T, 1] = 1 / ln2.hook_scale
    normed2: torch.Tensor | None  # [B, T, d] ln2 output before its bias (ln2.hook_normalized)
    up_lin: torch.Tensor | None  # [B, T, m] h @ W_in before b_in
    up: torch.Tensor | None  # [B, T, m] (mlp.hook_pre; gated: mlp.hook_pre_linear)
    gate_pre: torch.Tensor | None  # [B, T, m] h @ W_gate (gated MLPs; mlp.hook_pre)
    gate: torch.Tensor | None  # [B, T, m] act(gate_pre)
    post: torch.Tensor | None  # [B, T, m] (mlp.hook_post)
    out_lin: torch.Tensor | None  # [B, T, d] post @ W_out before b_out
    mlp_out: torch.Tensor | None  # [B, T, d] (hook_mlp_out)
    resid_post: torch.Tensor  # [B, T, d] (hook_resid_post)
    attn_out: torch.Tensor | None = None  # [B, T, d] (hook_attn_out)


@dataclass
class CleanRun:
    """The clean run: tokens [B, T], the embedding [B, T, d], each layer, the final norm's scale (1 / hook_scale)
    [B, T, 1] and output before its bias [B, T, d], the rotary (cos, sin) [T, dh] (None for learned positions) and
    the logits [B, T, V] (None when not asked for)."""

    tokens: torch.Tensor
    embed: torch.Tensor
    layers: list[LayerRun]
    final_scale: torch.Tensor
    final_normed: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor] | None
    logits: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def stack(self, name: str) -> torch.Tensor:
        """One field of every layer stacked: [L, ...]."""
        return torch.stack([getattr(lc, name) for lc in self.layers])


def _norm(w: Weights, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [.., 1], normed before bias [.., d]) of LayerNorm / RMSNorm with the model's eps."""
    if w.rms:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + w.eps)
        return scale, x * scale * weight
    centred = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + w.eps)
    return scale, centred * scale * weight


def _plain(y: torch.Tensor, bias: torch.Tensor, norm_input: torch.Tensor | None = None) -> torch.Tensor:
    return y + bias


@torch.no_grad()
def forward(w: Weights, tokens: torch.Tensor, add_bias: AddBias | None = None, *, logits: bool = False) -> CleanRun:
    """Run the model over ``tokens`` [B, T] in the weights' dtype and keep every node (see :class:`LayerRun`).

    ``add_bias(y, bias, norm_input)`` adds each bias (default ``y + bias``); a decomposition that shares biases by
    its own rule passes its rule here so that the run is the one it decomposes. RMSNorm has no bias. ``logits``: also
    compute the logits (``CleanRun.logits``, with plain biases).
    """
    add = add_bias or _plain
    tokens = tokens.to(w.W_E.device)
    T = tokens.shape[1]
    x = w.W_E[tokens]
    if w.W_pos is not None:
        x = x + w.W_pos[:T]
    embed, rot, group = x, w.rotary(T), w.n_heads // w.n_kv

    def norm_out(x, normed, bias):
        return normed if w.rms else add(normed, bias, x)

    layers = []
    for layer in range(w.n_layers):
        s1, n1 = _norm(w, x, w.ln1_w[layer])
        h = norm_out(x, n1, w.ln1_b[layer])
        q_lin = torch.einsum("btd,hde->bthe", h, w.W_Q[layer])
        k_lin = torch.einsum("btd,hde->bthe", h, w.W_K[layer])
        v_lin = torch.einsum("btd,hde->bthe", h, w.W_V[layer])
        q = add(q_lin, w.b_Q[layer], None)
        k = add(k_lin, w.b_K[layer], None)
        v = add(v_lin, w.b_V[layer], None)
        if rot is not None:
            q, k = rotate(q, *rot), rotate(k, *rot)
        pattern = attention_pattern(w, q, k)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v.repeat_interleave(group, dim=-2))
        attn_lin = torch.einsum("bthe,hed->btd", z, w.W_O[layer])
        attn_out = add(attn_lin, w.b_O[layer], None)
        mid = x + attn_out
        if not w.has_mlp:
            layers.append(LayerRun(x, s1, n1, q_lin, k_lin, v_lin, q, k, v, pattern, z, attn_lin, mid, None, None,
                                   None, None, None, None, None, None, None, mid, attn_out))
            x = mid
            continue
        s2, n2 = _norm(w, mid, w.ln2_w[layer])
        h2 = norm_out(mid, n2, w.ln2_b[layer])
        up_lin = h2 @ w.W_in[layer]
        up = add(up_lin, w.b_in[layer], None)
        gate_pre = h2 @ w.W_gate[layer] if w.gated else None
        gate = activation(w.act, gate_pre) if w.gated else None
        post = up * gate if w.gated else activation(w.act, up)
        out_lin = post @ w.W_out[layer]
        out = add(out_lin, w.b_out[layer], None)
        post_resid = mid + out
        layers.append(LayerRun(x, s1, n1, q_lin, k_lin, v_lin, q, k, v, pattern, z, attn_lin, mid, s2, n2, up_lin,
                               up, gate_pre, gate, post, out_lin, out, post_resid, attn_out))
        x = post_resid
    sf, nf = _norm(w, x, w.lnf_w)
    out_logits = None
    if logits:
        final = nf if w.rms else nf + w.lnf_b
        out_logits = final @ w.W_U + w.b_U
    return CleanRun(tokens, embed, layers, sf, nf, rot, out_logits)


def capture(model, tokens: torch.Tensor, dtype: torch.dtype | None = None, *, method: str = "the frozen forward"
            ) -> CleanRun:
    """The clean run of ``model`` (a ``TransformerBridge``) over ``tokens`` [B, T] (or [T]), computed from its weights
    in ``dtype`` (default: the model's own), logits included. ``method`` names the caller in the error raised for an
    architecture the frozen forward does not cover."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    return forward(model_weights(model, dtype, method=method), tokens.long(), logits=True)
