"""Ensemble reweighting: rescale the contribution of each path length by fitted weights and measure the loss.

The logits are linear in the per-length parts, ``logits(w) = readout(sum_k w_k r^(k))`` (the readout constant scaled
with part 0), so the weights ``w`` [K] that minimise the next-token loss over some decompositions are fitted by L-BFGS;
``w = 1`` gives the clean loss back. As in the ViT path-ensemble study (EnsembleScale), the question is how far a
reweighting of path lengths alone can move the loss; evaluate on decompositions not used for fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.paths.decompose import PathDecomposition
from circuits.paths.frozen import PathInputError

__all__ = ["ReweightResult", "fit_length_weights", "mean_loss"]


@dataclass
class ReweightResult:
    """weights: [K] fitted; fit_clean / fit_loss: mean loss on the fitting set with w = 1 and with the weights."""

    weights: torch.Tensor
    fit_clean: float
    fit_loss: float


def mean_loss(decomps: list[PathDecomposition], weights: torch.Tensor) -> torch.Tensor:
    """Mean over decompositions of the loss with part ``k`` scaled by ``weights[k]``."""
    return torch.stack([d.reweighted_loss(weights) for d in decomps]).mean()


def fit_length_weights(decomps: list[PathDecomposition], *, steps: int = 50, l2: float = 0.0) -> ReweightResult:
    """Fit one weight per path length (starting at 1) minimising the mean next-token loss over ``decomps``.

    All decompositions must have the same number of parts. l2: penalty ``l2 * ||w - 1||^2``. steps: L-BFGS iterations.
    """
    if not decomps:
        raise PathInputError("fit_length_weights needs at least one decomposition")
    k = decomps[0].parts.shape[0]
    if any(d.parts.shape[0] != k for d in decomps):
        raise PathInputError("all decompositions must have the same number of length parts (same model, same max_length)")
    w = torch.ones(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mean_loss(decomps, w) + l2 * ((w - 1) ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        clean = float(mean_loss(decomps, torch.ones(k, dtype=torch.float64)))
    opt.step(closure)
    weights = w.detach()
    with torch.no_grad():
        fitted = float(mean_loss(decomps, weights))
    return ReweightResult(weights, clean, fitted)
