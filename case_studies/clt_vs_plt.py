"""Case study: a cross-layer transcoder (CLT) against per-layer transcoders (PLT) at matched L0.

Anthropic's "Circuit Tracing" (2025) reports that CLTs reconstruct better than PLTs at the same sparsity and give
attribution graphs with higher replacement scores. Here both are trained on the same harvested activations of a
zoo model (one harvest, the same tokens in the same order, the same recipe: TopK with the same k per layer, the
same width, the same optimiser), the PLT being the CLT trainer with the cross-layer decoders held at zero. Each is
evaluated on held-out wiki text with EVERY MLP replaced at once (spliced loss, CE recovered against zero- and
mean-ablating every MLP, FVU per layer, L0), and attribution graphs of a few prompts are scored with circuit-tracer's
replacement and completeness scores (``circuits.attribution.prune.graph_scores``) and the size of the pruned graph.

Run: ``flock /tmp/workbench-heavy.lock .venv/bin/python case_studies/clt_vs_plt.py [--model toy/llama-d64-l2]
[--tokens 163840] [--ks 4 16]``. Writes one ``clt`` run per trained CLT and PLT and prints markdown tables.
"""

from __future__ import annotations

import argparse
import time

import torch

from circuits.attribution.attribute import attribute
from circuits.attribution.prune import graph_scores, prune
from circuits.attribution.replacement import ReplacementModel, feature_sets_from_clt
from circuits.dictionaries.buffer import TensorBuffer, corpus_source
from circuits.dictionaries.clt_analysis import TRAIN_CLT, TrainCltConfig, clt_result
from circuits.dictionaries.clt_eval import evaluate_clt
from circuits.dictionaries.clt_train import CltSpec, train_clt
from circuits.dictionaries.train import TrainDictConfig
from circuits.frozen.facts import ModelFacts
from workbench.data.tokens import bos_id, encode
from workbench.harvest import harvest
from workbench.models import load_model
from workbench.store import Store

PROMPTS = ["The city was founded in the early years of the", "In 1990 the company moved its headquarters to the",
           "She was born in a small village near the", "The river flows through the north of the",
           "The king and the queen of the", "After the war, the government decided to",
           "The first season of the show was", "He studied music at the university of"]


class _Rows:
    """Harvest consumer keeping every real token's activations of some hooks (a small toy model's)."""

    def __init__(self, hooks: list[str]) -> None:
        self.hooks, self.rows = hooks, {h: [] for h in hooks}

    def consume(self, name: str, act: torch.Tensor, mask: torch.Tensor) -> None:
        self.rows[name].append(act[mask.bool()].float().cpu())


def graph_numbers(model, clt, prompt: str) -> dict[str, float]:
    """Replacement / completeness scores, active features and pruned graph size of one prompt's graph."""
    bos = bos_id(model.tokenizer)
    tokens = torch.tensor(([bos] if bos is not None else []) + encode(model.tokenizer, prompt))
    rm = ReplacementModel(model, tokens, feature_sets_from_clt(clt, ModelFacts.of(model)), dtype=torch.float64)
    graph = attribute(rm, batch_size=128)
    replacement, completeness = graph_scores(graph)
    pruned = prune(graph, 0.8, 0.98)
    kept_features = int(pruned.node_mask[:graph.n_features].sum())
    rows = list(range(graph.n_features)) + list(range(graph.logit_start, graph.n_nodes))
    residual = float((graph.inputs - graph.adjacency.sum(1) - graph.bias)[rows].abs().max())
    return {"replacement": replacement, "completeness": completeness, "active": graph.n_active,
            "kept_features": kept_features, "kept_edges": int(pruned.edge_mask.sum()), "residual": residual}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy/llama-d64-l2")
    p.add_argument("--tokens", type=int, default=163_840)
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    model = load_model(args.model, device=args.device)
    L = int(model.cfg.n_layers)
    hooks = [f"blocks.{i}.ln2.hook_normalized" for i in range(L)] + [f"blocks.{i}.hook_mlp_out" for i in range(L)]
    t0 = time.perf_counter()
    rows = _Rows(hooks)
    source = corpus_source(model.tokenizer, "wiki", seq_len=128, batch_size=8, seed=0)
    harvest(model, source(), [rows], max_tokens=args.tokens, progress=True)
    buffer = TensorBuffer({h: torch.cat(r) for h, r in rows.rows.items()}, batch_size=args.batch_size,
                          block_rows=16_384)
    print(f"harvested {buffer.n} tokens in {time.perf_counter() - t0:.0f} s")
    held = corpus_source(model.tokenizer, "wiki", seq_len=128, batch_size=8, split="heldout", seed=0)
    cfg = TrainDictConfig(tokens=buffer.n // args.batch_size * args.batch_size, batch_size=args.batch_size,
                          lr=args.lr, warmup_steps=20, seed=0)
    table, graphs = [], []
    for k in args.ks:
        for kind, cross in (("CLT", True), ("PLT", False)):
            spec = CltSpec(activation="topk", k=k, expansion=args.expansion, cross_layer=cross)
            trained = train_clt(model, None, spec, cfg, buffer=buffer, progress=True, device=args.device)
            clt = trained.dictionaries["clt"]
            ev = evaluate_clt(model, clt, held, max_tokens=args.eval_tokens, progress=False, device=args.device)
            result = clt_result(model, clt, ev, trained)
            result.params = {"case_study": "clt_vs_plt", "kind": kind, "spec": spec.__dict__}
            info = TRAIN_CLT.save(Store(), result, model, TrainCltConfig(activation="topk", k=k,
                                                                         expansion=args.expansion, tokens=cfg.tokens,
                                                                         batch_size=args.batch_size, lr=args.lr))
            m = ev.metrics
            table.append({"kind": kind, "k": k, "l0": [r["l0"] for r in ev.layers],
                          "fvu": [r["fvu"] for r in ev.layers], "dead": [r["dead_fraction"] for r in ev.layers],
                          "ce_clean": m["ce_clean"], "ce_spliced": m["ce_spliced"], "ce_zero": m["ce_zero_ablated"],
                          "rec0": m["ce_recovered_zero"], "recm": m["ce_recovered_mean"], "kl": m["kl"],
                          "cross": result.summary["cross_layer_share"], "run": info.run_id,
                          "seconds": trained.seconds})
            for prompt in PROMPTS:
                graphs.append({"kind": kind, "k": k, "prompt": prompt, **graph_numbers(model, clt, prompt)})
            print(f"{kind} k={k}: done ({trained.seconds:.0f} s training), run {info.path}")
    print(f"\nmodel {args.model}, {buffer.n} training tokens, {args.eval_tokens} held-out tokens, "
          f"expansion {args.expansion:g}, TopK, every MLP replaced at once\n")
    print("| transcoder | k | L0 per layer | FVU per layer | dead per layer | CE spliced (clean, all-MLP zero) | "
          "CE recovered (zero / mean) | KL | cross-layer norm share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        f = ", ".join(f"{v:.3f}" for v in r["fvu"])
        print(f"| {r['kind']} | {r['k']} | {', '.join(f'{v:.2f}' for v in r['l0'])} | {f} | "
              f"{', '.join(f'{v:.2f}' for v in r['dead'])} | {r['ce_spliced']:.4f} ({r['ce_clean']:.4f}, "
              f"{r['ce_zero']:.4f}) | {r['rec0']:.3f} / {r['recm']:.3f} | {r['kl']:.4f} | {r['cross']:.3f} |")
    print("\n| transcoder | k | prompt | replacement | completeness | active features | pruned features | "
          "pruned edges | max completeness error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g in graphs:
        print(f"| {g['kind']} | {g['k']} | {g['prompt']} | {g['replacement']:.4f} | {g['completeness']:.4f} | "
              f"{g['active']} | {g['kept_features']} | {g['kept_edges']} | {g['residual']:.1e} |")
    print("\n| transcoder | k | mean replacement | mean completeness | mean pruned features | mean pruned edges | "
          "prompts where the CLT's replacement score is higher |")
    print("|---|---|---|---|---|---|---|")
    for k in args.ks:
        by = {kind: [g for g in graphs if g["kind"] == kind and g["k"] == k] for kind in ("CLT", "PLT")}
        wins = sum(a["replacement"] > b["replacement"] for a, b in zip(by["CLT"], by["PLT"], strict=True))
        for kind, gs in by.items():
            print(f"| {kind} | {k} | {sum(g['replacement'] for g in gs) / len(gs):.4f} | "
                  f"{sum(g['completeness'] for g in gs) / len(gs):.4f} | "
                  f"{sum(g['kept_features'] for g in gs) / len(gs):.1f} | "
                  f"{sum(g['kept_edges'] for g in gs) / len(gs):.1f} | "
                  f"{f'{wins} of {len(gs)}' if kind == 'CLT' else ''} |")


if __name__ == "__main__":
    main()
