"""Cross-layer transcoders (CLT; Anthropic's "Circuit Tracing", 2025; METHODS.md section 6).

Layer l's features read layer l's MLP input ``x_l`` (``blocks.l.ln2.hook_normalized``) and write to the MLP outputs
(``blocks.m.hook_mlp_out``) of layer l and of every later layer m >= l::

    pre_l  = x_l @ W_enc[l] + b_enc[l]                              [..., d_sae]
    a_l    = act(pre_l)                                             [..., d_sae]
    y_m    = sum_{l <= m} a_l @ W_dec[l][:, m - l] + b_dec[m]        [..., d_model]

Shapes (L layers, d = d_model, n = d_sae features per layer)::

    W_enc [L, d, n]   b_enc [L, n]   W_dec[l] [n, L - l, d] (a ParameterList, target layers l..L-1)   b_dec [L, d]
    log_threshold [L, n] (JumpReLU only; threshold = exp(log_threshold))

Stacked activations are [..., L, d] (layer axis second to last); codes are [..., L, n].

``act``: ReLU; TopK (the ``k`` largest pre-activations of each layer, then ReLU); JumpReLU ``pre * (pre > theta)``
whose threshold gets the straight-through pseudo-gradient of the JumpReLU SAE paper (Rajamanoharan et al. 2024, as
SAELens and circuit-tracer write it): d/d theta = -(theta / eps) * K((pre - theta) / eps) with K the rectangle
kernel 1{|u| < 1/2} and eps the ``bandwidth``; the pre-activation's gradient is the mask (no estimator).

A per-layer transcoder set (PLT) is the CLT whose cross-layer decoders are zero (:meth:`from_transcoders`).
This project's convention is ``x @ W_enc`` ([d, n]); circuit-tracer stores W_enc_l as [n, d]
(:mod:`circuits.dictionaries.clt_io` transposes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from circuits.dictionaries.model import DictionaryConfigError

__all__ = ["CLT_ACTIVATIONS", "CrossLayerTranscoder", "jumprelu"]

CLT_ACTIVATIONS = ("relu", "topk", "jumprelu")
#: the hook suffixes a CLT reads and writes at every layer (``blocks.{l}.<suffix>``)
HOOK_IN, HOOK_OUT = "ln2.hook_normalized", "hook_mlp_out"


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K(u) = 1 where -1/2 < u < 1/2, else 0 (same dtype as ``u``)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # noqa: ANN001, ANN205
        mask = pre > threshold
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * mask

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = grad * (pre > threshold) if ctx.needs_input_grad[0] else None
        g_th = None
        if ctx.needs_input_grad[1]:
            g_th = (-(threshold / eps) * rectangle((pre - threshold) / eps) * grad).sum_to_size(threshold.shape)
        return g_pre, g_th, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU ``pre * (pre > threshold)`` (threshold broadcast against pre) with the straight-through threshold
    gradient ``-(threshold / bandwidth) * K((pre - threshold) / bandwidth)`` summed over the broadcast dims."""
    return _JumpReLU.apply(pre, threshold, float(bandwidth))


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder over every layer of a model (see the module docstring for the formulas and shapes).

    Attributes: ``n_layers``, ``d_model``, ``d_sae`` (features per layer), ``activation``, ``k`` (TopK, per layer),
    ``bandwidth`` (JumpReLU), ``model_name`` (the model it was made for, if known).
    """

    def __init__(self, n_layers: int, d_model: int, d_sae: int, *, activation: str = "relu", k: int | None = None,
                 bandwidth: float = 0.05) -> None:
        super().__init__()
        if activation not in CLT_ACTIVATIONS:
            raise DictionaryConfigError(f"unknown activation {activation!r}; accepted: {', '.join(CLT_ACTIVATIONS)}")
        if min(n_layers, d_model, d_sae) < 1:
            raise DictionaryConfigError(f"n_layers, d_model and d_sae must be positive, got {n_layers}, {d_model}, "
                                        f"{d_sae}")
        if activation == "topk":
            if k is None or not 1 <= int(k) <= d_sae:
                raise DictionaryConfigError(f"TopK needs 1 <= k <= d_sae ({d_sae}), got k={k}")
            k = int(k)
        else:
            k = None
        if not bandwidth > 0:
            raise DictionaryConfigError(f"the JumpReLU bandwidth must be positive, got {bandwidth}")
        self.n_layers, self.d_model, self.d_sae = int(n_layers), int(d_model), int(d_sae)
        self.activation, self.k, self.bandwidth = activation, k, float(bandwidth)
        self.model_name: str | None = None
        L, d, n = self.n_layers, self.d_model, self.d_sae
        self.W_enc = nn.Parameter(torch.zeros(L, d, n))
        self.b_enc = nn.Parameter(torch.zeros(L, n))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(n, L - layer, d)) for layer in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        self.log_threshold = nn.Parameter(torch.zeros(L, n)) if activation == "jumprelu" else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, n_layers: int, d_model: int, d_sae: int, *, seed: int = 0, **options: Any) -> CrossLayerTranscoder:
        """A random CLT: each feature's own-layer decoder a random unit vector, its later-layer decoders
        random vectors of norm 0.1, its encoder the transpose of its own-layer decoder, zero biases (thresholds 1
        for JumpReLU). ``options``: the constructor's keywords."""
        clt = cls(n_layers, d_model, d_sae, **options)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer, W in enumerate(clt.W_dec):
                w = torch.randn(W.shape, generator=gen)
                w = w / w.norm(dim=-1, keepdim=True)
                w[:, 1:] *= 0.1
                W.copy_(w)
                clt.W_enc[layer].copy_(w[:, 0].t())
        return clt

    @classmethod
    def from_transcoders(cls, transcoders: Mapping[int, Any]) -> CrossLayerTranscoder:
        """The CLT equal to a per-layer transcoder set (``{layer: Dictionary}``, one ``transcoder`` per layer
        0..L-1 on ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``, same width and activation):
        own-layer decoders copied, cross-layer decoders zero."""
        layers = sorted(transcoders)
        if layers != list(range(len(layers))) or not layers:
            raise DictionaryConfigError(f"a transcoder set needs one transcoder for each layer 0..L-1, got {layers}")
        first = transcoders[0]
        for layer in layers:
            tc = transcoders[layer]
            if tc.kind != "transcoder" or tc.hook_in != f"blocks.{layer}.{HOOK_IN}" or \
                    tc.hook_out != f"blocks.{layer}.{HOOK_OUT}":
                raise DictionaryConfigError(f"layer {layer}: a {tc.kind} on {tc.hook_in} -> {tc.hook_out}; accepted: a "
                                            f"transcoder on blocks.{layer}.{HOOK_IN} -> blocks.{layer}.{HOOK_OUT}")
            if (tc.d_in, tc.d_sae, tc.d_out, tc.activation, tc.k) != (first.d_in, first.d_sae, first.d_out,
                                                                     first.activation, first.k):
                raise DictionaryConfigError(f"layer {layer}: width or activation differs from layer 0's")
        clt = cls(len(layers), first.d_in, first.d_sae, activation=first.activation, k=first.k)
        clt = clt.to(device=first.W_enc.device, dtype=first.W_enc.dtype)
        with torch.no_grad():
            for layer in layers:
                tc = transcoders[layer]
                clt.W_enc[layer].copy_(tc.W_enc)
                clt.b_enc[layer].copy_(tc.b_enc)
                clt.W_dec[layer][:, 0].copy_(tc.W_dec)
                clt.b_dec[layer].copy_(tc.b_dec)
        clt.model_name = getattr(first, "model_name", None)
        return clt

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON values)."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "d_sae": self.d_sae,
                "activation": self.activation, "k": self.k, "bandwidth": self.bandwidth}

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return f"{self.n_layers} layers, {self.d_model} -> {self.d_sae} per layer, {self.activation}{k}"

    def hook_in(self, layer: int) -> str:
        return f"blocks.{layer}.{HOOK_IN}"

    def hook_out(self, layer: int) -> str:
        return f"blocks.{layer}.{HOOK_OUT}"

    def hooks(self) -> list[str]:
        """Every hook the CLT reads or writes: the MLP inputs, then the MLP outputs."""
        return [self.hook_in(i) for i in range(self.n_layers)] + [self.hook_out(i) for i in range(self.n_layers)]

    # ------------------------------------------------------------------ encode / decode
    @property
    def threshold(self) -> torch.Tensor | None:
        """JumpReLU thresholds [L, n] (None for other activations)."""
        return None if self.log_threshold is None else self.log_threshold.exp()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., L, d] (every layer's MLP input) -> pre-activations [..., L, n]."""
        if x.shape[-2:] != (self.n_layers, self.d_model):
            raise ValueError(f"input shape {tuple(x.shape)}: expected [..., {self.n_layers}, {self.d_model}] (layers, "
                             "d_model)")
        return torch.einsum("...ld,ldn->...ln", x, self.W_enc) + self.b_enc

    def activate(self, pre: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The activation applied to pre-activations [..., L, n] (or [..., n] of one ``layer``)."""
        if self.activation == "relu":
            return F.relu(pre)
        if self.activation == "topk":
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
        th = self.threshold if layer is None else self.threshold[layer]
        return jumprelu(pre, th, self.bandwidth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., L, d] -> codes [..., L, n] (zeros where inactive)."""
        return self.activate(self.pre_activation(x))

    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """One layer's MLP input x [..., d] -> that layer's codes [..., n]."""
        return self.activate(x @ self.W_enc[layer] + self.b_enc[layer], layer)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """codes [..., L, n] -> every MLP output [..., L, d] (one product per source layer over all its targets)."""
        L, d = self.n_layers, self.d_model
        parts: list[list[torch.Tensor]] = [[] for _ in range(L)]
        for layer, W in enumerate(self.W_dec):
            c = (acts[..., layer, :] @ W.reshape(self.d_sae, -1)).unflatten(-1, (L - layer, d))
            for j in range(L - layer):
                parts[layer + j].append(c[..., j, :])
        return torch.stack([torch.stack(p).sum(0) + self.b_dec[m] for m, p in enumerate(parts)], -2)

    def decode_layer(self, acts: list[torch.Tensor], target: int) -> torch.Tensor:
        """MLP output ``target`` [..., d] from the codes of layers 0..target (a list of [..., n])."""
        out = self.b_dec[target]
        for layer in range(target + 1):
            out = out + acts[layer] @ self.W_dec[layer][:, target - layer]
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., L, d] -> (every MLP output [..., L, d], codes [..., L, n])."""
        acts = self.encode(x)
        return self.decode(acts), acts

    # ------------------------------------------------------------------ decoder norms
    def decoder_norms(self) -> torch.Tensor:
        """||W_dec[l -> m][i]|| as [L (source), L (target), n] (zero where m < l)."""
        out = torch.zeros(self.n_layers, self.n_layers, self.d_sae, dtype=self.b_dec.dtype, device=self.b_dec.device)
        for layer, W in enumerate(self.W_dec):
            out[layer, layer:] = W.norm(dim=-1).t()
        return out

    def summed_decoder_norms(self) -> torch.Tensor:
        """Each feature's decoder norm summed over its target layers, [L, n] (the sparsity penalty's weights)."""
        return torch.stack([W.norm(dim=-1).sum(-1) for W in self.W_dec])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
