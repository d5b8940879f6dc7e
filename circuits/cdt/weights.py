"""The model's weights CD-T decomposes (:mod:`circuits.frozen.weights`) and the clean activations it starts from.

The stacked weights, the norm, rotary, activation and attention-pattern pieces live in :mod:`circuits.frozen.weights`,
shared with the other frozen circuit methods; this module keeps CD-T's view of the clean run (:class:`CleanCache`).
:func:`circuits.cdt.clean.clean_forward` reproduces the bridge's activations (checked by the tests against its hooks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.frozen.facts import ModelFacts, UnsupportedModelError
from circuits.frozen.weights import Weights, activation, attention_pattern, normalize, rotate
from circuits.frozen.weights import model_weights as _model_weights

__all__ = ["CleanCache", "Weights", "activation", "attention_pattern", "model_weights", "normalize", "rotate"]


def model_weights(model, dtype: torch.dtype | None = None) -> Weights:
    """The :class:`Weights` of a ``TransformerBridge`` in ``dtype`` (default: the model's), cached per model and dtype.

    Raises ValueError for an architecture this decomposition does not cover (parallel attention/MLP, mixture of experts,
    soft-capped logits, scaled rotary embeddings, attention-only blocks).
    """
    if not ModelFacts.of(model).has_mlp:
        raise UnsupportedModelError("CD-T does not cover attention-only models (every block needs an MLP)")
    return _model_weights(model, dtype, method="CD-T")


@dataclass
class CleanCache:
    """Activations of a clean run over tokens [B, T]: each list holds one tensor per layer."""

    tokens: torch.Tensor  # [B, T]
    embed: torch.Tensor  # [B, T, d] token + position embedding (= resid_pre[0])
    resid_pre: list[torch.Tensor]  # [B, T, d]
    z: list[torch.Tensor]  # [B, T, H, dh] per-head attention outputs before W_O
    resid_mid: list[torch.Tensor]  # [B, T, d]
    mlp_out: list[torch.Tensor]  # [B, T, d]
    final: torch.Tensor  # [B, T, d] the residual stream after the last block (before ln_final)

    def logits(self, w: Weights) -> torch.Tensor:
        """[B, T, V] logits of the clean run."""
        return normalize(w, self.final, w.lnf_w, w.lnf_b) @ w.W_U + w.b_U
