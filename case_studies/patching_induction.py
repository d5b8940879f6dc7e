"""Case study: the induction circuit of toy/induction-2l, found by activation and path patching.

Scores every head by activation patching (whole heads and per position), every head's direct path to the logits,
the layer-0 heads' paths into each layer-1 head through its query, key and value separately (which composition
carries the behaviour), then discovers the circuit by path patching and prunes it by faithfulness (mean ablation
over the corrupted prompts). Stores the discovered circuit as a ``patching`` run and writes ``patching_induction.md``;
when ``case_studies/cdt_induction.py`` has stored its CD-T run (kind ``cdt``), the report adds a side-by-side table.

Run: ``.venv/bin/python case_studies/patching_induction.py``
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from circuits.patching import (
    faithfulness,
    head_patching_scores,
    path_patching_scores,
    references,
)
from circuits.patching.analysis import PATCH, PatchConfig
from circuits.patching.path import path_head_scores
from workbench.data import make_task
from workbench.models import load_model
from workbench.store import Store

MODEL = "toy/induction-2l"


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (floats with 3 decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _cdt_side_by_side(store: Store, model, task, path_nodes: list[str], path_f: float) -> list[str]:
    """Rows for every stored CD-T circuit of this model (runs of a kind containing ``cdt``), beside ours."""
    from workbench.circuit import Circuit

    lines = ["| method | run | nodes | faithfulness (mean ablation, this task) |", "|---|---|---|---|",
             f"| path patching | this study | {', '.join(path_nodes)} | {path_f:.3f} |"]
    for kind in [k for k in store.kinds() if "cdt" in k]:
        for info in [r for r in store.list(kind=kind, model=MODEL) if r.ok][:3]:
            run = store.load(kind, info.run_id)
            for name in [a["name"] for a in run.artifacts if a["type"] == "json" and a["name"].startswith("circuit")]:
                try:
                    circuit = Circuit.from_json(run.json(name))
                    nodes = sorted(n for n in circuit if n[0] in "Lm")
                    f = f"{faithfulness(model, task, circuit):.3f}"
                except ValueError as err:  # e.g. positions beyond this task's prompts
                    nodes, f = [], f"n/a ({err})"
                lines.append(f"| CD-T | `{kind}/{info.run_id}` | {', '.join(nodes)} | {f} |")
    if len(lines) == 3:
        lines.append("| CD-T | none stored yet (run `case_studies/cdt_induction.py`, then this script) | | |")
    return lines


def main() -> None:
    store = Store()
    model = load_model(MODEL, device="cpu")
    task = make_task("induction", model.tokenizer, n=8, seed=0, half_len=20)
    refs = references(model, task, "mean")
    t0 = time.perf_counter()
    act = head_patching_scores(model, task, refs=refs)
    act_pos = head_patching_scores(model, task, per_position=True, refs=refs)
    direct = path_head_scores(model, task, refs=refs)
    comp = {}
    for ri in ("q", "k", "v"):
        for receiver in ("L1.H0", "L1.H1"):
            comp[(ri, receiver)] = path_patching_scores(model, task, ["L0.H0", "L0.H1"], [receiver],
                                                       receiver_input=ri, refs=refs).tolist()
    info, _ = PATCH.launch(model, PatchConfig(task="induction", n=8, seed=0, half_len=20,
                                              mode="discover", top_k=2, faithfulness_bound=0.8), store=store)
    seconds = time.perf_counter() - t0
    run = store.load("patching", info.run_id)
    circuit_nodes = [n["id"] for n in run.json("circuit")["nodes"] if n["kind"] in ("head", "mlp")]
    heads = pd.DataFrame(
        [{"head": f"L{layer}.H{h}", "activation patching": float(act[layer, h]),
          "direct path to logits": float(direct[layer, h]),
          "best position": int(act_pos[layer, h].abs().argmax()),
          "score there": float(act_pos[layer, h].flatten()[act_pos[layer, h].abs().argmax()])}
         for layer in range(2) for h in range(2)]
    )
    composition = pd.DataFrame(
        [{"sender": s, "receiver": r, "via": ri, "path score": v[i]}
         for (ri, r), v in comp.items() for i, s in enumerate(["L0.H0", "L0.H1"])]
    )
    md = [
        f"# The induction circuit of {MODEL} by patching",
        "",
        f"Task: {task.description} {task.batch_size} prompts. Ablation: mean over the corrupted prompts at each "
        f"position. Metric clean {refs.clean_metric:.3f}, all heads ablated {info.summary['metric_empty']:.3f}.",
        "Scores are m(clean) - m(patched): how much of the metric the component (or path) carries.",
        "",
        "## Heads",
        "",
        markdown_table(heads),
        "",
        "## Composition: layer-0 heads into layer-1 heads, by the receiver's query, key or value",
        "",
        markdown_table(composition),
        "",
        "## Circuit found by path patching (top 2 per round, pruned while F >= 0.8)",
        "",
        f"Nodes: {', '.join(circuit_nodes)}; faithfulness **{info.summary['faithfulness']:.3f}** "
        f"(recomputed: {faithfulness(model, task, circuit_nodes):.3f}).",
        "",
        "## Side by side with CD-T",
        "",
        *_cdt_side_by_side(store, model, task, circuit_nodes, info.summary["faithfulness"]),
        "",
        f"Stored as run `patching/{info.run_id}`; {seconds:.1f} s on this machine's CPU.",
    ]
    Path(__file__).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
