"""The ``--device`` check every face shares: a device this machine does not have is a clear error, never a
traceback from deep inside torch."""

from __future__ import annotations

from workbench.errors import ConfigError


def check_device(device: str | None) -> None:
    """ConfigError for a device this machine does not have (``cuda`` without a GPU, an unknown name)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r} is not a device name; accepted: cpu, cuda, cuda:N, mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device!r}: accepted: cpu, cuda, cuda:N, mps")
