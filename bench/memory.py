"""Working memory of a benchmark step: peak resident memory above a baseline taken after loading.

A process's peak RSS (``ru_maxrss``) includes the loading of the model, which often peaks higher than the work
itself and hides it. :class:`PeakMemory` takes the baseline when it is entered (after loading), resets the kernel's
high-water mark where Linux allows it (``/proc/self/clear_refs``), samples the resident size in a thread while the
block runs, and reports the peak above the baseline: the block's working memory. With ``python=True`` it also
traces Python's own allocations (tracemalloc; tensors' storage is not among them, and tracing slows Python code,
so time nothing inside such a block).

Memory freed by one step may stay with the allocator and be reused by the next without the RSS rising, so measure
each mode in a fresh process (:func:`child_json` runs one and reads its JSON line) above its own post-load baseline.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MB = 2**20


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (``/proc/self/statm``; the peak so far where that is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _high_water_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_mb() -> float | None:
    """Memory the system can still give (``MemAvailable`` in /proc/meminfo), in MiB; None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class MemoryPeak:
    """Resident memory (MiB) at the baseline and at the peak; ``working_mb`` is their difference.

    ``python_peak_mb``: the peak of Python's traced allocations (None unless traced). ``exact``: the peak is the
    kernel's high-water mark (else the largest of the sampled sizes, which can miss a short spike).
    """

    baseline_mb: float
    peak_mb: float
    python_peak_mb: float | None
    exact: bool

    @property
    def working_mb(self) -> float:
        return max(0.0, self.peak_mb - self.baseline_mb)

    def to_json(self) -> dict[str, Any]:
        return {"baseline_mb": self.baseline_mb, "peak_mb": self.peak_mb, "working_mb": self.working_mb,
                "python_peak_mb": self.python_peak_mb, "exact_peak": self.exact}


class PeakMemory:
    """Context manager measuring the peak resident memory of its block above the resident size at entry.

    ``interval``: seconds between RSS samples. ``python``: also trace Python allocations. After the block,
    ``result`` holds the :class:`MemoryPeak`.
    """

    def __init__(self, interval: float = 0.005, python: bool = False):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self.python = python
        self.result: MemoryPeak | None = None
        self._stop = threading.Event()
        self._max = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, current_rss_mb())

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self._baseline = current_rss_mb()
        self._max = self._baseline
        self._exact = _reset_high_water() and _high_water_mb() is not None
        if self.python:
            tracemalloc.start()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        peak = max(self._max, current_rss_mb())
        hwm = _high_water_mb() if self._exact else None
        if hwm is not None:
            peak = max(peak, hwm)
        python_peak = None
        if self.python:
            python_peak = tracemalloc.get_traced_memory()[1] / _MB
            tracemalloc.stop()
        self.result = MemoryPeak(self._baseline, peak, python_peak, hwm is not None)


def child_json(cmd: list[str], cwd: str | Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` (a benchmark's child mode) and return the JSON object on its last line of output.

    Raises RuntimeError naming the command and the end of its error output when it fails or prints no JSON.
    """
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:]) or "(no error output)"
        raise RuntimeError(f"child {' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])
