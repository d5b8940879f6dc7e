"""Benchmark: first paint of every dashboard page in headless Chromium, on the runs stored in the run store.

Run: ``.venv/bin/python bench/app.py [--rounds 3] [--screenshots DIR]`` after ``workbench demo`` has filled the store
(``$WORKBENCH_RUNS``, default ``$WORKBENCH_HOME/runs``). The baseline is a bare Streamlit page (one title) served and
opened the same way in the same process, so the ratio shows what the workbench's pages add. Target: every page's
first paint under 3 s. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from workbench.ui.browser import chromium, page_names, serve, visit


def _bare_app(folder: Path) -> Path:
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    (folder / "Home.py").write_text('import streamlit as st\n\nst.title("Bare page")\nst.write("baseline")\n')
    return folder


def measure(app_dir: Path | None, names: list[str], rounds: int, shots: Path | None) -> dict[str, dict[str, float]]:
    """Median first paint and settle time per page over ``rounds`` visits (the first visit warms the server)."""
    kwargs = {"app_dir": app_dir} if app_dir is not None else {}
    out: dict[str, dict[str, float]] = {}
    with serve(**kwargs) as url:
        driver = chromium()
        try:
            for name in names:
                visit(driver, url, name)  # warm-up: imports and caches on the server
                visits = [visit(driver, url, name) for _ in range(rounds)]
                label = visits[0].name
                out[label] = {
                    "first_paint_s": statistics.median(v.first_paint_s for v in visits),
                    "settled_s": statistics.median(v.settled_s for v in visits),
                    "errors": sum(len(v.errors) + len(v.exceptions) for v in visits),
                }
                if shots is not None:
                    shots.mkdir(parents=True, exist_ok=True)
                    (shots / f"{label}.png").write_bytes(visits[-1].screenshot)
        finally:
            driver.quit()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = measure(_bare_app(Path(tmp)), [""], args.rounds, None)["Home"]
    pages = measure(None, page_names(), args.rounds, args.screenshots)
    print(f"{'page':<18} {'first paint s':>13} {'x bare':>7} {'settled s':>10} {'errors':>6}")
    print(f"{'(bare page)':<18} {bare['first_paint_s']:>13.2f} {1.0:>7.2f} {bare['settled_s']:>10.2f} {0:>6}")
    for name, row in pages.items():
        ratio = row["first_paint_s"] / bare["first_paint_s"]
        print(f"{name:<18} {row['first_paint_s']:>13.2f} {ratio:>7.2f} {row['settled_s']:>10.2f} {row['errors']:>6}")
    worst = max(row["first_paint_s"] for row in pages.values())
    print(json.dumps({"bare": bare, "pages": pages, "worst_first_paint_s": worst, "target_s": 3.0}))


if __name__ == "__main__":
    main()
