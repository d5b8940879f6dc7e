"""A fused ReLU dictionary code with a hand-written backward (the training step's hot path).

``relu_code(x, shift, W_enc, b_enc, W_dec)`` computes, for x [B, d_in]::

    z        = relu((x - shift) @ W_enc + b_enc)          [B, d_sae]   (shift: an SAE's b_dec, or None)
    recon    = z @ W_dec                                  [B, d_out]   (no bias: the caller adds b_dec / skip terms)
    penalty  = sum_i (sum_b z[b, i]) * ||W_dec[i]|| / B   scalar       (the decoder-norm-weighted L1 of the batch)

and returns ``(recon, penalty, z_sum [d_sae], z [B, d_sae])`` (``z_sum`` and ``z`` detached, for firing statistics
and logging; do not modify ``z`` in place, the backward reads it). The gradients are
exactly those of that formula (tests compare them with plain autograd in float64); the backward is cheaper than
autograd's because

- the gradient of ``shift`` is ``-W_enc @ grad_b_enc`` (a matrix-vector product), not the [B, d_sae] @ [d_sae, d_in]
  product autograd forms for ``x - shift`` before summing it over the batch;
- the penalty's gradient enters the code's gradient as the bias of the one ``addmm`` that forms it, and the decoder
  norms' gradient as the start of the one ``addmm`` that forms ``grad W_dec``;
- the ReLU is applied in place, so one [B, d_sae] buffer holds the pre-activations and the code, and the
  backward's [B, d_sae] gradient is formed and masked in place in one buffer reused from step to step;
- no zero gradient is materialised for the detached outputs.

Under autocast (:mod:`circuits.dictionaries.precision`) the products run in the low precision, the column sums,
the penalty and the returned gradients are float32.

So a step costs five [B x d_in x d_sae] products (encoder forward and weight gradient, decoder forward and both
gradients) and a handful of passes over [B, d_sae].
"""

from __future__ import annotations

import torch

from circuits.dictionaries.model import scratch
from circuits.dictionaries.precision import amp_backward, amp_forward


class _ReluCode(torch.autograd.Function):
    @staticmethod
    @amp_forward()
    def forward(ctx, x, shift, W_enc, b_enc, W_dec):  # noqa: ANN001, ANN205
        ctx.set_materialize_grads(False)  # no zero [B, d_sae] gradient is made for the detached outputs
        xin = x - shift if shift is not None else x
        z = torch.addmm(b_enc, xin, W_enc).relu_()
        recon = z @ W_dec
        norms = W_dec.norm(dim=1)
        z_sum = z.sum(0, dtype=torch.promote_types(z.dtype, norms.dtype))
        penalty = (z_sum * norms).sum() / x.shape[0]
        ctx.save_for_backward(xin, z, W_enc, W_dec, norms, z_sum)
        ctx.has_shift = shift is not None
        ctx.mark_non_differentiable(z_sum, z)
        return recon, penalty, z_sum, z

    @staticmethod
    @amp_backward
    def backward(ctx, g_recon, g_pen, _g_zsum, _g_z):  # noqa: ANN001, ANN205
        xin, z, W_enc, W_dec, norms, z_sum = ctx.saved_tensors
        B = z.shape[0]
        if g_recon is None:
            g_recon = z.new_zeros(B, W_dec.shape[1])
        coef = g_pen / B if g_pen is not None else norms.new_zeros(())
        g_x = g_shift = g_wenc = g_benc = g_wdec = None
        # d loss / d z = g_recon @ W_dec^T + coef * norms (broadcast over the batch), then the ReLU mask, in place
        # in one reused buffer (under autocast the product's low-precision result is its own buffer)
        bias = norms * coef
        if torch.is_autocast_enabled(z.device.type):
            g_pre = torch.addmm(bias, g_recon, W_dec.t())
        else:
            g_pre = torch.addmm(bias, g_recon, W_dec.t(), out=scratch("relu_grad", z.shape, z.dtype, z.device))
        torch.ops.aten.threshold_backward.grad_input(g_pre, z, 0.0, grad_input=g_pre)
        if ctx.needs_input_grad[2]:
            g_wenc = (xin.t() @ g_pre).to(W_enc.dtype)
        g_b = g_pre.sum(0, dtype=W_enc.dtype)
        if ctx.needs_input_grad[3]:
            g_benc = g_b
        if ctx.has_shift and ctx.needs_input_grad[1]:
            g_shift = -(W_enc @ g_b).to(W_enc.dtype)
        if ctx.needs_input_grad[0]:
            g_x = (g_pre @ W_enc.t()).to(xin.dtype)
        if ctx.needs_input_grad[4]:
            # d penalty / d W_dec[i] = coef * z_sum[i] * W_dec[i] / ||W_dec[i]||
            start = W_dec * (coef * z_sum / norms.clamp_min(1e-12))[:, None]
            g_wdec = torch.addmm(start, z.t(), g_recon).to(W_dec.dtype)
        return g_x, g_shift, g_wenc, g_benc, g_wdec


def relu_code(x: torch.Tensor, shift: torch.Tensor | None, W_enc: torch.Tensor, b_enc: torch.Tensor,
              W_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, d_in], shift [d_in] or None, W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out] ->
    (recon [B, d_out] = z @ W_dec, penalty (scalar, norm-weighted L1 per token), z_sum [d_sae], z [B, d_sae]);
    the last two carry no gradient."""
    return _ReluCode.apply(x, shift, W_enc, b_enc, W_dec)
