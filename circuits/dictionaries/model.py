"""Sparse dictionaries: SAE, transcoder and skip transcoder (one class, parameters named as SAELens names them).

Shapes (``d_in`` input width, ``d_sae`` latents, ``d_out`` output width)::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]   W_skip [d_in, d_out] (skip transcoder)

    SAE:             z = act((x - b_dec) @ W_enc + b_enc);  out = z @ W_dec + b_dec          (d_out == d_in)
    transcoder:      z = act(x @ W_enc + b_enc);            out = z @ W_dec + b_dec          (x: MLP input, out: MLP output)
    skip transcoder: z = act(x @ W_enc + b_enc);            out = z @ W_dec + x @ W_skip + b_dec

``act`` is ReLU, or TopK (keep the ``k`` largest pre-activations, then ReLU). TopK has a sparse path
(:meth:`Dictionary.encode_sparse` / :meth:`Dictionary.decode_sparse`) that touches only the ``k`` active decoder rows.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from circuits.dictionaries.precision import amp_backward, amp_forward

KINDS = ("sae", "transcoder", "skip_transcoder")
ACTIVATIONS = ("relu", "topk")


class DictionaryConfigError(ValueError):
    """A dictionary was asked for with an unknown kind/activation or inconsistent widths."""


_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable uninitialised buffer for a large temporary of one step that no caller keeps (one per ``name``, shape,
    dtype and device, per thread; at most 8 kept): a fresh [B, d_sae] tensor every step is page-faulted in anew on
    the CPU. The caller must be done with its contents before asking for the same buffer again."""
    cache = _scratch.__dict__.setdefault("buffers", {})
    key = (name, tuple(shape), dtype, torch.device(device))
    if key not in cache:
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[key] = torch.empty(shape, dtype=dtype, device=device)
    return cache[key]


def release_scratch() -> None:
    """Free this thread's :func:`scratch` buffers (at the end of a training run)."""
    _scratch.__dict__.pop("buffers", None)


def csr_plan(idx: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sorting work of :func:`_sparse_t_matmul` for idx [B, k] (distinct per row), to share between products
    with the same indices: the B*k entries grouped by latent (a CSR layout of the transposed code),
    (offsets [n_rows + 1] of each latent's group, order [B * k] (a stable sort of the flat indices), batch rows
    [B * k] of the sorted entries). On idx's device."""
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    offsets = torch.zeros(n_rows + 1, dtype=torch.long, device=idx.device)
    offsets[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    return offsets, order, order // idx.shape[1]


def _sparse_t_matmul(idx: torch.Tensor, vals: torch.Tensor, dense: torch.Tensor, n_rows: int,
                     plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``G^T @ dense`` for the sparse G [B, n_rows] with ``G[b, idx[b, i]] = vals[b, i]`` (idx [B, k] distinct per row):
    [n_rows, dense.shape[1]], row j the ``vals``-weighted sum of the dense rows of the entries of latent j, one
    ``embedding_bag`` over the latent-sorted entries (any device). ``plan``: :func:`csr_plan` of idx, if already
    made."""
    offsets, order, rows = plan if plan is not None else csr_plan(idx, n_rows)
    return F.embedding_bag(rows, dense, offsets, mode="sum", per_sample_weights=vals.reshape(-1)[order].to(dense.dtype),
                           include_last_offset=True)


class _SparseDecode(torch.autograd.Function):
    """out [B, d_out] = sum_i acts[b, i] * W_dec[idx[b, i]], touching only the chosen rows in both directions.
    Under autocast it runs in float32 (a gather, not a dense product). The forward keeps embedding_bag's bag map so
    the backward forms the activations' gradient (one dot product per entry) without a second forward."""

    @staticmethod
    @amp_forward(cast_inputs=torch.float32)
    def forward(ctx, acts, idx, W_dec, plan=None):  # noqa: ANN001, ANN205
        B, k = idx.shape
        flat = idx.reshape(-1)
        offsets = torch.arange(0, B * k, k, device=idx.device)
        out, offset2bag, _, _ = torch.ops.aten._embedding_bag(W_dec, flat, offsets, False, 0, False,
                                                              acts.reshape(-1), False, -1)
        ctx.save_for_backward(acts, idx, W_dec, offsets, offset2bag)
        ctx.plan = plan
        return out

    @staticmethod
    @amp_backward
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        acts, idx, W_dec, offsets, offset2bag = ctx.saved_tensors
        grad = grad.to(W_dec.dtype).contiguous()
        g_acts = g_w = None
        if ctx.needs_input_grad[0]:  # g_acts[b, i] = grad[b] . W_dec[idx[b, i]]
            g_acts = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, W_dec, idx.reshape(-1), offsets, offset2bag, 0, -1).view(idx.shape)
        if ctx.needs_input_grad[2]:
            g_w = _sparse_t_matmul(idx, acts, grad, W_dec.shape[0], ctx.plan)
        return g_acts, None, g_w, None


class _SparseGatherLinear(torch.autograd.Function):
    """Values of chosen pre-activations with a sparse backward.

    forward(x [B, d_in], shift [d_in] or None, W_enc [d_in, d_sae], b_enc [d_sae], idx [B, k], values [B, k], plan)
    -> values
    where ``values[b, i] = (x[b] - shift) @ W_enc[:, idx[b, i]] + b_enc[idx[b, i]]`` was already computed (densely,
    without grad). Backward gives W_enc and b_enc the gradient of only the B*k chosen entries (a sparse [d_sae, B] @
    [B, d_in] product) instead of a dense [d_in, B] @ [B, d_sae] one; ``shift`` (an SAE's b_dec) gets
    ``-W_enc @ grad_b_enc``; ``x`` gets its gradient through the gathered encoder columns only when it asks for one.
    Under autocast the values (computed in the low precision) are cast to float32 and the backward runs in float32.
    """

    @staticmethod
    @amp_forward(cast_inputs=torch.float32)
    def forward(ctx, x, shift, W_enc, b_enc, idx, values, plan=None):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, shift if shift is not None else x.new_zeros(0), W_enc, idx)
        ctx.plan = plan
        ctx.has_shift = shift is not None
        ctx.d_sae = W_enc.shape[1]
        return values.to(W_enc.dtype, copy=True)

    @staticmethod
    @amp_backward
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, shift, W_enc, idx = ctx.saved_tensors
        grad = grad.to(W_enc.dtype)
        g_x = g_s = g_w = g_b = None
        flat_idx = idx.reshape(-1)
        flat_g = grad.reshape(-1).contiguous()
        if ctx.needs_input_grad[2]:
            xin = x - shift if ctx.has_shift else x
            # sparse G^T [d_sae, B] with B*k entries, times x [B, d_in] -> [d_sae, d_in]
            g_w = _sparse_t_matmul(idx, grad, xin.contiguous(), ctx.d_sae, ctx.plan).t()
        if ctx.needs_input_grad[3] or (ctx.has_shift and ctx.needs_input_grad[1]):
            g_b = torch.zeros(ctx.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, flat_idx, flat_g)
            if ctx.has_shift and ctx.needs_input_grad[1]:
                g_s = -(W_enc @ g_b)
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=grad, mode="sum")
        return g_x, g_s, g_w, g_b if ctx.needs_input_grad[3] else None, None, None, None


class Dictionary(nn.Module):
    """A sparse dictionary on one hook point (SAE) or from one hook point to another (transcoders).

    Attributes: ``kind``, ``activation``, ``k`` (TopK only), ``hook_in``, ``hook_out``, ``d_in``, ``d_sae``, ``d_out``,
    ``apply_b_dec_to_input`` (True for SAEs: the input is centred by ``b_dec`` before encoding).
    """

    def __init__(
        self,
        kind: str,
        d_in: int,
        d_sae: int,
        *,
        activation: str = "relu",
        k: int | None = None,
        hook_in: str,
        hook_out: str | None = None,
        d_out: int | None = None,
        apply_b_dec_to_input: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise DictionaryConfigError(f"unknown dictionary kind {kind!r}; accepted: {', '.join(KINDS)}")
        if activation not in ACTIVATIONS:
            raise DictionaryConfigError(f"unknown activation {activation!r}; accepted: {', '.join(ACTIVATIONS)}")
        d_out = d_in if d_out is None else int(d_out)
        if min(d_in, d_sae, d_out) < 1:
            raise DictionaryConfigError(f"widths must be positive, got d_in={d_in}, d_sae={d_sae}, d_out={d_out}")
        if kind == "sae":
            if d_out != d_in:
                raise DictionaryConfigError(f"an SAE reconstructs its input: d_out ({d_out}) must equal d_in ({d_in})")
            if hook_out is not None and hook_out != hook_in:
                raise DictionaryConfigError(f"an SAE reads and writes one hook; got hook_in={hook_in!r}, hook_out={hook_out!r}")
        elif hook_out is None:
            raise DictionaryConfigError(f"a {kind} needs hook_out (e.g. blocks.6.hook_mlp_out)")
        if activation == "topk":
            if k is None or not 1 <= int(k) <= d_sae:
                raise DictionaryConfigError(f"TopK needs 1 <= k <= d_sae ({d_sae}), got k={k}")
            k = int(k)
        else:
            k = None
        self.kind, self.activation, self.k = kind, activation, k
        self.hook_in = hook_in
        self.hook_out = hook_in if hook_out is None else hook_out
        self.d_in, self.d_sae, self.d_out = int(d_in), int(d_sae), d_out
        self.model_name: str | None = None
        self.apply_b_dec_to_input = (kind == "sae") if apply_b_dec_to_input is None else bool(apply_b_dec_to_input)
        if self.apply_b_dec_to_input and d_out != d_in:
            raise DictionaryConfigError("apply_b_dec_to_input needs d_out == d_in")
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, device=device))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, device=device))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, device=device)) if kind == "skip_transcoder" else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, kind: str, d_in: int, d_sae: int, *, seed: int = 0, **options: Any) -> Dictionary:
        """A randomly initialised dictionary: unit-norm decoder rows in random directions, encoder = decoder
        transposed where the widths allow (scaled otherwise), zero biases, zero ``W_skip``.

        ``options`` are the constructor's keywords (``hook_in`` is required; ``activation``, ``k``, ``hook_out``,
        ``d_out``, ``apply_b_dec_to_input``, ``device``); ``seed`` seeds the random directions, drawn on the CPU
        (the same weights on every device) and copied to the dictionary's device.
        """
        d = cls(kind, d_in, d_sae, **options)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            w_dec = torch.randn(d.d_sae, d.d_out, generator=gen, device="cpu")
            d.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
            if d.d_in == d.d_out:
                d.W_enc.copy_(d.W_dec.t())
            else:
                w_enc = torch.randn(d.d_in, d.d_sae, generator=gen, device="cpu")
                d.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
        return d

    def config(self) -> dict:
        """Constructor arguments (JSON values) that rebuild this dictionary's shape."""
        return {
            "kind": self.kind, "activation": self.activation, "k": self.k, "hook_in": self.hook_in,
            "hook_out": self.hook_out, "d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
        }

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return f"{self.kind}, {self.activation}{k}, {self.d_in} -> {self.d_sae} -> {self.d_out}, {self.hook_in} -> {self.hook_out}"

    # ------------------------------------------------------------------ encode / decode
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> encoder pre-activations [..., d_sae]."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input width {x.shape[-1]} does not match the dictionary's d_in {self.d_in}")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> latent activations z [..., d_sae] (dense; zeros where inactive)."""
        pre = self.pre_activation(x)
        if self.activation == "relu":
            return F.relu(pre)
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK only: x [B, d_in] -> (values [B, k] >= 0, indices [B, k]); the encoder's backward is sparse."""
        if self.activation != "topk":
            raise ValueError("encode_sparse needs a TopK dictionary; use encode() for ReLU")
        shift = self.b_dec if self.apply_b_dec_to_input else None
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x - shift if shift is not None else x, self.W_enc)
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        vals = _SparseGatherLinear.apply(x, shift, self.W_enc, self.b_enc, idx, vals)
        return F.relu(vals), idx

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """(values [B, k], indices [B, k]) -> out [B, d_out], reading only the k chosen decoder rows."""
        out = _SparseDecode.apply(values, indices, self.W_dec) + self.b_dec
        return self._add_skip(out, x)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """z [..., d_sae] (and, for a skip transcoder, its input x [..., d_in]) -> out [..., d_out]."""
        return self._add_skip(z @ self.W_dec + self.b_dec, x)

    def _add_skip(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if self.W_skip is None:
            return out
        if x is None:
            raise ValueError("a skip transcoder's decode needs the input x (out = z @ W_dec + x @ W_skip + b_dec)")
        return out + x @ self.W_skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., d_in] -> (out [..., d_out], z [..., d_sae])."""
        z = self.encode(x)
        return self.decode(z, x), z

    # ------------------------------------------------------------------ decoder norms
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm, moving the scale into the encoder (the function stays the same for ReLU)."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        self.b_enc.mul_(norms)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out of ``W_dec.grad`` the component along each decoder row (keeps rows on the unit sphere):
        ``g[i] -= (g[i] . W[i]) W[i] / ||W[i]||^2``, in place, with no [d_sae, d_out] temporary."""
        g, w = self.W_dec.grad, self.W_dec
        if g is None:
            return
        coef = torch.linalg.vecdot(g, w, dim=1) / w.norm(dim=1).clamp_min(1e-12).pow(2)
        g.addcmul_(w, coef[:, None], value=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def expansion_width(d_in: int, expansion: float) -> int:
    """Latent count for an expansion factor (``round(d_in * expansion)``, at least 1)."""
    if not math.isfinite(expansion) or expansion <= 0:
        raise DictionaryConfigError(f"expansion must be a positive number, got {expansion}")
    return max(1, round(d_in * expansion))
