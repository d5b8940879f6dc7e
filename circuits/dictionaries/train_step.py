"""One training step's mathematics: the losses of a batch (ReLU with the decoder-norm-weighted L1, TopK with
AuxK), the data-dependent start, and the checks of a buffer block (non-finite or constant activations).

The formulas are in :mod:`circuits.dictionaries.train`'s docstring (METHODS.md section 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from circuits.dictionaries.auxk import auxk_reconstruction
from circuits.dictionaries.fused import relu_code
from circuits.dictionaries.model import (
    Dictionary,
    _SparseDecode,
    _SparseGatherLinear,
    csr_plan,
    scratch,
)
from circuits.dictionaries.precision import autocast_context
from circuits.dictionaries.train_config import (
    DictSpec,
    NonFiniteActivationError,
)


def _check_block(block, hooks: Sequence[str]) -> None:
    """Refuse a block with non-finite activations, naming the hook."""
    for h in hooks:
        rows = block.rows[h]
        if bool(torch.isfinite(rows.sum())):  # a NaN or Inf makes the sum non-finite (an overflow only may too)
            continue
        if not bool(torch.isfinite(rows).all()):
            bad = int((~torch.isfinite(rows)).any(-1).sum())
            raise NonFiniteActivationError(
                f"the activations at {h} hold NaN or Inf values ({bad} of {rows.shape[0]} rows of buffer block "
                f"{block.index}); check the model's weights and inputs")


def _varies(rows: torch.Tensor, sample: int = 64) -> bool:
    """A quick sufficient test that rows [N, width] pass :func:`constant_warning`'s variance test: a column whose
    values span ``s`` has variance >= s^2 / (2N), the span over a sample of rows bounds the full span from below, and
    twice the float32 sum of squares bounds the exact one from above. False means: run the exact test."""
    n = rows.shape[0]
    if n < 2:
        return False
    part = rows[torch.linspace(0, n - 1, min(sample, n), device=rows.device).long()].double()
    low = float((part.amax(0) - part.amin(0)).pow(2).sum()) / (2 * n)
    high = 2 * float(torch.linalg.vector_norm(rows.float())) ** 2 / n
    return math.isfinite(high) and low > 1e-12 * (high + 1e-30)


def constant_warning(hook: str, rows: torch.Tensor) -> str | None:
    """A warning when a target (rows [N, width]) does not vary: nothing to learn, every latent ends dead."""
    if _varies(rows):
        return None
    rows = rows.double()
    var = float(rows.var(0, unbiased=False).sum()) if rows.shape[0] > 1 else 0.0
    if var > 1e-12 * (float(rows.pow(2).sum(-1).mean()) + 1e-30):
        return None
    return (f"the activations at {hook} are the same at every one of the {rows.shape[0]} tokens of the first buffer "
            "block (no variance): there is nothing to learn, the dictionary's latents will not fire. Does the "
            "model's tokenizer read this text? (a corpus whose every token is unknown gives a constant input)")


#: rows :func:`init_from_data` reads at the start of training (whole global batches, at least this many when the
#: first block holds them)
INIT_ROWS = 4096

#: sums a tensor over the ranks of data-parallel training, in place, and returns it (None: one process)
Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def init_from_data(d: Dictionary, x: torch.Tensor, y: torch.Tensor, ratio: float = 0.1, rows: int | None = 4096,
                   reduce: Reduce | None = None) -> None:
    """Data-dependent start: ``b_dec`` = mean of the target y [N, d_out]; the encoder scaled so that the initial
    reconstruction's centred RMS norm is ``ratio`` times the target's (a small start whatever the activations' scale).
    ``rows``: read the first rows only (None: all). ``reduce``: the rows are this rank's part of the data-parallel
    rows; means are taken over every rank's rows (the same start on every rank, and as one process would make).
    The rows are moved to the dictionary's device."""
    x, y = (x, y) if rows is None else (x[:rows], y[:rows])
    x, y = x.to(d.W_enc.device), y.to(d.W_enc.device)
    if reduce is None:
        d.b_dec.copy_(y.mean(0))
    else:
        total = reduce(torch.cat([y.sum(0), y.new_tensor([float(y.shape[0])])]))
        d.b_dec.copy_(total[:-1] / total[-1])
    if d.activation == "topk":  # the sparse path: no dense code, no dense decoder product
        recon = d.decode_sparse(*d.encode_sparse(x), x)
    else:
        recon = d.decode(d.encode(x), x)
    if reduce is None:
        got = (recon - d.b_dec).pow(2).sum(-1).mean().sqrt()
        want = (y - d.b_dec).pow(2).sum(-1).mean().sqrt()
    else:
        sums = reduce(torch.stack([(recon - d.b_dec).pow(2).sum(), (y - d.b_dec).pow(2).sum()]))
        got, want = (sums / total[-1]).sqrt().unbind()
    if float(got) > 0 and float(want) > 0:
        scale = ratio * want / got
        d.W_enc.mul_(scale)
        d.b_enc.mul_(scale)


def _centred_power(r: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Mean over rows of ``||r - mean(r)||^2`` for r [B, w]; with ``reduce``, over the rows of every rank (r is this
    rank's part of the global batch)."""
    if reduce is None:
        return r.sub(r.mean(0)).pow(2).sum(-1).mean()
    total = reduce(torch.cat([r.sum(0), r.new_tensor([float(r.shape[0])])]))
    mean = total[:-1] / total[-1]
    return reduce(r.sub(mean).pow(2).sum()) / total[-1]


def _step_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec, dead: torch.Tensor,
                 auxk_coef: float, log: bool = True, autocast: str | None = None,
                 reduce: Reduce | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Loss of one batch (x [B, d_in], y [B, d_out]); returns (loss, numbers to log, latents fired [d_sae] bool).
    The logged numbers (L0, MSE, penalty or AuxK) are computed only when ``log`` is true. ``autocast`` (None, "bf16"
    or "fp16"): the precision of the dense products (:mod:`circuits.dictionaries.precision`). ``reduce``: x and y are
    this rank's part of a data-parallel batch; AuxK's normaliser (a batch statistic) is then the global batch's."""
    with autocast_context(autocast, x.device):
        if d.activation == "relu":
            return _relu_losses(d, x, y, spec, log)
        return _topk_losses(d, x, y, dead, auxk_coef, log, reduce)


def _relu_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec,
                 log: bool) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    logs: dict[str, float] = {}
    recon, penalty, z_sum, z = relu_code(x, d.b_dec if d.apply_b_dec_to_input else None, d.W_enc, d.b_enc, d.W_dec)
    out = d._add_skip(recon + d.b_dec, x)
    mse = (out - y).pow(2).sum(-1).mean()
    loss = mse + spec.l1 * penalty
    fired = z_sum > 0  # the code is non-negative: a latent fired in the batch iff its column sum is positive
    if log:
        logs["l0"] = float((z > 0).sum()) / x.shape[0]
        logs["l1"] = float(penalty.detach())
        logs["mse"] = float(mse.detach())
    return loss, logs, fired


def _topk_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor, auxk_coef: float,
                 log: bool, reduce: Reduce | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """TopK: one dense encoder product (to rank the latents), then only the chosen entries: their gradients, the
    k-sparse decoder, and AuxK over the dead latents' columns alone."""
    logs: dict[str, float] = {}
    shift = d.b_dec if d.apply_b_dec_to_input else None
    with torch.no_grad():
        xin = x - shift if shift is not None else x
        if torch.is_autocast_enabled(x.device.type):
            pre = torch.addmm(d.b_enc, xin, d.W_enc)
        else:  # into a buffer reused from step to step (pre is not kept)
            pre = torch.addmm(d.b_enc, xin, d.W_enc, out=scratch("topk_pre", (x.shape[0], d.d_sae), d.W_enc.dtype,
                                                                 x.device))
        vals, idx = pre.topk(d.k, dim=-1, sorted=False)
        plan = csr_plan(idx, d.d_sae)  # one index sort shared by the encoder and decoder gradients
    acts = F.relu(_SparseGatherLinear.apply(x, shift, d.W_enc, d.b_enc, idx, vals, plan))
    out = d._add_skip(_SparseDecode.apply(acts, idx, d.W_dec, plan) + d.b_dec, x)
    mse = (out - y).pow(2).sum(-1).mean()
    loss = mse
    with torch.no_grad():  # fired: a positive activation in the batch (counted without a host sync)
        fired = torch.zeros(d.d_sae, dtype=acts.dtype, device=idx.device).index_add_(
            0, idx.reshape(-1), (acts > 0).reshape(-1).to(acts.dtype)) > 0
    if log:
        logs["l0"] = float((acts > 0).sum()) / x.shape[0]
    n_dead = int(dead.sum())
    if n_dead and auxk_coef > 0:
        k_aux = min(max(1, d.d_in // 2), n_dead)
        e_hat = auxk_reconstruction(d, x, pre, dead, n_dead, k_aux)
        resid = (y - out).detach()
        aux = (e_hat - resid).pow(2).sum(-1).mean() / _centred_power(resid, reduce).clamp_min(1e-12)
        loss = loss + auxk_coef * torch.nan_to_num(aux, 0.0)
        if log:
            logs["auxk"] = float(aux.detach())
    if log:
        logs["mse"] = float(mse.detach())
    return loss, logs, fired
