"""Mixed precision and the optimiser of dictionary training: autocast, a gradient scaler for fp16, fused Adam.

``autocast`` names the precision of the step's matrix products: ``None`` (float32 throughout), ``"bf16"`` or
``"fp16"``. The weights and Adam's moments stay float32 (master weights); under autocast the dense products (the
encoder forward of TopK, the five products of the fused ReLU step) run in the low precision, reductions and the
sparse gather/scatter products of TopK in float32. fp16 multiplies the loss by a dynamic scale
(:class:`torch.amp.GradScaler`) so small gradients do not flush to zero; a step whose gradients overflow is skipped
and the scale lowered, as the scaler does.

The custom autograd Functions of the step run on whatever device their inputs are on, so the autocast decorators
(:func:`torch.amp.custom_fwd` / :func:`torch.amp.custom_bwd`, which take one device type) are applied per call with
the device type of the inputs (:func:`amp_forward`, :func:`amp_backward`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

AUTOCAST = (None, "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _device_type(args: Iterable[Any]) -> str:
    """The device type of the first tensor among ``args`` (the CPU when there is none)."""
    return next((a.device.type for a in args if torch.is_tensor(a)), "cpu")


def amp_forward(cast_inputs: torch.dtype | None = None) -> Callable:
    """``torch.amp.custom_fwd(device_type=<the inputs' device type>, cast_inputs=cast_inputs)`` for the ``forward``
    of an autograd Function (a staticmethod taking ``ctx`` first): with ``cast_inputs``, floating inputs are cast to
    it and the forward runs with autocast off; without, the forward runs under the caller's autocast state."""

    def decorate(fwd: Callable) -> Callable:
        @functools.wraps(fwd)
        def call(ctx, *args):  # noqa: ANN001, ANN202
            ctx.amp_device = _device_type(args)
            return torch.amp.custom_fwd(fwd, device_type=ctx.amp_device, cast_inputs=cast_inputs)(ctx, *args)

        return call

    return decorate


def amp_backward(bwd: Callable) -> Callable:
    """``torch.amp.custom_bwd`` for the device type the forward ran on: the backward runs under the forward's
    autocast state."""

    @functools.wraps(bwd)
    def call(ctx, *grads):  # noqa: ANN001, ANN202
        return torch.amp.custom_bwd(bwd, device_type=ctx.amp_device)(ctx, *grads)

    return call


def autocast_context(autocast: str | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast region of one step's forward on ``device`` (a no-op for ``autocast=None``)."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[autocast])


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam over ``params`` with torch's fused kernel (one pass over each tensor for the whole update) where the
    parameters' device has one, else the multi-tensor (foreach) implementation; the update is Adam's either way."""
    params = list(params)
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused = all(p.device.type in _get_fused_kernels_supported_devices() and p.dtype.is_floating_point
                for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if fused else None,
                            foreach=None if fused else True)


class LossScaler:
    """Backward and optimiser step of one dictionary under ``autocast``: plain for None and bf16, through a
    :class:`torch.amp.GradScaler` for fp16 (the scale's state travels with checkpoints: :meth:`state` /
    :meth:`load`)."""

    def __init__(self, autocast: str | None, device: torch.device | str) -> None:
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if autocast == "fp16" else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (skipped by the scaler when the scaled gradients overflowed; the scale then drops).
        Gradient transformations before it must be linear (they commute with the scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state(self) -> dict[str, torch.Tensor]:
        """The scaler's state (its scale and growth tracker) as CPU tensors; empty without a scaler."""
        if self.scaler is None:
            return {}
        st = self.scaler.state_dict()
        return {"scaler.scale": torch.tensor([st["scale"]], dtype=torch.float64, device="cpu"),
                "scaler.growth_tracker": torch.tensor([st["_growth_tracker"]], dtype=torch.long, device="cpu")}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (keys absent: the scaler starts afresh)."""
        if self.scaler is None or "scaler.scale" not in tensors:
            return
        self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(tensors["scaler.scale"][0]),
                                     "_growth_tracker": int(tensors["scaler.growth_tracker"][0])})
