"""Timing for benchmarks on a shared machine: the modes compared run in one process, interleaved, in rounds.

:func:`compare` runs every mode once as a warm-up, then ``rounds`` rounds in which each mode runs once (the order
rotated each round, so no mode always follows the same neighbour). It keeps every round's seconds, so a ratio can be
read from the best round of each mode or as the median of the per-round ratios (paired: a load swing during one round
hits both modes of that round). The 1-minute load average is sampled at the start, after every round and at the end;
a run whose load rose above the number of cores this process may use is flagged ``unreliable``.

:func:`emit` prints a benchmark's one JSON object (strict JSON: non-finite numbers become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LoadReader = Callable[[], float]
"""Returns the current 1-minute load average (tests inject their own)."""


def load_1min() -> float:
    """The 1-minute load average of this machine (``os.getloadavg()[0]``); NaN where the system has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system reports it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class LoadWatch:
    """Load-average samples over a benchmark run; ``unreliable`` once any sample exceeds the core count.

    Call :meth:`sample` at the points worth recording (a :func:`compare` samples after every round).
    """

    reader: LoadReader = load_1min
    cores: int = field(default_factory=usable_cores)
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"cores must be at least 1, got {self.cores}")
        if not self.samples:
            self.sample()

    def sample(self) -> float:
        """Read the load now and keep it."""
        value = float(self.reader())
        self.samples.append(value)
        return value

    @property
    def start(self) -> float:
        return self.samples[0]

    @property
    def end(self) -> float:
        return self.samples[-1]

    @property
    def peak(self) -> float:
        finite = [s for s in self.samples if math.isfinite(s)]
        return max(finite) if finite else float("nan")

    @property
    def unreliable(self) -> bool:
        """True when the load rose above the core count at any sampled point (other work competed for the CPUs)."""
        return math.isfinite(self.peak) and self.peak > self.cores

    def describe(self) -> str:
        """One line for a table: the load at start, peak and end, and the flag."""
        flag = "  UNRELIABLE: load above the core count, other work competed" if self.unreliable else ""
        return (f"load average (1 min) start {self.start:.2f}, peak {self.peak:.2f}, end {self.end:.2f} "
                f"on {self.cores} cores{flag}")

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "peak": self.peak, "cores": self.cores,
                "samples": list(self.samples), "unreliable": self.unreliable}


@dataclass(frozen=True)
class Timed:
    """What a mode returns to report the seconds of its own measured part instead of its whole call's (a step
    loop timed inside a child process, say); ``result`` stands for the mode's result."""

    seconds: float
    result: Any = None


@dataclass(frozen=True)
class ModeTiming:
    """Seconds of one mode in every measured round (warm-up excluded), in round order."""

    label: str
    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {"best_s": self.best, "median_s": self.median, "rounds_s": list(self.seconds)}


@dataclass
class Comparison:
    """The outcome of :func:`compare`: each mode's timings, its last result, the rounds and the load."""

    timings: dict[str, ModeTiming]
    results: dict[str, Any]
    rounds: int
    warmup: int
    load: LoadWatch
    repeats: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, label: str) -> ModeTiming:
        if label not in self.timings:
            raise KeyError(f"no mode {label!r}; the modes are {sorted(self.timings)}")
        return self.timings[label]

    def ratio(self, label: str, baseline: str) -> float:
        """Median over rounds of ``seconds(label) / seconds(baseline)`` in the same round (a cost ratio)."""
        a, b = self[label].seconds, self[baseline].seconds
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    def best_ratio(self, label: str, baseline: str) -> float:
        """``best seconds(label) / best seconds(baseline)`` (a cost ratio)."""
        return self[label].best / self[baseline].best

    def to_json(self, baseline: str | None = None) -> dict[str, Any]:
        """Every mode's timings (and, given a baseline, its cost ratios to it), the rounds and the load."""
        modes = {}
        for label, t in self.timings.items():
            modes[label] = {**t.to_json(), "calls_per_sample": self.repeats.get(label, 1)}
            if baseline is not None:
                modes[label].update(ratio_to_baseline=self.ratio(label, baseline),
                                    best_ratio_to_baseline=self.best_ratio(label, baseline))
        return {"baseline": baseline, "rounds": self.rounds, "warmup": self.warmup, "modes": modes,
                "load": self.load.to_json()}


def compare(modes: Mapping[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1, *,
            load: LoadWatch | None = None, clock: Callable[[], float] = time.perf_counter,
            min_seconds: float = 0.0) -> Comparison:
    """Time ``modes`` (label -> zero-argument callable) interleaved in one process.

    Each mode runs ``warmup`` times untimed, then once per round for ``rounds`` rounds; round ``r`` starts at the
    ``r``-th mode (rotated order). A mode returning :class:`Timed` reports its own seconds. ``load`` collects load samples (one is taken after each round; pass one watch to
    several comparisons to flag the whole benchmark). ``clock``: wall time by default; ``time.thread_time`` counts
the CPU time of single-threaded work, unaffected by other processes. ``min_seconds`` (as ``timeit``'s autorange):
    a mode whose warm-up call took less runs that many times over in each timed sample, and its seconds are the
    sample's mean per call, so a millisecond operation is not timed at the clock's and the scheduler's grain.
    Returns each mode's seconds per round (per call) and its last result.
    """
    if not modes:
        raise ValueError("compare needs at least one mode")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be 0 or more, got {warmup}")
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be 0 or more, got {min_seconds}")
    watch = load if load is not None else LoadWatch()
    labels = list(modes)
    results: dict[str, Any] = {}
    repeats = {label: 1 for label in labels}
    for w in range(warmup):
        for label in labels:
            t0 = clock()
            results[label] = modes[label]()
            took = clock() - t0
            if w == warmup - 1 and min_seconds > 0 and not isinstance(results[label], Timed):
                repeats[label] = max(1, math.ceil(min_seconds / max(took, 1e-9)))
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for label in order:
            t0 = clock()
            for _ in range(repeats[label]):
                out = modes[label]()
            elapsed = (clock() - t0) / repeats[label]
            if isinstance(out, Timed):
                elapsed, out = out.seconds, out.result
            results[label] = out
            seconds[label].append(elapsed)
        watch.sample()
    timings = {label: ModeTiming(label, tuple(seconds[label])) for label in labels}
    return Comparison(timings, results, rounds, warmup, watch, repeats)


def table(comparison: Comparison, baseline: str, *, work: float | None = None, unit: str = "tokens/s") -> str:
    """A text table: each mode's best and median seconds, its median paired ratio to ``baseline`` and, given the
    ``work`` one call does (tokens, say), its rate from the median round."""
    head = f"{'mode':<34} {'best s':>9} {'median s':>9} {'cost ratio':>11}"
    if work is not None:
        head += f" {unit:>12}"
    lines = [head]
    for label, t in comparison.timings.items():
        line = f"{label:<34} {t.best:>9.3f} {t.median:>9.3f} {comparison.ratio(label, baseline):>11.3f}"
        if work is not None:
            line += f" {work / t.median:>12.0f}"
        lines.append(line)
    lines.append(f"({comparison.rounds} rounds after {comparison.warmup} warm-up; cost ratio = seconds / seconds of "
                 f"{baseline!r} in the same round, median over rounds)")
    lines.append(comparison.load.describe())
    return "\n".join(lines)


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (so it serialises as strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def emit(payload: Mapping[str, Any]) -> str:
    """Print ``payload`` as one line of strict JSON (the benchmark's last line of output) and return it."""
    line = json.dumps(strict(payload), allow_nan=False)
    print(line, flush=True)
    return line
