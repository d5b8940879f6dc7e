"""A vision transformer's clean run frozen into the affine sublayers of :mod:`circuits.paths.frozen`.

The path-ensemble dynamic programme (:func:`circuits.paths.decompose.decompose`) reads a
:class:`~circuits.paths.frozen.FrozenRun`; this module builds one from a ViT (a ``TransformerBridge`` over a Hugging
Face ``ViTForImageClassification``, :mod:`workbench.zoo_vit`), so the ViT needs no second DP. The clean run is
recomputed from the weights in float64 (bidirectional attention, no causal mask), then frozen exactly as for a
language model: LayerNorm scales, attention patterns and the MLP's per-neuron ratio ``act(z) / z`` of the clean
pre-activation. What differs from a language model:

- the length-0 term is the embedding: the class token (position 0) and the patch embeddings (a linear map of each
  patch plus its bias), plus the learned positions;
- the readout is the classifier on the final LayerNorm, applied at every position (``W_U`` = classifier weight
  [d, 10]); the model's logits are the class token's (position 0);
- ``FrozenRun.tokens`` holds position indices [batch, pos] (there are no tokens; no next-token loss applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from circuits.paths.frozen import FrozenRun, Norm, Sublayer

__all__ = ["VisionInputError", "VitWeights", "as_images", "check_vision", "freeze_vit", "vit_weights"]

ACTS = {"relu": F.relu, "gelu": lambda z: F.gelu(z), "gelu_new": lambda z: F.gelu(z, approximate="tanh")}


class VisionInputError(ValueError):
    """Input the vision analyses cannot take: a language model, images of the wrong shape, a bad path length."""


@dataclass
class VitWeights:
    """A ViT's weights as stacked tensors (L layers, H heads, d = d_model, dh, m = d_mlp, C classes, p = patch)."""

    patch_w: torch.Tensor  # [d, channels, p, p]
    patch_b: torch.Tensor  # [d]
    cls: torch.Tensor  # [d]
    pos: torch.Tensor  # [T, d] (T = 1 + patches)
    W_Q: torch.Tensor  # [L, H, d, dh]
    b_Q: torch.Tensor  # [L, H, dh]
    W_K: torch.Tensor
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [L, H, dh, d]
    b_O: torch.Tensor  # [L, d]
    ln1_w: torch.Tensor  # [L, d]
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    W_in: torch.Tensor  # [L, d, m]
    b_in: torch.Tensor  # [L, m]
    W_out: torch.Tensor  # [L, m, d]
    b_out: torch.Tensor  # [L, d]
    lnf_w: torch.Tensor  # [d]
    lnf_b: torch.Tensor
    W_U: torch.Tensor  # [d, C]
    b_U: torch.Tensor  # [C]
    eps: float
    act: str
    image_size: int
    channels: int

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])


def check_vision(model: Any) -> Any:
    """The Hugging Face ViT inside ``model`` (a bridge from :func:`workbench.models.load_model`), or
    :class:`VisionInputError` naming the model when it is no image classifier."""
    hf = getattr(model, "original_model", None)
    config = getattr(hf, "config", None)
    if getattr(config, "model_type", None) != "vit" or not hasattr(hf, "classifier"):
        spec = getattr(model, "workbench_spec", None) or type(model).__name__
        raise VisionInputError(f"the vision analysis needs a vision transformer image classifier (toy/vit-..., see "
                               f"`workbench zoo list`); {spec} is not one (a language model?)")
    return hf


def vit_weights(model: Any, dtype: torch.dtype = torch.float64) -> VitWeights:
    """The weights of ``model`` (a ViT bridge) in ``dtype``, on its device."""
    hf = check_vision(model)
    cfg = hf.config
    # the bridge wraps each Hugging Face module (``._original_component``); the plain names are the checkpoint's
    sd = {k.replace("_original_component.", ""): v.detach().to(dtype) for k, v in hf.state_dict().items()}
    L, H = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    d = int(cfg.hidden_size)
    dh = d // H
    pre = "vit.layers.{}."

    def stack(name: str) -> torch.Tensor:
        return torch.stack([sd[pre.format(i) + name] for i in range(L)])

    def heads_in(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # Linear [H*dh, d] -> [L, H, d, dh]; bias [L, H, dh]
        w = stack(f"attention.{name}.weight").reshape(L, H, dh, d).transpose(-1, -2)
        return w, stack(f"attention.{name}.bias").reshape(L, H, dh)

    W_Q, b_Q = heads_in("q_proj")
    W_K, b_K = heads_in("k_proj")
    W_V, b_V = heads_in("v_proj")
    W_O = stack("attention.o_proj.weight").reshape(L, d, H, dh).permute(0, 2, 3, 1)  # [L, H, dh, d]
    act = str(cfg.hidden_act)
    if act not in ACTS:
        raise VisionInputError(f"unknown MLP activation {act!r}; known: {', '.join(ACTS)}")
    return VitWeights(
        patch_w=sd["vit.embeddings.patch_embeddings.projection.weight"],
        patch_b=sd["vit.embeddings.patch_embeddings.projection.bias"], cls=sd["vit.embeddings.cls_token"][0, 0],
        pos=sd["vit.embeddings.position_embeddings"][0], W_Q=W_Q, b_Q=b_Q, W_K=W_K, b_K=b_K, W_V=W_V, b_V=b_V,
        W_O=W_O, b_O=stack("attention.o_proj.bias"), ln1_w=stack("layernorm_before.weight"),
        ln1_b=stack("layernorm_before.bias"), ln2_w=stack("layernorm_after.weight"),
        ln2_b=stack("layernorm_after.bias"), W_in=stack("mlp.fc1.weight").transpose(-1, -2), b_in=stack("mlp.fc1.bias"),
        W_out=stack("mlp.fc2.weight").transpose(-1, -2), b_out=stack("mlp.fc2.bias"), lnf_w=sd["vit.layernorm.weight"],
        lnf_b=sd["vit.layernorm.bias"], W_U=sd["classifier.weight"].T.contiguous(), b_U=sd["classifier.bias"],
        eps=float(cfg.layer_norm_eps), act=act, image_size=int(cfg.image_size), channels=int(cfg.num_channels))


def as_images(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``images`` checked against the model: a float tensor [batch, channels, size, size] (one image [C, S, S] or
    [S, S] gets its batch and channel axes), else :class:`VisionInputError` naming the shape expected."""
    cfg = check_vision(model).config
    size, channels = int(cfg.image_size), int(cfg.num_channels)
    if not isinstance(images, torch.Tensor):
        raise VisionInputError(f"images must be a float tensor [batch, {channels}, {size}, {size}], got {type(images).__name__}")
    x = images
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, size, size) or x.shape[0] == 0:
        raise VisionInputError(f"images must be [batch, {channels}, {size}, {size}] with batch >= 1, got shape "
                               f"{tuple(images.shape)}")
    if not x.is_floating_point() or not torch.isfinite(x).all():
        raise VisionInputError("images must hold finite floating-point pixel values")
    return x


def _layernorm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(std [.., 1], centred / std [.., d]) of LayerNorm before its weight and bias."""
    centred = x - x.mean(-1, keepdim=True)
    std = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    return std, centred / std


def embed(w: VitWeights, images: torch.Tensor) -> torch.Tensor:
    """The embedding (class token, patches, positions) of images [B, C, S, S] -> [B, T, d]."""
    p = w.patch_w.shape[-1]
    patches = F.conv2d(images.to(w.patch_w), w.patch_w, w.patch_b, stride=p).flatten(2).transpose(1, 2)  # [B, N, d]
    cls = w.cls.expand(patches.shape[0], 1, -1)
    return torch.cat([cls, patches], dim=1) + w.pos


def freeze_vit(model: Any, images: torch.Tensor, dtype: torch.dtype = torch.float64) -> FrozenRun:
    """Run the ViT once over ``images`` [B, C, S, S] in ``dtype`` and freeze it into affine sublayers (module
    docstring). ``clean_logits`` [B, T, C] is the classifier at every position; ``[:, 0]`` are the model's logits."""
    w = vit_weights(model, dtype)
    images = as_images(model, images).to(w.W_Q.device)
    x = embed(w, images)
    B, T, _ = x.shape
    emb = x
    sublayers, outputs = [], []
    with torch.no_grad():
        for layer in range(w.n_layers):
            std1, n1 = _layernorm(x, w.eps)
            h = n1 * w.ln1_w[layer] + w.ln1_b[layer]
            q = torch.einsum("btd,hde->bhte", h, w.W_Q[layer]) + w.b_Q[layer][None, :, None]
            k = torch.einsum("btd,hde->bhte", h, w.W_K[layer]) + w.b_K[layer][None, :, None]
            pattern = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # [B, H, T, T]
            attn = Sublayer("attn", layer, Norm(std1, w.ln1_w[layer], w.ln1_b[layer], True),
                            {"pattern": pattern, "W_V": w.W_V[layer], "W_O": w.W_O[layer]})
            v0 = w.b_V[layer] + torch.einsum("d,hde->he", w.ln1_b[layer], w.W_V[layer])  # [H, dh]
            attn.bias = torch.einsum("bhq,he,hed->bqd", pattern.sum(-1), v0, w.W_O[layer]) + w.b_O[layer]
            out = attn.apply(x) + attn.bias
            sublayers.append(attn)
            outputs.append(out)
            x = x + out
            std2, n2 = _layernorm(x, w.eps)
            pre = (n2 * w.ln2_w[layer] + w.ln2_b[layer]) @ w.W_in[layer] + w.b_in[layer]
            post = ACTS[w.act](pre)
            nonzero = pre != 0
            gate = torch.where(nonzero, post / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
            mlp = Sublayer("mlp", layer, Norm(std2, w.ln2_w[layer], w.ln2_b[layer], True),
                           {"gate": gate, "W_in": w.W_in[layer], "W_out": w.W_out[layer]})
            mlp.bias = ((w.ln2_b[layer] @ w.W_in[layer] + w.b_in[layer]) * gate) @ w.W_out[layer] + w.b_out[layer]
            out = post @ w.W_out[layer] + w.b_out[layer]
            sublayers.append(mlp)
            outputs.append(out)
            x = x + out
        stdf, nf = _layernorm(x, w.eps)
        logits = (nf * w.lnf_w + w.lnf_b) @ w.W_U + w.b_U  # [B, T, C]
    final = Norm(stdf, w.lnf_w, w.lnf_b, True)
    positions = torch.arange(T).expand(B, T).clone()
    return FrozenRun(positions, emb, sublayers, final, w.W_U, w.b_U + w.lnf_b @ w.W_U, logits, outputs, w.n_layers)
