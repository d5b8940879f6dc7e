"""What a request needs against what the model and the machine have: the model's context length and the memory a
request would allocate, checked before any heavy work (each error names the option and the real limit)."""

from __future__ import annotations

import os
from typing import Any

from workbench.errors import ConfigError

__all__ = ["check_context", "check_memory", "context_length", "total_memory_bytes"]


def context_length(model: Any) -> int | None:
    """The model's context length in tokens (``model.cfg.n_ctx``), or None when it states none."""
    n = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return int(n) if n else None


def check_context(model: Any, n_tokens: int, what: str) -> None:
    """ConfigError when ``n_tokens`` (of ``what``, e.g. ``"--seq-len 128"`` or ``"the --prompt"``) exceed the
    model's context length."""
    n_ctx = context_length(model)
    if n_ctx is not None and n_tokens > n_ctx:
        raise ConfigError(f"{what} is {n_tokens} tokens, longer than the model's context length of {n_ctx} tokens; "
                          f"give at most {n_ctx}")


def total_memory_bytes(device: Any = "cpu") -> int | None:
    """The memory of ``device``: the GPU's for a CUDA device, else the machine's physical memory (None if unknown)."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need_bytes: float, what: str, device: Any = "cpu") -> None:
    """ConfigError when ``what`` (naming the options, e.g. ``"--n 1000000 examples"``) needs more than the device's
    whole memory, saying how much it needs."""
    total = total_memory_bytes(device)
    if total is not None and need_bytes > total:
        raise ConfigError(f"{what} needs about {need_bytes / 2**30:,.1f} GiB of memory, more than the "
                          f"{total / 2**30:,.1f} GiB of this machine{' GPU' if str(device).startswith('cuda') else ''}")
