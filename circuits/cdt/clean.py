"""The clean run kept node by node: every value the beta-only walk (:mod:`circuits.cdt.walk`) reads.

The decomposition keeps ``beta + gamma`` equal to the clean activation at every node, so ``gamma = clean - beta``
everywhere: a walk that knows the clean value of each node only has to carry ``beta``. The clean forward is the
shared one of :mod:`circuits.frozen.clean` (per layer the norms' scales, the pre-bias outputs of every linear map -
the bias rule shares a bias by ``|W beta|`` against ``|W gamma| = |W clean - W beta|`` - the rotated queries and keys,
the attention pattern and the MLP's pre- and post-activations), run with CD-T's bias rules where they apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.cdt.rules import total_bias
from circuits.cdt.weights import CleanCache, Weights
from circuits.frozen.clean import CleanRun, LayerRun, forward

__all__ = ["FullCache", "LayerCache", "clean_forward", "full_forward"]

LayerCache = LayerRun  # one block of the clean run (see circuits.frozen.clean.LayerRun)


@dataclass
class FullCache(CleanRun):
    """The clean run: tokens [B, T], the embedding [B, T, d], each layer, and the final norm's scale and output."""

    def clean_cache(self) -> CleanCache:
        """The same run as the :class:`~circuits.cdt.weights.CleanCache` the reference walk starts from."""
        layers = self.layers
        return CleanCache(self.tokens, self.embed, [lc.resid_pre for lc in layers], [lc.z for lc in layers],
                          [lc.resid_mid for lc in layers], [lc.mlp_out for lc in layers], layers[-1].resid_post)


def _bias_rule(rules):
    """The ``add_bias`` of :func:`circuits.frozen.clean.forward` that adds each bias as ``rules`` share it."""
    if rules is None or not rules.share_eps:
        return None
    by_input = rules.norm_bias == "input"

    def add(y: torch.Tensor, bias: torch.Tensor, norm_input: torch.Tensor | None) -> torch.Tensor:
        by = norm_input if (by_input and norm_input is not None) else y
        return y + total_bias(bias, by, rules)

    return add


@torch.no_grad()
def full_forward(w: Weights, tokens: torch.Tensor, rules=None) -> FullCache:
    """Run the model over ``tokens`` [B, T] in the weights' dtype and keep every node (see :class:`LayerCache`).

    ``rules`` (a :class:`circuits.cdt.rules.Rules`, optional): with ``share_eps > 0`` every bias is added as the
    published code's shares add it to a total whose relevant part is zero (:func:`circuits.cdt.rules.total_bias`), so
    that this is the run those rules decompose; LayerNorm biases by the norm's input with ``norm_bias="input"``.
    """
    run = forward(w, tokens, _bias_rule(rules))
    return FullCache(**vars(run))


def clean_forward(w: Weights, tokens: torch.Tensor) -> CleanCache:
    """Run the model over ``tokens`` [B, T] in the weights' dtype and keep the activations CD-T starts from
    (the per-layer subset of :func:`full_forward`)."""
    return full_forward(w, tokens).clean_cache()
