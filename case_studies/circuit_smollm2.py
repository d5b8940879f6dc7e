"""Case study: an IOI circuit of heads and MLPs in SmolLM2-135M, found by CD-T and by path patching.

Builds the IOI task ("When Mary and John went to the store, John gave a drink to" -> " Mary"; metric
logit(IO) - logit(S); corrupted: the three names replaced by three others), then

1. CD-T discovery over whole heads and whole MLPs (:func:`circuits.cdt.discover`, ``include_mlps=True``): the
   ``top_k`` heads per layer against the output and against the nodes found, every MLP stage, pruned greedily;
2. path-patching discovery over whole heads and MLPs (:func:`circuits.patching.discover`, ``include_mlps=True``),
   ``--path-rounds`` rounds of ``--path-top-k`` senders, pruned greedily;
3. a baseline: the whole model pruned greedily, lowest activation-patching score first (one coarse cut, then one at
   a time);
4. all circuits scored by the same faithfulness (everything outside mean-ablated over the corrupted prompts), on the
   discovery prompts and on held-out prompts (another seed), with diagnostics (all MLPs kept and no heads, all heads
   kept and no MLPs, the whole model less ``mlp0``, all MLPs kept plus each circuit's heads);
5. activation patching of every head and MLP for reference, and the attention of each kept head from the last
   position to the IO name and to the two S names.

Writes ``circuit_smollm2.md`` next to this script (keeping its "Reading the result" section) and stores a ``case-circuit-smollm2`` run (both circuits, the
activation patching scores, the attention table).

Run: ``flock /tmp/workbench-heavy.lock nice -n 5 .venv/bin/python case_studies/circuit_smollm2.py``
(about a quarter of an hour on two shared CPU cores with one torch thread).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from circuits import cdt
from circuits.patching import (
    discover,
    faithfulness_many,
    head_patching_scores,
    layer_patching_scores,
    prune_greedy,
    references,
)
from workbench.circuit import Circuit
from workbench.data import make_task
from workbench.models import load_model
from workbench.store import Store

MODEL = "smollm2-135m"
READING = "## Reading the result"


def _order(node: str) -> tuple[int, int]:
    if node.startswith("mlp"):
        return int(node[3:]), 99
    layer, head = node[1:].split(".H")
    return int(layer), int(head)


def _split(circuit: Circuit) -> tuple[list[str], list[str]]:
    """(heads, MLPs) of a circuit, in layer order."""
    nodes = sorted((n for n, d in circuit.graph.nodes(data=True) if d.get("kind") in ("head", "mlp")), key=_order)
    return [n for n in nodes if not n.startswith("mlp")], [n for n in nodes if n.startswith("mlp")]


def _attention(model, task, heads: list[str]) -> pd.DataFrame:
    """Mean attention of each head from the answer position to the IO token, the first S and the second S."""
    tokens = task.clean_tokens
    layers = sorted({_order(h)[0] for h in heads})
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in layers}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    rows = []
    for head in heads:
        layer, h = _order(head)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, h]  # [batch, q, k]
        io, s1, s2 = [], [], []
        for b in range(tokens.shape[0]):
            q = int(task.answer_positions[b])
            io_pos = (tokens[b] == task.correct[b]).nonzero().flatten()
            s_pos = (tokens[b] == task.incorrect[b]).nonzero().flatten()
            io.append(float(pattern[b, q, io_pos].sum()))
            s1.append(float(pattern[b, q, s_pos[0]]) if len(s_pos) else float("nan"))
            s2.append(float(pattern[b, q, s_pos[1:]].sum()) if len(s_pos) > 1 else float("nan"))
        rows.append({"head": head, "to_IO": sum(io) / len(io), "to_S1": sum(s1) / len(s1), "to_S2": sum(s2) / len(s2)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--bound", type=float, default=0.8)
    parser.add_argument("--cdt-top-k", type=int, default=3, help="CD-T heads kept per layer and per ranking")
    parser.add_argument("--path-top-k", type=int, default=8, help="path patching senders kept per round")
    parser.add_argument("--path-rounds", type=int, default=3, help="path patching rounds (each scores every sender)")
    parser.add_argument("--batch", type=int, default=8, help="pruning trials per batched pass")
    parser.add_argument("--coarse", type=int, default=10, help="coarse cuts before the baseline's greedy pruning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = Store()
    model = load_model(MODEL, device=args.device)
    device = next(model.parameters()).device
    task = make_task("ioi", model.tokenizer, n=args.n, seed=0).to(device)
    held = make_task("ioi", model.tokenizer, n=args.n, seed=1).to(device)
    refs, held_refs = references(model, task, "mean"), references(model, held, "mean")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rows: list[tuple[str, Circuit, float]] = []

    t0 = time.perf_counter()
    c_cdt = cdt.discover(model, task, top_k=args.cdt_top_k, faithfulness_bound=args.bound, per_position=False,
                         include_mlps=True, ablation="mean", prune_batch=args.batch, progress=True)
    rows.append(("CD-T", c_cdt, time.perf_counter() - t0))
    t0 = time.perf_counter()
    c_path = discover(model, task, top_k=args.path_top_k, include_mlps=True, ablation="mean",
                      faithfulness_bound=args.bound, max_rounds=args.path_rounds, prune_batch=args.batch, progress=True)
    rows.append(("path patching", c_path, time.perf_counter() - t0))

    t0 = time.perf_counter()
    act_heads = head_patching_scores(model, task, refs=refs)  # [L, H]
    act_mlps = layer_patching_scores(model, task, "mlp", per_position=False, refs=refs)  # [L]
    t_act = time.perf_counter() - t0
    act = {f"L{layer}.H{h}": float(act_heads[layer, h]) for layer in range(L) for h in range(H)}
    act |= {f"mlp{layer}": float(act_mlps[layer]) for layer in range(L)}
    top_act = sorted(act, key=lambda n: -act[n])[:12]
    all_heads = [f"L{layer}.H{h}" for layer in range(L) for h in range(H)]
    all_mlps = [f"mlp{layer}" for layer in range(L)]
    # baseline: the whole model pruned greedily, lowest activation-patching score first (one coarse cut, then greedy)
    t0 = time.perf_counter()
    kept, _, scored = prune_greedy(model, task, all_heads + all_mlps, sorted(act, key=lambda n: act[n]),
                                   bound=args.bound, refs=refs, batch=args.batch, coarse=args.coarse, progress=True)
    c_act = Circuit("activation patching + pruning", {"method": "activation patching", "faithfulness_before_pruning": 1.0,
                                                      "n_found": len(act), "prune_scored": scored})
    for node in kept:
        c_act.add_node(node, score=act[node])
    rows.append(("activation patching", c_act, t_act + time.perf_counter() - t0))
    diagnostics = {
        "all MLPs, no heads": all_mlps,
        "all heads, no MLPs": all_heads,
        "whole model less mlp0": all_heads + all_mlps[1:],
        "mlp0 alone": ["mlp0"],
    }
    for name, circuit, _ in rows:
        diagnostics[f"all MLPs + the {name} heads"] = all_mlps + _split(circuit)[0]
    f_diag, _, _ = faithfulness_many(model, task, list(diagnostics.values()), refs=refs)
    circuits = [list(c.graph.nodes) for _, c, _ in rows]
    f_now, m_full, m_empty = faithfulness_many(model, task, circuits, refs=refs)
    f_held, held_full, held_empty = faithfulness_many(model, held, circuits, refs=held_refs)

    table = ["| method | seconds | heads | MLPs | F before pruning | F | F held-out | nodes before pruning |",
             "|---|---|---|---|---|---|---|---|"]
    details = []
    for i, (name, circuit, seconds) in enumerate(rows):
        heads, mlps = _split(circuit)
        meta = circuit.metadata
        before = meta.get("faithfulness_before_pruning", meta.get("faithfulness_unpruned"))
        n_before = meta.get("n_found", meta.get("nodes_unpruned"))
        table.append(f"| {name} | {seconds:.0f} | {len(heads)} | {len(mlps)} | {before:.3f} | {float(f_now[i]):.3f} | "
                     f"{float(f_held[i]):.3f} | {n_before} |")
        details.append(f"- {name}: heads {', '.join(heads) or 'none'}; MLPs {', '.join(mlps) or 'none'} "
                       f"({meta.get('prune_scored')} circuits scored while pruning).")
    sets = [set(_split(c)[0]) | set(_split(c)[1]) for _, c, _ in rows]
    shared = sorted(sets[0] & sets[1], key=_order)
    union = sets[0] | sets[1]
    overlap = [f"| {a} | {b} | {len(sa & sb)} | {len(sa | sb)} | {', '.join(sorted(sa & sb, key=_order))} |"
               for i, (a, _, _) in enumerate(rows) for j, (b, _, _) in enumerate(rows) if i < j
               for sa, sb in [(sets[i], sets[j])]]
    kept_heads = sorted({h for _, c, _ in rows for h in _split(c)[0]}, key=_order)
    attention = _attention(model, task, kept_heads)
    attention["activation_patching"] = [act[h] for h in attention["head"]]
    attention["in"] = [", ".join(n for (n, _, _), s in zip(rows, sets, strict=True) if h in s) for h in attention["head"]]

    with store.create("case-circuit-smollm2", model=MODEL, params=vars(args)) as w:
        for name, circuit, _ in rows:
            w.save_json("circuit_" + name.replace(" ", "_").replace("-", "").lower(), circuit.to_json())
        w.save_tensors("activation_patching", {"heads": act_heads.float().cpu(), "mlps": act_mlps.float().cpu()})
        w.save_table("attention", attention)
        w.summary.update({name: {"faithfulness": float(f_now[i]), "faithfulness_held_out": float(f_held[i]),
                                 "heads": len(_split(c)[0]), "mlps": len(_split(c)[1]), "seconds": s}
                          for i, (name, c, s) in enumerate(rows)})
        w.summary["diagnostics"] = {k: float(v) for k, v in zip(diagnostics, f_diag, strict=True)}
    att_lines = ["| head | in | attn to IO | attn to S1 | attn to S2 | activation patching |", "|---|---|---|---|---|---|"]
    att_lines += [f"| {r['head']} | {r['in']} | {r.to_IO:.2f} | {r.to_S1:.2f} | {r.to_S2:.2f} | "
                  f"{r.activation_patching:.3f} |" for _, r in attention.iterrows()]
    md = [
        f"# An IOI circuit of heads and MLPs in {MODEL}",
        "",
        f"Task: {task.description} {task.batch_size} prompts, e.g. {task.prompts[0]!r}; held-out: {held.batch_size} "
        f"prompts of seed 1, e.g. {held.prompts[0]!r}.",
        f"Metric clean {m_full:.3f}; with every head and MLP mean-ablated {m_empty:.3f} (held-out: {held_full:.3f} and "
        f"{held_empty:.3f}). Faithfulness F = (m(C) - m(empty)) / (m(M) - m(empty)), every head and MLP outside the "
        f"circuit mean-ablated over the corrupted prompts. Candidates: {L * H} whole heads and {L} whole MLPs; pruning "
        f"bound {args.bound}, weakest first.",
        "",
        f"CD-T: `cdt.discover(top_k={args.cdt_top_k}, per_position=False, include_mlps=True)`. Path patching: "
        f"`patching.discover(top_k={args.path_top_k}, include_mlps=True, max_rounds={args.path_rounds})`. Seconds "
        f"include pruning (up to {args.batch} trials per batched pass); {args.threads} torch thread(s), {device}, "
        f"torch {torch.__version__}.",
        "",
        *table,
        "",
        *details,
        "",
        f"In both discovered circuits (CD-T and path patching): {', '.join(shared) or 'none'} ({len(shared)} of "
        f"{len(union)} nodes in either).",
        "",
        "| circuit | circuit | shared nodes | nodes in either | shared |",
        "|---|---|---|---|---|",
        *overlap,
        "",
        "Faithfulness of reference circuits (discovery prompts):",
        "",
        "| circuit | F |",
        "|---|---|",
        *[f"| {k} | {float(v):.3f} |" for k, v in zip(diagnostics, f_diag, strict=True)],
        "",
        f"Top 12 components by activation patching (mean ablation of one component, {t_act:.0f} s): "
        + ", ".join(f"{n} ({act[n]:.2f})" for n in top_act) + ".",
        "",
        "Attention of the kept heads from the last position (mean over the prompts):",
        "",
        *att_lines,
        "",
        f"Run: `case-circuit-smollm2/{w.info.run_id}`.",
    ]
    out = Path(__file__).with_suffix(".md")
    old = out.read_text() if out.exists() else ""
    reading = old[old.index(READING):] if READING in old else ""  # the written reading survives a rerun
    out.write_text("\n".join(md) + "\n" + ("\n" + reading if reading else ""))
    print("\n".join(md))


if __name__ == "__main__":
    main()
