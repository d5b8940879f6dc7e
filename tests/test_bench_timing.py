"""The benchmarks' timing helper: interleaved rounds recover known cost ratios; load above the cores is flagged."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a folder of scripts, not a package

from bench.memory import PeakMemory  # noqa: E402
from bench.timing import LoadWatch, Timed, compare, emit, strict  # noqa: E402


def test_sleeps_of_known_ratio_are_recovered_within_ten_percent():
    quiet = LoadWatch(reader=lambda: 0.0, cores=2)
    out = compare({"1x": lambda: time.sleep(0.05), "3x": lambda: time.sleep(0.15)}, rounds=5, warmup=1, load=quiet)
    assert abs(out.ratio("3x", "1x") - 3.0) < 0.3
    assert len(out["1x"].seconds) == len(out["3x"].seconds) == 5
    assert not out.load.unreliable


class _NoisyMachine:
    """A clock whose modes cost known units, on a machine that other work slows by a different factor each round.

    Real timings are never asserted in tests: this clock is the load a shared machine puts on a benchmark, made
    repeatable. Every ``slow_every``-th run is a spike: slowed three times more than its neighbours.
    """

    def __init__(self, cost: dict[str, float], seed: int = 0, slow_every: int = 5) -> None:
        import random

        self.rng = random.Random(seed)
        self.cost, self.slow_every, self.now, self.runs = cost, slow_every, 0.0, 0
        self.round_factor = 1.0

    def clock(self) -> float:
        return self.now

    def mode(self, label: str):
        def run() -> str:
            self.runs += 1
            spike = 3.0 if self.runs % self.slow_every == 0 else 1.0
            self.now += self.cost[label] * self.round_factor * spike * self.rng.uniform(0.97, 1.03)
            return label
        return run

    def reader(self) -> float:  # called once per round, after it: the next round meets another load
        self.round_factor = self.rng.uniform(1.0, 2.5)
        return 0.0


def test_the_median_paired_ratio_recovers_known_costs_under_varying_load_and_spikes():
    machine = _NoisyMachine({"1x": 1.0, "3x": 3.0}, seed=1)
    out = compare({"1x": machine.mode("1x"), "3x": machine.mode("3x")}, rounds=7, warmup=1,
                  load=LoadWatch(reader=machine.reader, cores=2), clock=machine.clock)
    assert abs(out.ratio("3x", "1x") - 3.0) < 0.3
    assert len(out["1x"].seconds) == len(out["3x"].seconds) == 7
    # the seconds themselves moved by the load: a plain ratio of means would not be trusted
    assert max(out["1x"].seconds) / min(out["1x"].seconds) > 1.5
    assert out.results == {"1x": "1x", "3x": "3x"} and not out.load.unreliable


def test_the_thread_clock_counts_this_threads_work():
    def spin(n: int) -> int:
        total = 0
        for i in range(n):
            total += i * i
        return total

    # only that the clock is passed through and measures something: real timings are not asserted
    out = compare({"spin": lambda: spin(200_000)}, rounds=2, warmup=0, load=LoadWatch(reader=lambda: 0.0, cores=2),
                  clock=time.thread_time)
    assert all(s > 0 for s in out["spin"].seconds) and out.results["spin"] == spin(200_000)


def test_warmup_is_untimed_and_rounds_rotate_the_order():
    calls: list[str] = []
    ticks = iter(range(1000))
    cost = {"a": 1.0, "b": 4.0}
    now = [0.0]

    def clock() -> float:
        next(ticks)
        return now[0]

    def mode(label: str):
        def run() -> str:
            calls.append(label)
            now[0] += cost[label]
            return label
        return run

    out = compare({"a": mode("a"), "b": mode("b")}, rounds=3, warmup=2, load=LoadWatch(lambda: 0.0, cores=1),
                  clock=clock)
    assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]  # 2 warm-ups, then rounds rotated
    assert out["a"].seconds == (1.0, 1.0, 1.0) and out["b"].seconds == (4.0, 4.0, 4.0)
    assert out.ratio("b", "a") == 4.0 and out.results == {"a": "a", "b": "b"}


def test_short_modes_repeat_to_the_minimum_sample_and_report_seconds_per_call():
    now = [0.0]
    calls = {"short": 0, "long": 0}

    def mode(label: str, cost: float):
        def run() -> str:
            calls[label] += 1
            now[0] += cost
            return label
        return run

    out = compare({"short": mode("short", 0.01), "long": mode("long", 0.5)}, rounds=3, warmup=1,
                  load=LoadWatch(lambda: 0.0, cores=1), clock=lambda: now[0], min_seconds=0.2)
    assert out.repeats == {"short": 20, "long": 1}
    assert calls == {"short": 1 + 3 * 20, "long": 1 + 3}
    assert out["short"].seconds == pytest.approx((0.01,) * 3) and out["long"].seconds == pytest.approx((0.5,) * 3)
    assert out.ratio("long", "short") == pytest.approx(50.0)
    assert out.to_json("short")["modes"]["short"]["calls_per_sample"] == 20
    with pytest.raises(ValueError, match="min_seconds"):
        compare({"x": lambda: None}, min_seconds=-1)


def test_a_mode_may_report_its_own_seconds():
    out = compare({"outer": lambda: Timed(2.5, "inner result"), "plain": lambda: None}, rounds=2, warmup=0,
                  load=LoadWatch(lambda: 0.0, cores=1))
    assert out["outer"].seconds == (2.5, 2.5) and out.results["outer"] == "inner result"
    assert out["plain"].best < 0.1


def test_load_rising_above_the_core_count_is_flagged_in_the_table_and_json():
    readings = iter([0.5, 1.0, 2.5, 1.5])  # start, after round 1, after round 2, after round 3
    out = compare({"x": lambda: None}, rounds=3, warmup=0, load=LoadWatch(reader=lambda: next(readings), cores=2))
    assert out.load.samples == [0.5, 1.0, 2.5, 1.5]
    assert out.load.unreliable and out.load.peak == 2.5 and out.load.start == 0.5 and out.load.end == 1.5
    assert json.loads(emit(out.to_json(baseline="x")))["load"]["unreliable"] is True
    assert "UNRELIABLE" in out.load.describe()


def test_load_at_or_below_the_core_count_is_not_flagged():
    readings = iter([1.0, 2.0, 1.9])
    out = compare({"x": lambda: None}, rounds=2, warmup=0, load=LoadWatch(reader=lambda: next(readings), cores=2))
    assert not out.load.unreliable and "UNRELIABLE" not in out.load.describe()
    assert out.to_json()["load"]["unreliable"] is False


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        compare({"x": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="at least one mode"):
        compare({})
    with pytest.raises(ValueError, match="cores"):
        LoadWatch(reader=lambda: 0.0, cores=0)
    with pytest.raises(KeyError, match="no mode 'y'"):
        compare({"x": lambda: None}, rounds=1, load=LoadWatch(lambda: 0.0, cores=1))["y"]


def test_emitted_json_is_strict():
    payload = {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}
    assert strict(payload) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert json.loads(emit(payload)) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_peak_memory_sees_working_memory_above_its_baseline():
    ballast = bytearray(64 * 2**20)  # held before the block: part of the baseline, not of the working memory
    with PeakMemory(interval=0.001) as mem:
        block = bytearray(96 * 2**20)
        block[:: 4096] = b"\x01" * len(block[:: 4096])  # touch every page so it is resident
        del block
    assert mem.result is not None
    assert 80 <= mem.result.working_mb <= 200
    assert mem.result.baseline_mb >= 64 and math.isfinite(mem.result.peak_mb)
    del ballast
