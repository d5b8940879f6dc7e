"""Case study: the induction circuit of toy/induction-2l found by contextual decomposition (CD-T).

1. Relevance of every head at every position to the induction task's metric (mean log-probability over the repeated
   half), under this project's default rules and under the published ones, against activation patching (Spearman).
2. The iterative CD-T discovery on the task's single-position logit difference (the last position), with the faithfulness
   of the pruned circuit measured by mean ablation; the heads it holds against the heads found from attention patterns.
3. The same discovery on the whole-sequence log-probability metric (a circuit that has to cover every scored position).

Stores the runs (kind ``cdt``) and writes ``cdt_induction.md`` next to this script.

Run: ``.venv/bin/python case_studies/cdt_induction.py``
"""

from __future__ import annotations

import time
from pathlib import Path

from scipy.stats import spearmanr

from circuits.cdt import Rules, discover, head_scores
from circuits.cdt.analysis import CDT, CdtConfig
from circuits.patching import head_patching_scores
from workbench.data import make_task
from workbench.induction_toy import induction_head_scores, previous_token_scores
from workbench.models import load_model
from workbench.store import Store

MODEL = "toy/induction-2l"
HALF = 24


def main() -> None:
    model = load_model(MODEL, device="cpu")
    task = make_task("induction", model.tokenizer, n=8, seed=0, half_len=HALF)
    lines = [f"# The induction circuit of {MODEL} by CD-T", "",
             f"Task: induction, 8 examples, half length {HALF} (rows of {task.seq_len} tokens: 2 layers x 2 heads x "
             f"{task.seq_len} positions = {4 * task.seq_len} head-position nodes). Mean ablation over the corrupted "
             "prompts throughout.", ""]

    _, cache = model.run_with_cache(make_task("induction", model.tokenizer, n=16, seed=7, half_len=HALF).clean_tokens,
                                    names_filter=lambda n: n.endswith("hook_pattern"))
    prev = previous_token_scores(cache["blocks.0.attn.hook_pattern"]).tolist()
    ind = induction_head_scores(cache["blocks.1.attn.hook_pattern"], HALF).tolist()
    lines += ["## Heads from attention patterns", "",
              f"- previous-token score, layer 0: {[round(x, 3) for x in prev]}",
              f"- induction score, layer 1: {[round(x, 3) for x in ind]}", ""]

    t0 = time.perf_counter()
    patching = head_patching_scores(model, task, per_position=True)
    t_patch = time.perf_counter() - t0
    lines += ["## Head relevance against activation patching (metric: mean log-prob over the repeated half)", "",
              "| rules | per-head scores [L0.H0, L0.H1, L1.H0, L1.H1] | Spearman over head-positions | seconds |",
              "|---|---|---|---|",
              f"| activation patching | {[round(x, 3) for x in patching.sum(-1).flatten().tolist()]} | 1 | {t_patch:.1f} |"]
    variants = {"default (ablated attention, no sign rule)": Rules(), "published (own pattern, sign rule)":
                Rules.published(), "fixed total pattern, no sign rule": Rules(attention="total")}
    for name, rules in variants.items():
        t0 = time.perf_counter()
        scores = head_scores(model, task, per_position=True, **rules.to_dict())
        rho = spearmanr(scores.flatten().numpy(), patching.flatten().numpy())[0]
        lines.append(f"| {name} | {[round(x, 3) for x in scores.sum(-1).flatten().tolist()]} | {rho:.3f} | "
                     f"{time.perf_counter() - t0:.1f} |")
    lines.append("")

    store = Store()
    cfg = CdtConfig(task="induction", n=8, seed=0, half_len=HALF, metric="logit_diff", top_k=5, discover=True,
                    faithfulness_bound=0.8)
    info, result = CDT.launch(model, cfg, store=store)
    circuit = result.graphs["circuit"].to_json()
    nodes = [(n["id"], round(n["score"], 3), round(n["relevance_to_found"], 3)) for n in circuit["nodes"]
             if n["kind"] == "head"]
    lines += ["## Discovery on the last position's logit difference", "",
              f"top_k 5 per round, faithfulness bound 0.8: rounds kept {circuit['metadata']['rounds']} nodes, "
              f"F before pruning {circuit['metadata']['faithfulness_before_pruning']:.3f}; after pruning "
              f"**{circuit['metadata']['n_nodes']} of {circuit['metadata']['n_candidates']} nodes, F = "
              f"{circuit['metadata']['faithfulness']:.3f}**.", "",
              "| node | beta part of the logit difference | relevance to later nodes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in nodes]
    lines += ["", f"Stored as run `cdt/{info.run_id}`.", ""]

    circuit_lp = discover(model, task, top_k=30, faithfulness_bound=0.8)
    lines += ["## Discovery on the whole-sequence log-probability", "",
              f"top_k 30: F before pruning {circuit_lp.metadata['faithfulness_before_pruning']:.3f}, after pruning "
              f"{circuit_lp.metadata['faithfulness']:.3f} with {circuit_lp.metadata['n_nodes']} of "
              f"{circuit_lp.metadata['n_candidates']} nodes; heads {circuit_lp.heads()}.", ""]
    Path(__file__).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
