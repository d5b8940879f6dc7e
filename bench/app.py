"""Benchmark: first paint of every dashboard page in headless Chromium, on the runs stored in the run store.

Run: ``.venv/bin/python bench/app.py [--rounds 8] [--screenshots DIR] [--quick]`` after ``workbench demo`` has filled
the store (``$WORKBENCH_RUNS``, default ``$WORKBENCH_HOME/runs``). The baseline is a bare Streamlit page (one title)
served the same way by a second server beside the dashboard's, and opened by the same browser in the same process:
each round visits the bare page and every dashboard page in turn (:func:`bench.timing.compare`, order rotated each
round), after one warm-up visit of each (imports and caches on the servers), so the ratio (first paint over the bare
page's in the same round, median over rounds) shows what the workbench's pages add. Target: every page's first paint
under 3 s. The load average is recorded and a run whose load rose above the core count is flagged unreliable.
Prints a table and, last, one JSON line (with the reason, where no browser is installed). ``--quick``: 3 rounds.

``--cold``: what ``make app`` costs a new user after the install: on a fresh ``$WORKBENCH_HOME`` (a temporary folder),
``workbench app --demos`` is started and timed until its Home page has painted in the browser (target: under 60 s on
two cores); the demos go on computing behind it and the bench then stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, Timed, compare, emit  # noqa: E402
from workbench.ui.browser import (  # noqa: E402
    browser_missing,
    chromium,
    page_names,
    serve_process,
    visit,
    wait_healthy,
)

BARE = "(bare page)"


def _bare_app(folder: Path) -> Path:
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    (folder / "Home.py").write_text('import streamlit as st\n\nst.title("Bare page")\nst.write("baseline")\n')
    return folder


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[r] / b[r]`` (a cost ratio of two modes measured in the same rounds)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def measure(names: list[str], rounds: int, shots: Path | None, watch: LoadWatch):
    """Interleaved visits of the bare page and of every page in ``names``; the comparison (first paint seconds per
    round), every visit per page, and the server CPU seconds of every visit per page (warm-ups excluded)."""
    visits: dict[str, list] = {}
    cpu: dict[str, list[float]] = {}
    with (tempfile.TemporaryDirectory() as tmp, serve_process(app_dir=_bare_app(Path(tmp))) as (bare_url, bare_proc),
          serve_process() as (url, proc)):
        driver = chromium()
        try:
            def page(base: str, pid: int, name: str, label: str):
                def run() -> Timed:
                    before = cpu_seconds(pid)
                    v = visit(driver, base, name)
                    cpu.setdefault(label, []).append(cpu_seconds(pid) - before)
                    visits.setdefault(label, []).append(v)
                    return Timed(v.first_paint_s, v)
                return run

            modes = {BARE: page(bare_url, bare_proc.pid, "", BARE)}
            for name in names:
                modes[name or "Home"] = page(url, proc.pid, name, name or "Home")
            comparison = compare(modes, rounds=rounds, warmup=1, load=watch)
        finally:
            driver.quit()
    timed = {label: vs[1:] for label, vs in visits.items()}  # the first visit of each was the warm-up
    cpu = {label: cs[1:] for label, cs in cpu.items()}
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        for label, vs in timed.items():
            if label != BARE:
                (shots / f"{label}.png").write_bytes(vs[-1].screenshot)
    return comparison, timed, cpu


def cold_start(timeout: float = 300.0) -> dict:
    """Seconds from starting ``workbench app --demos`` on a fresh home to the health check answering and to the Home
    page's first paint in Chromium."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_RUNS"} | {"WORKBENCH_HOME": home}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "app", "--demos", "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, time.monotonic() + timeout)
            health = time.perf_counter() - t0
            driver = chromium()
            try:
                seen = visit(driver, url, "")
            finally:
                driver.quit()
            page = health + seen.first_paint_s
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return {"health_s": health, "first_page_s": page, "target_s": 60.0, "met": page < 60.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 8 (3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: 3 rounds")
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--cold", action="store_true", help="time `workbench app --demos` on a fresh home to its "
                                                            "first page instead")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    watch = LoadWatch()
    missing = browser_missing()
    if missing:
        print(f"note: not run: {missing}")
        emit({"bench": "app", "skipped": missing, "load": watch.to_json(), "unreliable": watch.unreliable})
        return
    if args.cold:
        result = cold_start()
        print(f"workbench app --demos on a fresh home: health check after {result['health_s']:.1f} s, Home page painted "
              f"after {result['first_page_s']:.1f} s (target {result['target_s']:.0f} s)")
        print(watch.describe())
        emit({"bench": "app-cold-start", **result, "load": watch.to_json(), "unreliable": watch.unreliable})
        return
    comparison, visits, cpu = measure(page_names(), rounds, args.screenshots, watch)
    pages = {}
    print(f"{'page':<18} {'server cpu s':>12} {'x bare':>7} {'first paint s':>13} {'x bare':>7} {'settled s':>10} "
          f"{'errors':>6}")
    for label, t in comparison.timings.items():
        row = {"server_cpu_s": statistics.median(cpu[label]), "server_cpu_rounds_s": cpu[label],
               "server_cpu_ratio_to_bare": paired_ratio(cpu[label], cpu[BARE]),
               "first_paint_s": t.median, "first_paint_best_s": t.best, "rounds_s": list(t.seconds),
               "first_paint_ratio_to_bare": comparison.ratio(label, BARE),
               "settled_s": statistics.median(v.settled_s for v in visits[label]),
               "errors": sum(len(v.errors) + len(v.exceptions) for v in visits[label])}
        print(f"{label:<18} {row['server_cpu_s']:>12.3f} {row['server_cpu_ratio_to_bare']:>7.2f} "
              f"{row['first_paint_s']:>13.2f} {row['first_paint_ratio_to_bare']:>7.2f} {row['settled_s']:>10.2f} "
              f"{row['errors']:>6}")
        pages[label] = row
    bare = pages.pop(BARE)
    print(f"(medians of {rounds} interleaved rounds after a warm-up visit; x bare: over the bare page's in the same "
          "round, median over rounds; server cpu: the Streamlit process's CPU seconds per visit)")
    print(watch.describe())
    worst = max(row["first_paint_s"] for row in pages.values())
    emit({"bench": "app", "bare": bare, "pages": pages,
          "ratios": {k: r["server_cpu_ratio_to_bare"] for k, r in pages.items()},
          "ratios_meaning": "server CPU seconds of one visit / the bare page's in the same round, median over rounds",
          "first_paint_ratios": {k: r["first_paint_ratio_to_bare"] for k, r in pages.items()},
          "worst_first_paint_s": worst, "target_s": 3.0, "met": worst < 3.0, "rounds": rounds,
          "load": watch.to_json(), "unreliable": watch.unreliable})

if __name__ == "__main__":
    main()
