"""Case study: lazy neurons across the zoo: MLP sparsity by depth, width, activation function and training time.

Run: ``.venv/bin/python case_studies/lazy_neurons.py [--tokens 4096]``. Uses every GPT-style and Llama-style zoo
member that is built (``workbench zoo list``); it never trains one. For each: a ``sparsity`` run of its final
checkpoint on wiki text (train and held-out splits), and the held-out sparsity at every saved checkpoint.
Writes ``case_studies/lazy_neurons.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from probes.analysis import SPARSITY, SparsityConfig
from probes.sparsity import measure_sparsity
from workbench import zoo
from workbench.data import token_batches
from workbench.models import load_model
from workbench.store import Store

REPORT = Path(__file__).with_suffix(".md")


def _active(stats) -> float:
    """Fraction of active units: exact nonzeros for ReLU, pre-activation > 0 otherwise."""
    return stats.overall_nonzero() if stats.activation == "relu" else float(stats.fraction_pre_positive().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--checkpoint-tokens", type=int, default=2048)
    args = p.parse_args()
    text = [n for n in zoo.names() if n != "induction-2l" and n not in zoo.vision_families()["vit"]]  # ViTs: vit_paths
    members = [n for n in text if zoo.is_built(n)]
    missing = [n for n in text if not zoo.is_built(n)]
    if not members:
        raise SystemExit("no zoo member is built; run `workbench zoo build` first")
    store = Store()
    final_rows, curve_rows = [], []
    for name in members:
        cfg = zoo.manifest(name)["config"]
        info, _ = SPARSITY.launch(f"toy/{name}", SparsityConfig(corpus="wiki", tokens=args.tokens, seq_len=128,
                                                                  batch_size=8), store=store)
        run = store.load("sparsity", info.run_id)
        layers = run.table("layers")
        s = run.summary
        key = "fraction_nonzero" if s["activation"] == "relu" else "fraction_pre_positive"
        per_layer = layers[layers.split == "heldout"][key].tolist()
        final_rows.append(dict(member=name, activation=cfg["activation"] if "activation" in cfg else s["activation"],
                               d_model=cfg["d_model"], layers=cfg["n_layers"], d_mlp=cfg["d_mlp"],
                               train=s[f"{key}_train"], heldout=s[f"{key}_heldout"],
                               per_layer=", ".join(f"{100 * v:.1f}" for v in per_layer),
                               dead=s["dead_neurons_train"], run=info.run_id))
        for step in zoo.checkpoint_steps(name):
            model = load_model(f"toy/{name}@{step}", device="cpu")
            batches = token_batches("wiki", model.tokenizer, seq_len=128, batch_size=8, split="heldout",
                                    max_tokens=args.checkpoint_tokens)
            stats = measure_sparsity(model, batches, max_tokens=args.checkpoint_tokens, progress=False)
            curve_rows.append(dict(member=name, step=step, active=_active(stats),
                                   per_layer=[float(v) for v in (stats.fraction_nonzero() if stats.activation == "relu"
                                                                 else stats.fraction_pre_positive())]))
    final, curves = pd.DataFrame(final_rows), pd.DataFrame(curve_rows)
    lines = ["# Lazy neurons across the zoo", "",
             f"Members measured (built when this ran): {', '.join(members)}."
             + (f" Not built, so not measured: {', '.join(missing)}." if missing else ""), "",
             f"Final checkpoints, {args.tokens} wiki tokens per split. 'active' is the exact % of nonzero MLP "
             "activations for ReLU members and the % of pre-activations > 0 (gate pre-activations for Llama-style "
             "SiLU-gated MLPs) for the others.", "",
             "| member | act | d_model | layers | d_mlp | % active train | % active held-out | per layer (held-out) | dead (train) | run |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for _, r in final.iterrows():
        lines.append(f"| {r.member} | {r.activation} | {r.d_model} | {r.layers} | {r.d_mlp} | {100 * r.train:.2f} | "
                     f"{100 * r.heldout:.2f} | {r.per_layer} | {r.dead} | `sparsity/{r.run}` |")
    lines += ["", f"## Across training (held-out, {args.checkpoint_tokens} tokens per checkpoint, % active)", ""]
    for name, d in curves.groupby("member", sort=False):
        d = d.sort_values("step")
        picks = d.iloc[sorted({0, 1, len(d) // 4, len(d) // 2, 3 * len(d) // 4, len(d) - 1})]
        lines.append(f"- {name}: " + "; ".join(f"step {int(r.step)}: {100 * r.active:.1f}" for _, r in picks.iterrows()))
    REPORT.write_text("\n".join(lines) + "\n")
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
