"""Benchmark: every discovery method on every ground-truth model (node and edge ROC-AUC, MIB's CPR and CMD, the
faithfulness of the top-k circuit, seconds), against a bare forward pass of each model timed in the same process.

Run: ``.venv/bin/python bench/discovery.py [--models ...] [--methods ...] [--n 32] [--quick]``. Prints the score
table, the mean per method, each method's seconds as a ratio to one bare forward pass over the same examples, the
wall time of the whole benchmark (target: under 15 minutes on two cores) and one JSON object as its last line.
``--quick``: two models (gt-prev-token, gt-induction) and n = 16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit  # noqa: E402


def _forward_seconds(names: list[str], n: int, watch: LoadWatch) -> dict[str, float]:
    """Median seconds of one bare forward pass over each ground truth's clean examples."""
    import torch

    from workbench import ground_truth
    from workbench.models import load_model

    out = {}
    for name in names:
        truth = ground_truth.get(name)
        model = load_model(truth.spec)
        tokens = truth.make_task(model, n=n).clean_tokens

        def forward(model=model, tokens=tokens) -> None:
            with torch.no_grad():
                model(tokens)

        out[name] = compare({"forward": forward}, rounds=5, warmup=1, load=watch, min_seconds=0.2)["forward"].median
    return out


def main() -> None:
    from circuits.benchmark.run import METHODS, benchmark
    from workbench import ground_truth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="ground truths (default all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="default all")
    parser.add_argument("--n", type=int, default=None, help="examples per model (default 32; 16 quick)")
    parser.add_argument("--quick", action="store_true", help="two models, 16 examples")
    args = parser.parse_args()
    names = args.models or (["gt-prev-token", "gt-induction"] if args.quick else ground_truth.names())
    n = args.n or (16 if args.quick else 32)
    watch = LoadWatch()
    start = time.perf_counter()
    out = benchmark(names, args.methods, n=n, progress=True)
    wall = time.perf_counter() - start
    watch.sample()
    forward = _forward_seconds(names, n, watch)
    scores = out["scores"]
    scores["x_forward"] = [r.seconds / forward[r.model] for r in scores.itertuples()]
    cols = ["node_auroc", "edge_auroc", "cpr", "cmd", "f_top_k", "seconds", "x_forward"]
    print(scores[["model", "method", *cols]].round(3).to_string(index=False))
    print("\nmean over models:")
    print(out["means"].round(3).to_string(index=False))
    print(f"\nwhole benchmark: {wall:.1f} s for {len(names)} models x {len(args.methods)} methods "
          f"(target: under 900 s on two cores); {watch.describe()}")
    emit({"bench": "discovery", "models": names, "methods": args.methods, "n": n, "wall_s": wall,
          "scores": scores.to_dict(orient="records"), "means": out["means"].to_dict(orient="records"),
          "truths": out["truths"], "forward_s": forward,
          "ratios": {f"{r.model} {r.method} seconds / forward": r.x_forward for r in scores.itertuples()},
          "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
