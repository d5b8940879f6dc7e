"""Case study: circuit discovery methods on SmolLM2-135M, where no ground truth exists (IOI and greater-than).

For each task (``workbench.data.make_task``, ``--n`` clean/corrupted pairs, seed 0) every method that runs on
SmolLM2 in minutes scores every edge of the whole-component graph (``circuits.edges.graph.EdgeGraph``: 270 heads,
30 MLPs, the embedding and the logits) through the benchmark's own :func:`circuits.benchmark.run.score_method`:
EAP, EAP-IG (5 steps), activation patching, path patching to the logits and CD-T (a node method scores an edge by
the smaller |score| of its ends). ACDC is left out: it runs one edge-masked forward per edge (tens of thousands).
Transcoder paths and attribution graphs are left out too: they need transcoders for all 30 layers of SmolLM2.

Then, per task:

- faithfulness versus circuit size: the top-``k`` edges of each method for each ``--sizes`` k, every other edge
  patched with the corrupted run (:func:`circuits.edges.methods.edge_faithfulness_many`); all circuits of one task
  go through the edge-masked forward stacked along the batch dimension, ``--chunk`` masks per forward;
- the cost of that forward: one mask alone against ``--chunk`` masks stacked, seconds per mask;
- agreement: Jaccard of the top-``--k`` edge sets and of the top-10 heads of every pair of methods;
- the top heads of each method (edge methods: the sum of |score| over a head's edges) and its seconds.

Writes ``discovery_smollm2.md`` next to this script (its "Reading the result" section is kept) and prints one JSON
object. Run: ``nice -n 10 .venv/bin/python case_studies/discovery_smollm2.py --n 8`` (one torch thread: more threads
than free cores slowed EAP fivefold here), or one
task per process (``--tasks ioi --json-out a.json``, ...) and then ``--merge a.json b.json`` to write the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuits.benchmark.run import score_method  # noqa: E402
from circuits.benchmark.scores import jaccard, ranked  # noqa: E402
from circuits.edges.graph import EdgeGraph  # noqa: E402
from circuits.edges.methods import edge_faithfulness_many  # noqa: E402
from workbench.data import make_task  # noqa: E402
from workbench.models import load_model  # noqa: E402

METHODS = ["eap", "eap-ig", "cdt", "activation-patching", "path-patching"]  # cheapest first
READING = "## Reading the result"


def _heads(nodes: dict[str, float], k: int = 10) -> list[str]:
    heads = {c: v for c, v in nodes.items() if c.startswith("L")}
    return sorted(heads, key=lambda c: -abs(heads[c]))[:k]


def study(model, name: str, n: int, sizes: list[int], k: int, chunk: int, budget_s: float) -> dict:
    """Every method on one task: seconds, top heads, faithfulness at each size, agreement, forward cost. A method
    not yet started when ``budget_s`` seconds have passed is skipped (listed under ``skipped``)."""
    task = make_task(name, model.tokenizer, n=n, seed=0)
    graph = EdgeGraph.of(model)
    found, skipped, start = {}, [], time.perf_counter()
    for method in METHODS:
        if time.perf_counter() - start > budget_s:
            skipped.append(method)
            continue
        found[method] = score_method(model, task, method, graph)
        print(f"{name}: {method} {found[method].seconds:.1f} s", file=sys.stderr, flush=True)
    methods = list(found)
    order = {m: ranked(s.edges) for m, s in found.items()}
    # the cost of the edge-masked forward: one mask, then `chunk` masks stacked along the batch dimension
    start = time.perf_counter()
    edge_faithfulness_many(model, task, [order["eap"][:sizes[0]]], chunk=1)
    one = time.perf_counter() - start
    circuits = [order[m][:size] for m in methods for size in sizes]
    start = time.perf_counter()
    f, m_clean, m_empty = edge_faithfulness_many(model, task, circuits, chunk=chunk)
    many = time.perf_counter() - start
    # every call also runs the clean and the all-ablated circuits (2 masks) for its normalisation
    faith = {m: dict(zip(sizes, f[i * len(sizes):(i + 1) * len(sizes)].tolist(), strict=True))
             for i, m in enumerate(methods)}
    agree = {a: {b: jaccard(order[a][:k], order[b][:k]) for b in methods} for a in methods}
    heads = {m: _heads(s.nodes) for m, s in found.items()}
    head_agree = {a: {b: jaccard(heads[a], heads[b]) for b in methods} for a in methods}
    return {"task": name, "n": n, "edges": graph.n_edges, "methods": methods, "skipped": skipped, "metric_clean": m_clean, "metric_ablated": m_empty,
            "seconds": {m: s.seconds for m, s in found.items()}, "faithfulness": faith, "agreement_edges": agree,
            "agreement_heads": head_agree, "top_heads": heads,
            "top_mlps": {m: sorted((c for c in s.nodes if c.startswith("mlp") and s.nodes[c]),
                                   key=lambda c: -abs(s.nodes[c]))[:3] for m, s in found.items()},  # CD-T: none
            "forward": {"one_mask_s": one, "stacked_masks": len(circuits), "chunk": chunk, "stacked_s": many,
                        "stacked_s_per_mask": many / (len(circuits) + 2 * -(-len(circuits) // chunk)),
                        "one_s_per_mask": one / 3}}


def _table(rows: list[list], head: list[str]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def report(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    lines = ["# Circuit discovery on SmolLM2-135M (no ground truth)", "",
             f"Reproduce: `nice -n 10 .venv/bin/python case_studies/discovery_smollm2.py --n {results[0]['n']}` "
             f"(n = {results[0]['n']} pairs per "
             f"task, seed 0, sizes {', '.join(map(str, args.sizes))} edges, agreement at the top {args.k} edges; "
             f"{wall:.0f} s wall on this shared 2-core CPU, torch threads {torch.get_num_threads()}).", "",
             "Methods: EAP, EAP-IG (5 steps), activation patching, path patching to the logits, CD-T, through the "
             "benchmark's `score_method` on the whole-component edge graph. ACDC is not run (one edge-masked forward "
             "per edge); transcoder paths and attribution graphs are not run (they need transcoders for all 30 "
             "layers). Faithfulness F = (m(C) - m(all ablated)) / (m(clean) - m(all ablated)), every edge outside "
             "the top k patched with the corrupted run.", ""]
    for r in results:
        methods = r["methods"]
        lines += [f"## {r['task']} ({r['edges']} edges; m(clean) {r['metric_clean']:.3f}, m(all ablated) "
                  f"{r['metric_ablated']:.3f})", "", "Faithfulness of the top-k edges:", ""]
        lines += _table([[m, f"{r['seconds'][m]:.1f}"] + [f"{r['faithfulness'][m][s]:.3f}" for s in args.sizes]
                         for m in methods], ["method", "seconds"] + [f"k={s}" for s in args.sizes])
        lines += ["", "Top heads (by |score|) and MLPs:", ""]
        lines += _table([[m, ", ".join(r["top_heads"][m]), ", ".join(r["top_mlps"][m]) or "(not scored)"]
                         for m in methods],
                        ["method", "top 10 heads", "top 3 MLPs"])
        lines += ["", f"Agreement, Jaccard of the top-{args.k} edges (upper) / of the top-10 heads (lower):", ""]
        lines += _table([[a] + [f"{(r['agreement_edges'] if i < j else r['agreement_heads'])[a][b]:.2f}"
                                if i != j else "-" for j, b in enumerate(methods)] for i, a in enumerate(methods)],
                        ["", *methods])
        if r["skipped"]:
            lines += ["", f"**Not run** (the time budget of {args.budget_s:.0f} s for the methods was spent): "
                      f"{', '.join(r['skipped'])}."]
        fw = r["forward"]
        lines += ["", f"Edge-masked forward ({r['n']} pairs): one mask {fw['one_s_per_mask']:.2f} s per mask "
                  f"({fw['one_mask_s']:.1f} s for the call with its 2 reference masks); {fw['stacked_masks']} masks "
                  f"stacked {fw['chunk']} per forward: {fw['stacked_s_per_mask']:.2f} s per mask "
                  f"({fw['stacked_s']:.1f} s in all).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 100, 300, 1000, 3000])
    parser.add_argument("--k", type=int, default=100, help="top-k edges compared for agreement")
    parser.add_argument("--chunk", type=int, default=8, help="masks per edge-masked forward")
    parser.add_argument("--tasks", nargs="+", default=["ioi", "greater-than"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="per task: methods not started after this many seconds are skipped")
    parser.add_argument("--json-out", default=None, help="also write the results of these tasks to this JSON file")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="write the report from JSON files of earlier runs (one task each) instead of running")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = [r for part in parts for r in part["results"]]
        for r in results:  # JSON object keys are strings
            r["faithfulness"] = {m: {int(k): v for k, v in f.items()} for m, f in r["faithfulness"].items()}
        wall = max(part["wall_s"] for part in parts)  # the parts ran side by side
    else:
        model = load_model("smollm2-135m", device="cpu")
        results = [study(model, name, args.n, args.sizes, args.k, args.chunk, args.budget_s) for name in args.tasks]
        wall = time.perf_counter() - start
    path = Path(__file__).with_suffix(".md")
    kept = ""
    if path.exists() and READING in path.read_text():
        kept = path.read_text()[path.read_text().index(READING):]
    from workbench.atomic import write_text

    write_text(path, report(results, args, wall) + ("\n" + kept if kept else ""))
    out = {"study": "discovery_smollm2", "wall_s": wall, "results": results}
    if args.json_out:
        write_text(args.json_out, json.dumps(out))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
