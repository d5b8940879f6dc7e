"""AuxK's reconstruction from the dead latents (Gao et al. 2024), the cheaper of two exact routes.

For x [B, d_in] with pre-activations ``pre`` [B, d_sae] (computed without grad) and the dead latents ``cols`` [n]
(n >= 1), AuxK keeps, per row, the ``k_aux`` largest pre-activations among the dead columns and decodes them::

    e_hat[b] = sum_{c in top_k_aux(pre[b, cols])} relu(pre[b, c]) * W_dec[c]             [B, d_out]

with gradients to W_enc, b_enc, the SAE's shift (b_dec) and W_dec through the chosen entries only. Two routes give
the same values and gradients (up to rounding):

- sparse: the B * k_aux chosen entries through the gather/scatter Functions of :mod:`circuits.dictionaries.model`
  (memory-bound, about as costly per entry as the main TopK path);
- dense over the dead columns: a [B, n] code (zeros off the chosen entries) and four [B x n x d] products
  (decoder forward, its two gradients, the encoder gradient) on the dead columns' weights. Products run near the
  machine's matmul rate, so this wins while the dead columns are few against ``k_aux`` (:data:`DENSE_RATIO`);
  with ``n <= k_aux`` every dead latent is chosen in every row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from circuits.dictionaries.model import Dictionary, _SparseDecode, _SparseGatherLinear, csr_plan
from circuits.dictionaries.precision import amp_backward, amp_forward

#: the dense route is taken while the dead columns number at most this many times k_aux
DENSE_RATIO = 4


class _DeadColumnsDecode(torch.autograd.Function):
    """e_hat [B, d_out] = z @ W_dec[cols] for the dead columns' code z [B, n] (computed without grad: the chosen
    pre-activations after the ReLU, zero elsewhere), with the gradients of
    ``z[b, c] = relu((x[b] - shift) @ W_enc[:, cols[c]] + b_enc[cols[c]])`` at the nonzero entries. Runs in float32
    under autocast."""

    @staticmethod
    @amp_forward(cast_inputs=torch.float32)
    def forward(ctx, x, shift, W_enc, b_enc, W_dec, cols, z):  # noqa: ANN001, ANN205
        W_sub = W_dec.index_select(0, cols)
        ctx.save_for_backward(x, shift if shift is not None else x.new_zeros(0), W_enc, z, W_sub, cols)
        ctx.has_shift = shift is not None
        ctx.shapes = (W_enc.shape, W_dec.shape)
        return z @ W_sub

    @staticmethod
    @amp_backward
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, shift, W_enc, z, W_sub, cols = ctx.saved_tensors
        grad = grad.to(W_sub.dtype)
        g_x = g_s = g_we = g_be = g_wd = None
        if ctx.needs_input_grad[4]:
            g_wd = torch.zeros(ctx.shapes[1], dtype=grad.dtype, device=grad.device).index_copy_(0, cols, z.t() @ grad)
        g_pre = (grad @ W_sub.t()).mul_(z > 0)  # through the ReLU of the chosen entries only (zero elsewhere)
        if ctx.needs_input_grad[2]:
            xin = x - shift if ctx.has_shift else x
            g_we = torch.zeros(ctx.shapes[0], dtype=grad.dtype, device=grad.device).index_copy_(1, cols,
                                                                                                xin.t() @ g_pre)
        g_b = g_pre.sum(0)
        if ctx.needs_input_grad[3]:
            g_be = torch.zeros(ctx.shapes[0][1], dtype=grad.dtype, device=grad.device).index_copy_(0, cols, g_b)
        W_cols = W_enc.index_select(1, cols) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        if ctx.has_shift and ctx.needs_input_grad[1]:
            g_s = -(W_cols @ g_b)
        if ctx.needs_input_grad[0]:
            g_x = g_pre @ W_cols.t()
        return g_x, g_s, g_we, g_be, g_wd, None, None


def _dense_code(sub: torch.Tensor, k_aux: int) -> torch.Tensor:
    """[B, n] -> relu of each row's k_aux largest entries, zero elsewhere (without grad). Past half the columns the
    n - k_aux smallest are found and zeroed instead (the same entries, a smaller selection)."""
    n = sub.shape[1]
    if k_aux >= n:
        return sub.relu()
    if 2 * k_aux > n:
        _, drop = sub.topk(n - k_aux, dim=-1, largest=False, sorted=False)
        return sub.relu().scatter_(1, drop, 0.0)
    vals, j = sub.topk(k_aux, dim=-1, sorted=False)
    return torch.zeros_like(sub).scatter_(1, j, vals.relu_())


def auxk_reconstruction(d: Dictionary, x: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor, n_dead: int,
                        k_aux: int) -> torch.Tensor:
    """AuxK's e_hat [B, d_out] from the top ``k_aux`` pre-activations among the ``n_dead`` dead latents (``dead``
    [d_sae] bool) of x [B, d_in] (``pre`` [B, d_sae] without grad); the route by :data:`DENSE_RATIO`."""
    shift = d.b_dec if d.apply_b_dec_to_input else None
    with torch.no_grad():  # ranked among the dead columns only
        cols = dead.nonzero().squeeze(1) if n_dead < d.d_sae else torch.arange(d.d_sae, device=pre.device)
        sub = pre.index_select(1, cols) if n_dead < d.d_sae else pre
        if n_dead <= DENSE_RATIO * k_aux:
            z = _dense_code(sub, k_aux)
        else:
            a_vals, j = sub.topk(k_aux, dim=-1, sorted=False)
            a_idx = cols[j]
            plan = csr_plan(a_idx, d.d_sae)
    if n_dead <= DENSE_RATIO * k_aux:
        return _DeadColumnsDecode.apply(x, shift, d.W_enc, d.b_enc, d.W_dec, cols, z)
    acts = F.relu(_SparseGatherLinear.apply(x, shift, d.W_enc, d.b_enc, a_idx, a_vals, plan))
    return _SparseDecode.apply(acts, a_idx, d.W_dec, plan)
