"""Case study: the zoo's vision transformers as path ensembles, and their lazy neurons.

Run: ``.venv/bin/python case_studies/vit_paths.py``. Builds the ``vit`` family when it is not built (each member
trains in well under a minute of CPU), runs ``workbench vit`` on every member (all 360 test digits; greedy pruning and
EnsembleScale fitted on the 360 held-out digits) and writes ``case_studies/vit_paths.md``: the path-pruning table and
the sparsity tables across depth, width and activation, each compared with the papers' claims in one sentence
("Revisiting Vision Transformer from the View of Path Ensemble", ICCV 2023; "The Lazy Neuron Phenomenon", ICLR 2023).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuits.vision.analysis import VIT, VitConfig
from workbench import zoo, zoo_vit
from workbench.store import Store

REPORT = Path(__file__).with_suffix(".md")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def member_rows(store: Store) -> list[dict]:
    """One ``vit`` run per member; its summary, tables and config."""
    rows = []
    for name in zoo_vit.family_members():
        zoo.build(name, progress=False)
        info, result = VIT.launch(f"toy/{name}", VitConfig(), store=store, device="cpu")
        cfg = zoo_vit.MEMBERS[name]
        manifest = zoo.manifest(name)
        rows.append({"name": name, "cfg": cfg, "summary": result.summary, "tables": result.tables, "run": info.run_id,
                     "cpu_s": manifest.get("cpu_seconds_last_session")})
    return rows


def pruning_section(rows: list[dict]) -> list[str]:
    md = ["## Path pruning and EnsembleScale (test accuracy, %; chosen on the held-out digits)", "",
          "| member | full | drop longest (2L) | best single drop / truncation (picked on test: an upper bound) | "
          "greedy pruning (dropped) | "
          "EnsembleScale | weights per length | run |", "|---|---:|---:|---|---:|---:|---|---|"]
    raised_longest = raised_greedy = raised_scale = greedy_heldout = 0
    for r in rows:
        s, t = r["summary"], r["tables"]
        w = ", ".join(f"{v:.2f}" for v in t["scales"]["weight"])
        md.append(f"| {r['name']} | {_pct(s['accuracy'])} | {_pct(s['drop_longest_accuracy'])} | {s['best_trim']}: "
                  f"{_pct(s['best_trim_accuracy'])} | {_pct(s['greedy_accuracy'])} ({s['greedy_dropped']}) | "
                  f"{_pct(s['ensemble_scale_accuracy'])} | {w} | `vit/{r['run']}` |")
        raised_longest += s["drop_longest_accuracy"] > s["accuracy"]
        raised_greedy += s["greedy_accuracy"] > s["accuracy"]
        raised_scale += s["ensemble_scale_accuracy"] > s["accuracy"]
        held = t["pruning"].set_index("method")["heldout_accuracy"]
        greedy_heldout += held["greedy pruning (held-out)"] > held["full model"]
    n = len(rows)
    md += ["", f"- Paper: pruning harmful (long) paths raises accuracy. Here: dropping the longest length raised test "
           f"accuracy in {raised_longest} of {n} members, and the greedy pruning chosen on held-out digits raised it "
           f"in {raised_greedy} of {n} (it raised the held-out accuracy it was chosen on in {greedy_heldout} of {n}: "
           "those gains did not carry over to the test digits).",
           f"- Paper: EnsembleScale (one learned scale per path group) raises accuracy. Here: it raised test accuracy "
           f"in {raised_scale} of {n} members.", ""]
    md += ["### Contribution to the true class's logit by path length (mean over test digits)", "",
           "| member | " + " | ".join(f"k={k}" for k in range(9)) + " | share of k = 2, 3 | share of k > L | "
           "effective length |", "|---|" + "---:|" * 12]
    middle, long2, long4 = [], [], []
    for r in rows:
        vals = [abs(v) for v in r["tables"]["lengths"]["true_logit"]]
        L, total = r["cfg"].n_layers, sum(abs(v) for v in r["tables"]["lengths"]["true_logit"])
        mid, share = (vals[2] + vals[3]) / total, sum(vals[L + 1:]) / total
        middle.append(mid)
        (long2 if L == 2 else long4).append(share)
        md.append(f"| {r['name']} | " + " | ".join(f"{v:.2f}" for v in r["tables"]["lengths"]["true_logit"])
                  + " | -" * (9 - len(vals)) + f" | {_pct(mid)}% | {_pct(share)}% | "
                  f"{sum(k * v for k, v in enumerate(vals)) / total:.2f} |")
    md += ["", "- Paper: the classifier reads paths of every length, the short and middle ones carrying most of the "
           f"prediction. Here: lengths 2 and 3 carry {_pct(min(middle))}-{_pct(max(middle))}% of the absolute "
           f"true-class logit in every member; lengths above L carry {_pct(min(long4))}-{_pct(max(long4))}% in the "
           f"4-layer members (and {_pct(min(long2))}-{_pct(max(long2))}% in the 2-layer ones, where L + 1 = 3 is "
           "already a middle length).", ""]
    return md


def sparsity_section(rows: list[dict]) -> list[str]:
    md = ["## Lazy neurons: active MLP neurons per layer (%, all positions of the 360 test digits)", "",
          "'active' is the exact nonzero fraction for ReLU (the paper's metric) and the pre-activation > 0 fraction "
          "for GELU (no exact zeros; |a| > 0.1 in the last column).", "",
          "| member | act | d_model | layers | d_mlp | per layer | mean | dead % | GELU: mean % with abs(a) > 0.1 |",
          "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    means = {}
    for r in rows:
        sp, cfg = r["tables"]["sparsity"], r["cfg"]
        means[r["name"]] = float(sp["active"].mean())
        gelu = _pct(float(sp["above_0.1"].mean())) if cfg.activation == "gelu" else "-"
        md.append(f"| {r['name']} | {cfg.activation} | {cfg.d_model} | {cfg.n_layers} | {cfg.d_mlp} | "
                  f"{', '.join(_pct(v) for v in sp['active'])} | {_pct(means[r['name']])} | "
                  f"{_pct(float(sp['dead'].mean()))} | {gelu} |")

    def pairs(key: str, a: int, b: int) -> list[tuple[str, float, str, float]]:
        """Members that differ only in ``key`` (a -> b): (name, active, twin, twin's active)."""
        other = "d_model" if key == "n_layers" else "n_layers"
        out = []
        for r in rows:
            c = r["cfg"]
            for q in rows:
                t = q["cfg"]
                if (getattr(c, key), getattr(t, key)) == (a, b) and (c.activation, getattr(c, other)) == (
                        t.activation, getattr(t, other)):
                    out.append((r["name"], means[r["name"]], q["name"], means[q["name"]]))
        return out

    deeper = pairs("n_layers", 2, 4)
    wider = pairs("d_model", 32, 64)
    relu = [m for n, m in means.items() if zoo_vit.MEMBERS[n].activation == "relu"]

    def says(found, word):
        sparser = sum(b < a for _, a, _, b in found)
        detail = "; ".join(f"{x} {_pct(a)}% -> {y} {_pct(b)}%" for x, a, y, b in found)
        return f"{sparser} of {len(found)} {word} twins are sparser ({detail})"

    md += ["", f"- Paper: 6.3% of ViT-B/16's MLP activations are nonzero. Here the ReLU members have "
           f"{_pct(min(relu))}-{_pct(max(relu))}% nonzero: far less lazy than ViT-B/16 (tiny models on 8x8 digits).",
           f"- Paper: deeper models are sparser. Here: {says(deeper, 'deeper')}.",
           f"- Paper: wider models are sparser. Here: {says(wider, 'wider')}."]
    gelu = [(g["name"], means[g["name"]], r["name"], means[r["name"]]) for g in rows for r in rows
            if g["cfg"].activation == "gelu" and r["cfg"].activation == "relu"
            and (g["cfg"].d_model, g["cfg"].n_layers) == (r["cfg"].d_model, r["cfg"].n_layers)]
    md.append("- Paper: the sparsity is counted for ReLU-type activations. Here the GELU members' pre-activations are "
              "positive more often than their ReLU twins' (" + "; ".join(f"{g} {_pct(a)}% vs {r} {_pct(b)}%"
                                                                       for g, a, r, b in gelu) + ").")
    lazy = []
    for r in rows:
        active = r["tables"]["sparsity"]["active"].tolist()
        lazy.append(f"{r['name']}: layer {active.index(min(active))} of 0..{len(active) - 1}")
    md += ["- Within a model (the paper reports per-layer sparsity varying with depth), the laziest layer is: "
           + "; ".join(lazy) + ".", ""]
    return md


def main() -> None:
    store = Store()
    rows = member_rows(store)
    fam = pd.DataFrame([{"member": r["name"], "activation": r["cfg"].activation, "d_model": r["cfg"].d_model,
                         "layers": r["cfg"].n_layers, "parameters": r["cfg"].n_parameters(),
                         "test accuracy %": _pct(r["summary"]["accuracy"]),
                         "completeness error": f"{r['summary']['completeness_error']:.1e}",
                         "training CPU s": f"{r['cpu_s']:.1f}" if r["cpu_s"] else "-"} for r in rows])
    md = ["# Vision transformers as path ensembles, and their lazy neurons", "",
          "The zoo's `vit` family (`workbench.zoo_vit`): ViTs with 4x4 patches of scikit-learn's 8x8 digits, a class "
          "token, learned positions, pre-LayerNorm, ReLU or GELU MLPs; 1,077 training, 360 held-out and 360 test "
          "digits. `workbench vit` freezes LayerNorm scales, attention patterns and MLP ratios from the clean run and "
          "splits the class token's logits exactly by path length (0..2L sublayers) with `circuits.paths`' dynamic "
          "programme. Pruned lengths are removed from that sum with the norms frozen; EnsembleScale fits one weight "
          "per length. Written by `case_studies/vit_paths.py`.", "",
          "| " + " | ".join(fam.columns) + " |", "|" + "---|" * len(fam.columns)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in fam.itertuples(index=False)]
    md += [""] + pruning_section(rows) + sparsity_section(rows)
    REPORT.write_text("\n".join(md))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
