"""The forward pass an intervention reruns: the frozen linearised replacement model, or the real model with the
transcoders spliced in.

Both start from one prompt's :class:`~circuits.attribution.replacement.ReplacementModel` (its clean run, feature sets,
error nodes) and go layer by layer; ``edit(layer, a)`` may change a feature set's activations ``a`` [T, n] before they
are decoded (the intervention).

- ``replacement``: attention patterns, norm scales and error nodes frozen from the clean run; every feature is
  linear on the clean run's active set (an active feature moves one for one with its pre-activation, an inactive one
  stays off), so the map from an intervention to every later value is the one the attribution graph's edges describe.
- ``spliced``: the model's own forward pass (live attention patterns and norm scales; ``freeze_attention`` keeps the
  clean patterns, as circuit-tracer's option does), with each MLP that a feature set writes to replaced by the
  features' output (activation function applied to the live pre-activations) plus the clean run's error, held fixed;
  an MLP no feature set writes to runs as it is.

``propagate=False`` (both modes) holds every MLP output at its clean value plus the decoded change of the edited
activations: the intervention's direct effects only (circuit-tracer's ``constrained_layers`` over every layer).

Shapes: T positions, d = d_model, n features of a set, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuits.attribution.replacement import ReplacementModel
from circuits.frozen.weights import activation, attention_pattern, normalize, rotate

__all__ = ["MODES", "Rerun", "rerun"]

MODES = ("replacement", "spliced")
Edit = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class Rerun:
    """One rerun: MLP inputs [L, T, d] (norm bias included), the final norm's output [T, d], logits [T, V], and
    each feature set's activations by layer [T, n]."""

    mlp_in: torch.Tensor
    final: torch.Tensor
    logits: torch.Tensor
    acts: dict[int, torch.Tensor]

    def read(self, layer: int, position: int, n_layers: int) -> torch.Tensor:
        """The residual read at (layer, position) [d]: layer ``n_layers`` is the final norm's output."""
        return self.final[position] if layer == n_layers else self.mlp_in[layer, position]


def _frozen_norm(rm: ReplacementModel, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    if not rm.w.rms:
        return (x - x.mean(-1, keepdim=True)) * scale * weight + bias
    return x * scale * weight


def _mlp(rm: ReplacementModel, layer: int, h: torch.Tensor) -> torch.Tensor:
    """The model's own MLP on its (normed) input h [T, d]."""
    w = rm.w
    up = h @ w.W_in[layer] + w.b_in[layer]
    post = up * activation(w.act, h @ w.W_gate[layer]) if w.gated else activation(w.act, up)
    return post @ w.W_out[layer] + w.b_out[layer]


def _attention(rm: ReplacementModel, layer: int, h: torch.Tensor, frozen: bool) -> torch.Tensor:
    """The attention output [T, d] from the normed input h [T, d], with the clean pattern or a live one."""
    w, lc = rm.w, rm.clean.layers[layer]
    group = w.n_heads // w.n_kv
    v = torch.einsum("td,hde->the", h, w.W_V[layer]) + w.b_V[layer]
    if frozen:
        pattern = lc.pattern[0]
    else:
        q = torch.einsum("td,hde->the", h, w.W_Q[layer]) + w.b_Q[layer]
        k = torch.einsum("td,hde->the", h, w.W_K[layer]) + w.b_K[layer]
        if rm.clean.rotary is not None:
            q, k = rotate(q, *rm.clean.rotary), rotate(k, *rm.clean.rotary)
        pattern = attention_pattern(w, q, k)
    z = torch.einsum("hqk,khe->qhe", pattern, v.repeat_interleave(group, dim=-2))
    return torch.einsum("the,hed->td", z, w.W_O[layer]) + w.b_O[layer]


@torch.no_grad()
def rerun(rm: ReplacementModel, edit: Edit | None = None, *, mode: str = "replacement",
          freeze_attention: bool = False, propagate: bool = True) -> Rerun:
    """Run ``rm``'s prompt again with ``edit`` applied to the feature activations (see the module docstring).
    With no edit both modes reproduce the clean logits (up to rounding)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    w, T = rm.w, rm.n_pos
    frozen = mode == "replacement"
    x = rm.embed + (w.W_pos[:T] if w.W_pos is not None else 0)
    written = {m for s in rm.sets.values() for m in s.decoders}
    decoded = torch.zeros(rm.n_layers, T, x.shape[-1], dtype=x.dtype, device=x.device)
    clean_out = rm.clean.stack("mlp_out")[:, 0]
    mlp_in, acts = [], {}
    for layer, lc in enumerate(rm.clean.layers):
        if frozen:
            h = _frozen_norm(rm, x, lc.scale1[0], w.ln1_w[layer], w.ln1_b[layer])
        else:
            h = normalize(w, x, w.ln1_w[layer], w.ln1_b[layer])
        mid = x + _attention(rm, layer, h, frozen or freeze_attention)
        if frozen:
            h2 = _frozen_norm(rm, mid, lc.scale2[0], w.ln2_w[layer], w.ln2_b[layer])
        else:
            h2 = normalize(w, mid, w.ln2_w[layer], w.ln2_b[layer])
        mlp_in.append(h2)
        s = rm.sets.get(layer)
        if s is not None:
            clean = s.encode(rm.pre[layer])
            if not propagate:
                a = clean
            elif frozen:
                a = clean + (clean != 0) * (h2 @ s.W_enc + s.b_enc - rm.pre[layer])
            else:
                a = s.encode(h2 @ s.W_enc + s.b_enc)
            if edit is not None:
                a = edit(layer, a)
            acts[layer] = a
            for m, W in s.decoders.items():
                decoded[m] += (a - clean if not propagate else a) @ W
        if not propagate:
            out = clean_out[layer] + decoded[layer]
        elif layer in written or frozen:
            out = decoded[layer] + rm.errors[layer]
            for src in rm.sets.values():
                if layer in src.b_dec:
                    out = out + src.b_dec[layer]
            if s is not None and s.W_skip is not None:
                out = out + h2 @ s.W_skip
        else:
            out = _mlp(rm, layer, h2)
        x = mid + out
    if frozen:
        final = _frozen_norm(rm, x, rm.clean.final_scale[0], w.lnf_w, w.lnf_b)
    else:
        final = normalize(w, x, w.lnf_w, w.lnf_b)
    return Rerun(torch.stack(mlp_in), final, final @ w.W_U + w.b_U, acts)
