"""Benchmark: EAP, EAP-IG (5 steps) and ACDC over the whole edge graph against one bare forward pass, same process.

Run: ``.venv/bin/python bench/edges.py [--model toy/induction-2l] [--n 8] [--rounds 5] [--quick]``. Prints a table of
best and median seconds and each method's cost ratio to the bridge's forward pass on the clean prompts, then one
JSON object as its last line. Also timed: one edge-masked forward with every edge at 1 (what each ACDC try costs).
The modes run interleaved in rounds (:func:`bench.timing.compare`); the load average is recorded and a run whose load
rose above the core count is flagged unreliable. ``--quick``: 4 prompts, 3 rounds. Every timed sample lasts at least
0.5 s (short steps repeat).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy/induction-2l")
    parser.add_argument("--task", default="induction")
    parser.add_argument("--n", type=int, default=None, help="prompts (default 8; 4 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5; 3 with --quick")
    parser.add_argument("--threshold", type=float, default=0.1, help="ACDC threshold (KL)")
    parser.add_argument("--quick", action="store_true", help="smallest settings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    n = args.n or (4 if args.quick else 8)
    rounds = args.rounds or (3 if args.quick else 5)

    from circuits.edges.forward import edge_forward
    from circuits.edges.graph import EdgeGraph
    from circuits.edges.methods import acdc, eap, eap_ig
    from circuits.frozen.weights import model_weights
    from workbench.data import make_task
    from workbench.models import load_model

    watch = LoadWatch()
    model = load_model(args.model, device=args.device)
    task = make_task(args.task, model.tokenizer, n=n, seed=0).to(args.device)
    graph = EdgeGraph.of(model)
    w = model_weights(model)
    modes = {
        "forward": lambda: model(task.clean_tokens),
        "edge forward (all edges)": lambda: edge_forward(w, graph, task.clean_tokens),
        "eap": lambda: eap(model, task),
        "eap-ig (5 steps)": lambda: eap_ig(model, task, steps=5),
        f"acdc (threshold {args.threshold:g})": lambda: acdc(model, task, threshold=args.threshold),
    }
    with torch.no_grad():
        comparison = compare(modes, rounds=rounds, warmup=1, load=watch, min_seconds=0.5)
    ratios = {k: comparison.ratio(k, "forward") for k in comparison.timings if k != "forward"}
    kept = comparison.results[f"acdc (threshold {args.threshold:g})"].kept
    print(f"{args.model}, task {args.task}, {n} prompts of {task.seq_len} tokens, {graph.n_edges} edges, "
          f"torch threads {torch.get_num_threads()}")
    print(table(comparison, "forward"))
    print(f"ACDC kept {len(kept)} of {graph.n_edges} edges")
    emit({"bench": "edges", "model": args.model, "task": args.task, "prompts": n, "tokens": task.seq_len,
          "edges": graph.n_edges, "acdc_kept": len(kept), "threads": torch.get_num_threads(),
          "seconds_median": {k: t.median for k, t in comparison.timings.items()}, "ratios": ratios,
          "ratios_meaning": "seconds / seconds of the bridge's forward pass in the same round, median over rounds",
          "timing": comparison.to_json(baseline="forward"), "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
