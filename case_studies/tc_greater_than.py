"""Case study: a transcoder circuit for greater-than on SmolLM2-135M.

"The war lasted from the year 1729 to the year 17" -> the tens digit of a later year. The script

1. ranks every MLP by its direct contribution to the logit difference (right tens digit minus the start year's own)
   with attention patterns and norm scales frozen, averaged over prompts, and picks the strongest layers;
2. trains a TopK transcoder for each picked layer on the bundled wiki text (``circuits.dictionaries``), cached in
   ``--cache`` so a rerun skips the training;
3. measures the task's probability difference clean and with the MLPs spliced (each layer alone and all together);
4. runs the greedy path search through the transcoders from the logit difference of one prompt and stores a
   ``tc-circuit`` run (circuit, path table, contributions; the summary holds the probability differences).

Run: ``flock /tmp/workbench-heavy.lock nice -n 5 .venv/bin/python case_studies/tc_greater_than.py``
(about 10-20 minutes on two idle CPU cores, most of it harvesting activations for the transcoders).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from circuits.dictionaries.buffer import corpus_source
from circuits.dictionaries.saelens_io import load_dictionary, save_dictionary
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries
from circuits.transcoder_paths.analysis import TC_CIRCUIT, TcCircuitConfig, to_result
from circuits.transcoder_paths.circuit import metric_clean_vs_spliced, tc_circuit
from circuits.transcoder_paths.contributions import direct_contributions, logit_target
from circuits.transcoder_paths.frozen import freeze
from workbench.data.tasks import make_task
from workbench.models import load_model
from workbench.paths import workbench_home
from workbench.store import Store


def mlp_direct_effects(model, task, n_prompts: int) -> pd.DataFrame:
    """Mean direct contribution of each MLP to the task's logit difference (frozen patterns and scales)."""
    rows = []
    for i in range(min(n_prompts, len(task))):
        run = freeze(model, task.clean_tokens[i])
        target = logit_target(run, int(task.correct[i]), int(task.incorrect[i]), int(task.answer_positions[i]))
        table = direct_contributions(run, target.state)
        for _, r in table[table["kind"] == "mlp"].iterrows():
            rows.append({"prompt": i, "layer": int(r["layer"]), "value": r["value"], "target": target.value})
    df = pd.DataFrame(rows)
    return df.groupby("layer", as_index=False).agg(mean=("value", "mean"), std=("value", "std"))


def transcoders_for(model, layers: list[int], cache: Path, tokens: int, k: int, expansion: float,
                    batch_size: int = 256, lr: float = 2e-3) -> dict:
    """Load the cached transcoders of ``layers``, training the missing ones in one pass over wiki text."""
    folders = {layer: cache / f"tc-L{layer}-topk{k}-x{expansion:g}-{tokens}-b{batch_size}-lr{lr:g}" for layer in layers}
    missing = [layer for layer, f in folders.items() if not (f / "cfg.json").is_file()]
    if missing:
        specs = [DictSpec(hook_in=f"blocks.{layer}.ln2.hook_normalized", kind="transcoder",
                          hook_out=f"blocks.{layer}.hook_mlp_out", activation="topk", k=k, expansion=expansion,
                          name=f"L{layer}") for layer in missing]
        cfg = TrainDictConfig(tokens=tokens, batch_size=batch_size, lr=lr, warmup_steps=20, block_batches=8)
        source = corpus_source(model.tokenizer, "wiki", seq_len=64, batch_size=16, max_tokens=int(tokens * 1.05))
        result = train_dictionaries(model, source, specs, cfg, progress=True)
        print(f"trained {len(missing)} transcoders on {result.tokens} tokens in {result.seconds:.0f} s")
        for layer in missing:
            save_dictionary(result.dictionaries[f"L{layer}"], folders[layer], model_name="smollm2-135m")
    return {layer: load_dictionary(f) for layer, f in folders.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=32, help="task prompts for the probability difference")
    p.add_argument("--layers", type=int, nargs="*", help="MLP layers to replace (default: the top --top by direct effect)")
    p.add_argument("--top", type=int, default=2)
    p.add_argument("--tokens", type=int, default=24_576, help="training tokens (one pass, shared by the transcoders)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=float, default=8.0)
    p.add_argument("--example", type=int, default=0)
    p.add_argument("--beam-width", type=int, default=10)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--cache", type=Path, default=workbench_home() / "case-studies" / "tc-greater-than")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    model = load_model(args.model, device="cpu")
    task = make_task("greater-than", model.tokenizer, n=args.n)
    effects = mlp_direct_effects(model, task, n_prompts=8)
    layers = args.layers or sorted(effects.reindex(effects["mean"].abs().sort_values(ascending=False).index)
                                   ["layer"].head(args.top).tolist())
    print("MLP direct effects on the logit difference (top 8):")
    print(effects.reindex(effects["mean"].abs().sort_values(ascending=False).index).head(8).to_string(index=False))
    print("replacing MLP layers", layers)

    torch.set_grad_enabled(True)
    transcoders = transcoders_for(model, layers, args.cache, args.tokens, args.k, args.expansion, args.batch_size,
                                  args.lr)
    torch.set_grad_enabled(False)
    per_layer = {}
    for layer in layers:
        per_layer[layer] = metric_clean_vs_spliced(model, task, {layer: transcoders[layer]})[1]
    result = tc_circuit(model, task.clean_tokens[args.example], transcoders, "logit",
                        correct=int(task.correct[args.example]), incorrect=int(task.incorrect[args.example]),
                        position=int(task.answer_positions[args.example]), num_branches=args.beam_width,
                        max_depth=args.depth, task=task)
    result.summary.update({"prompt": task.prompts[args.example], "layers": layers,
                           "metric_spliced_per_layer": {str(k): v for k, v in per_layer.items()},
                           "mlp_direct_top": effects.reindex(effects["mean"].abs().sort_values(ascending=False).index)
                           .head(8).to_dict("records")})
    cfg = TcCircuitConfig(task="greater-than", example=args.example, transcoder=[str(args.cache)],
                          beam_width=args.beam_width, depth=args.depth)
    info = TC_CIRCUIT.save(Store(), to_result(result), args.model, cfg)
    s = result.summary
    print(f"prompt: {task.prompts[args.example]!r}; target {s['target_label']} = {s['target_value']:.4f}, "
          f"contributions sum {s['contributions_sum']:.4f} (rel. error {s['completeness_rel_error']:.2e})")
    print(f"probability difference: clean {s['metric_clean']:.4f}, spliced (layers {layers}) {s['metric_spliced']:.4f}; "
          f"per layer {per_layer}")
    print(result.paths.head(15).to_string(index=False))
    contrib = result.contributions
    print("direct contributions by kind:")
    print(contrib.groupby("kind")["value"].sum().to_string())
    print(f"stored run {info.kind}/{info.run_id} at {info.path}")
    write_report(Path(__file__).with_suffix(".md"), args, task, effects, layers, result, per_layer, info)


def reading(result, layers, tokens, by_source) -> str:
    """Two sentences read off the contribution table: where attention reads from, how much the transcoders explain."""
    c = result.contributions
    feat = float(c.loc[c["kind"] == "feature", "value"].sum())
    err = float(c.loc[c["kind"] == "error", "value"].sum())
    src = int(by_source.index[0]) if len(by_source) else None
    parts = []
    if src is not None:
        parts.append(f"Attention's largest direct effect comes from position {src} ({tokens[src]!r}): "
                     f"{float(by_source.iloc[0]):+.4f} summed over heads.")
    parts.append(f"Into the target, the features of the replaced layers {layers} write {feat:+.4f} and their error "
                 f"nodes {err:+.4f}: the transcoders carry {abs(feat) / max(abs(feat) + abs(err), 1e-12):.0%} of "
                 "those layers' direct effect at this token.")
    return " ".join(parts)


def write_report(out: Path, args, task, effects, layers, result, per_layer, info) -> None:
    """The markdown report next to this script: every number below comes from this run."""
    s = result.summary
    tokens = result.circuit.metadata.get("tokens", [])
    by_kind = result.contributions.groupby("kind")["value"].sum()
    heads = result.contributions[result.contributions["kind"] == "head"]
    by_source = heads.groupby("source")["value"].sum().sort_values(key=abs, ascending=False).head(5)
    feats = result.contributions[result.contributions["kind"] == "feature"]
    top_feats = feats.sort_values("value", key=abs, ascending=False).head(8)
    ranked = effects.reindex(effects["mean"].abs().sort_values(ascending=False).index).head(8)
    fmt = lambda x: f"{x:.4f}"  # noqa: E731
    lines = [
        "# A transcoder circuit for greater-than on SmolLM2-135M",
        "",
        f"Command: `.venv/bin/python case_studies/tc_greater_than.py --tokens {args.tokens} --batch-size "
        f"{args.batch_size}` (TopK k={args.k}, expansion {args.expansion:g}, lr {args.lr:g}; one pass over "
        f"{args.tokens} wiki tokens; beam width {args.beam_width}, depth {args.depth}).",
        "",
        f"The transcoders see {args.tokens} training tokens (the paper's: 60M) on two CPU cores, so they are far from "
        "converged: their error nodes carry most of what the replaced MLPs do, and the circuit's features are only the "
        "part the transcoders already explain. The completeness identity holds whatever their quality.",
        "",
        f"Task: {task.description}",
        "",
        "## Which MLPs matter (frozen patterns and norm scales)",
        "Mean direct contribution of each MLP output to the logit difference (right tens digit minus the start "
        "year's own), over 8 prompts, largest first:",
        "",
        "```",
        ranked.to_string(index=False, float_format=fmt),
        "```",
        f"Replaced by transcoders: layers {layers}.",
        "",
        "## Probability difference, clean versus spliced",
        f"Over {len(task)} prompts: clean **{s['metric_clean']:.4f}**, all of {layers} spliced "
        f"**{s['metric_spliced']:.4f}**; one layer at a time: "
        + ", ".join(f"layer {k}: {v:.4f}" for k, v in per_layer.items()) + ".",
        "(GPT-2 small in the paper, MLP10 replaced: 0.8829 -> 0.7978.)",
        "",
        f"## The circuit of one prompt: {s['prompt']!r}",
        f"Target {s['target_label']} = {s['target_value']:.4f}; with the transcoders spliced in "
        f"{s.get('target_value_spliced', float('nan')):.4f}. The sum of all direct contributions is "
        f"{s['contributions_sum']:.4f} (relative error {s['completeness_rel_error']:.1e}: the completeness identity).",
        "",
        "Direct contributions into the target by kind (error = transcoder reconstruction error of the replaced "
        "layers; mlp = the MLPs left as they are):",
        "",
        "```",
        by_kind.to_string(float_format=fmt),
        "```",
        reading(result, layers, tokens, by_source),
        "",
        "Attention's direct contribution by source position (largest five):",
        "",
        "```",
        "\n".join(f"{int(p):>3} {tokens[int(p)]!r:>10} {v:+.4f}" for p, v in by_source.items()),
        "```",
        "Largest transcoder features writing directly to the target:",
        "",
        "```",
        top_feats[["node", "value"]].to_string(index=False, float_format=fmt),
        "```",
        f"Top paths of the greedy search ({s['paths']} kept; circuit of {s['nodes']} nodes, {s['edges']} edges):",
        "",
        "```",
        result.paths.head(15)[["value", "path"]].to_string(index=False, float_format=fmt),
        "```",
        "",
        f"Stored as run `{info.kind}/{info.run_id}` (circuit.json, paths.parquet, contributions.parquet).",
    ]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
