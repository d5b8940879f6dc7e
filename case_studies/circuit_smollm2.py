"""Case study: an IOI circuit in SmolLM2-135M, found by path patching and (when available) by CD-T.

Builds the IOI task ("When Mary and John went to the store, John gave a drink to" -> " Mary"; metric
logit(IO) - logit(S)), discovers a circuit of whole attention heads by path patching (top-k per round against the
logits, then against the heads found last, down to layer 0; pruned greedily while the faithfulness stays at or
above the bound; mean ablation over the ABC-corrupted prompts) and stores it as a ``patching`` run. When
``circuits.cdt`` is importable, it also runs CD-T's discovery with the same budget and scores both circuits with the
same faithfulness function. Writes ``circuit_smollm2.md`` next to this script and stores a ``case-circuit-smollm2``
run with both circuits.

Run: ``.venv/bin/python case_studies/circuit_smollm2.py [--n 8] [--top-k 3] [--bound 0.8]``
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from circuits.graph import Circuit
from circuits.patching import faithfulness, head_patching_scores, references
from circuits.patching.runs import patching_run
from workbench.data import make_task
from workbench.models import load_model
from workbench.store import Store

MODEL = "smollm2-135m"


def _heads(circuit: Circuit) -> list[str]:
    return sorted((n for n in circuit if circuit.graph.nodes[n].get("kind") in ("head", "mlp")),
                  key=lambda n: (circuit.graph.nodes[n]["layer"], circuit.graph.nodes[n].get("head") or 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--bound", type=float, default=0.8)
    parser.add_argument("--max-rounds", type=int, default=None, help="cap on discovery rounds (default: down to layer 0)")
    parser.add_argument("--no-cdt", action="store_true", help="path patching only")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    store = Store()
    model = load_model(MODEL, device=args.device)
    task = make_task("ioi", model.tokenizer, n=args.n, seed=0).to(next(model.parameters()).device)
    refs = references(model, task, "mean")
    rows = []
    t0 = time.perf_counter()
    info = patching_run(store, model, MODEL, task, mode="discover", top_k=args.top_k,
                        min_faithfulness=args.bound, max_rounds=args.max_rounds, params={"seed": 0, "case_study": "circuit_smollm2"}, progress=True)
    t_path = time.perf_counter() - t0
    path_circuit = Circuit.from_json(store.load("patching", info.run_id).json("circuit"))
    rows.append(("path patching", path_circuit, t_path))
    if not args.no_cdt and importlib.util.find_spec("circuits.cdt") is not None:
        from circuits import cdt

        t0 = time.perf_counter()
        cdt_circuit = cdt.discover(model, task, top_k=args.top_k, faithfulness_bound=args.bound, per_position=False,
                                   ablation="mean", progress=True)
        rows.append(("CD-T", cdt_circuit, time.perf_counter() - t0))
    act = head_patching_scores(model, task, refs=refs)
    top_act = [f"L{i // act.shape[1]}.H{i % act.shape[1]}" for i in act.flatten().argsort(descending=True)[:10].tolist()]
    table = ["| method | heads | faithfulness | unpruned F | seconds |", "|---|---|---|---|---|"]
    for name, circuit, seconds in rows:
        nodes = _heads(circuit)
        f = faithfulness(model, task, circuit)
        unpruned = circuit.metadata.get("faithfulness_unpruned")
        table.append(f"| {name} | {len(nodes)}: {', '.join(nodes)} | {f:.3f} | "
                     f"{'' if unpruned is None else f'{unpruned:.3f}'} | {seconds:.0f} |")
    shared = set(_heads(rows[0][1]))
    for _, c, _ in rows[1:]:
        shared &= set(_heads(c))
    with store.create("case-circuit-smollm2", model=MODEL, params=vars(args)) as w:
        for name, circuit, _ in rows:
            w.save_json("circuit_" + name.replace(" ", "_").replace("-", "").lower(), circuit.to_json())
        w.summary.update({name: {"faithfulness": faithfulness(model, task, c), "nodes": len(_heads(c))}
                          for name, c, _ in rows})
    md = [
        f"# An IOI circuit in {MODEL}",
        "",
        f"Task: {task.description} {task.batch_size} prompts, e.g. {task.prompts[0]!r}.",
        f"Metric clean {refs.clean_metric:.3f}; with every head and MLP mean-ablated "
        f"{info.summary['metric_empty']:.3f}. Faithfulness F = (m(C) - m(empty)) / (m(M) - m(empty)), everything "
        "outside the circuit (heads and MLPs) mean-ablated over the corrupted prompts.",
        "",
        *table,
        "",
        f"Heads in every circuit: {', '.join(sorted(shared)) or 'none'}.",
        f"Top 10 heads by activation patching (mean ablation), for reference: {', '.join(top_act)}.",
        "",
        f"Runs: `patching/{info.run_id}`, `case-circuit-smollm2/{w.info.run_id}`. Device: "
        f"{next(model.parameters()).device}; torch {torch.__version__}.",
    ]
    Path(__file__).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
