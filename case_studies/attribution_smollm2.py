"""Case study: attribution graphs of SmolLM2-135M over transcoders trained here on every layer.

Two steps (``all`` runs both):

- ``build``: trains one TopK-16, 4x transcoder per layer (all 30; ``blocks.L.ln2.hook_normalized`` ->
  ``blocks.L.hook_mlp_out``, the recipe of :func:`circuits.dictionaries.transcoder_set.transcoders_by_layer`) on
  ``--tokens`` wiki tokens, checkpointing into the set's ``work/`` folder (a killed build resumes there), then saves
  the set under ``$WORKBENCH_HOME/transcoder_sets/<name>/`` (one SAELens folder per layer, ``L<layer>/``, and
  ``set.json`` with the budget: tokens, wall and CPU seconds, torch threads). A finished set is not trained again.
- ``run``: the transcoders' FVU / L0 per layer on held-out wiki text, then the attribution graph (every active
  feature, the salient logits) of a factual, a greater-than and an IOI prompt, each with its replacement and
  completeness scores (:func:`circuits.attribution.prune.graph_scores`), node counts and the top features by
  influence on the logits, each shown with the tokens its decoder promotes most (decoder row through the
  unembedding). Writes ``attribution_smollm2.md`` next to this script, keeping its "Reading the result" section.

Run: ``nice -n 10 .venv/bin/python case_studies/attribution_smollm2.py all [--tokens 20000] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages first

from circuits.dictionaries.saelens_io import load_dictionary, save_dictionary  # noqa: E402
from circuits.dictionaries.transcoder_set import transcoders_by_layer  # noqa: E402
from workbench.atomic import write_json  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.paths import workbench_home  # noqa: E402

MODEL = "smollm2-135m"
READING = "## Reading the result"
PROMPTS = {
    "factual": ("The Eiffel Tower is in the city of", " Paris"),
    "greater-than": ("The war lasted from the year 1732 to the year 17", None),
    "ioi": ("When Mary and John went to the store, John gave a drink to", " Mary"),
}


def set_folder(tokens: int) -> Path:
    """Where the transcoder set trained on ``tokens`` tokens lives."""
    return workbench_home() / "transcoder_sets" / f"{MODEL}-topk16-x4-{tokens // 1000}k"


def build(model, tokens: int) -> dict:
    """Train (or resume training) the set and save it; returns its ``set.json`` record."""
    folder = set_folder(tokens)
    record_path = folder / "set.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    wall, cpu = time.perf_counter(), time.process_time()
    tcs, done = transcoders_by_layer(model, None, tokens, progress=True, workdir=str(folder / "work"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for layer, tc in tcs.items():
        save_dictionary(tc, folder / f"L{layer}", model_name=MODEL, context_size=64)
    record = {"model": MODEL, "tokens": done, "layers": len(tcs), "recipe": "TopK-16, 4x, lr 2e-3, batch 256, wiki",
              "wall_seconds": wall, "cpu_seconds": cpu, "torch_threads": torch.get_num_threads(),
              "note": "seconds of the last (possibly resumed) build call only"}
    write_json(record_path, record)
    return record


def save_from_checkpoint(model, tokens: int, cpu_seconds: float | None, wall_seconds: float | None) -> dict:
    """Save the set from the newest checkpoint of a build that was stopped before its budget (``set.json`` records
    the steps and tokens actually trained, and that the schedule did not finish)."""
    from safetensors.torch import load_file

    from circuits.dictionaries.model import Dictionary

    folder = set_folder(tokens)
    steps = sorted((folder / "work" / "resume").glob("step-*"))
    if not steps:
        raise SystemExit(f"no checkpoint under {folder / 'work' / 'resume'}: run build first")
    state = json.loads((steps[-1] / "state.json").read_text())
    d = int(model.cfg.d_model)
    for i, label in enumerate(state["labels"]):
        layer = int(label[1:])
        tc = Dictionary("transcoder", d, 4 * d, activation="topk", k=16, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                        hook_out=f"blocks.{layer}.hook_mlp_out")
        tc.load_state_dict(load_file(str(steps[-1] / f"d{i}.safetensors")))
        save_dictionary(tc.eval(), folder / f"L{layer}", model_name=MODEL, context_size=64)
    batch = state["config"]["batch_size"]
    record = {"model": MODEL, "tokens": state["step"] * batch, "layers": len(state["labels"]),
              "recipe": "TopK-16, 4x, lr 2e-3, batch 256, wiki", "wall_seconds": wall_seconds, "cpu_seconds": cpu_seconds,
              "torch_threads": torch.get_num_threads(), "stopped_at_step": state["step"],
              "planned_tokens": tokens, "note": "saved from the newest checkpoint of a build stopped for time; the "
              "learning-rate schedule did not finish"}
    write_json(folder / "set.json", record)
    return record


def load_set(tokens: int, device: str = "cpu") -> dict[int, object]:
    """The saved set: layer -> transcoder Dictionary."""
    folder = set_folder(tokens)
    layers = sorted(int(p.name[1:]) for p in folder.glob("L*") if p.name[1:].isdigit())
    return {layer: load_dictionary(folder / f"L{layer}", device=device) for layer in layers}


@torch.no_grad()
def fvu_l0(model, tcs: dict[int, object], n_tokens: int) -> list[dict]:
    """Per layer on ``n_tokens`` held-out wiki tokens (the heldout split; padding and each sequence's BOS left out):
    FVU = sum |y - tc(x)|^2 / sum |y - mean y|^2 (y the MLP output, x the MLP input), L0 = mean active features."""
    from workbench.data import token_batches

    names = [h for layer in tcs for h in (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")]
    acc = {layer: [0.0, 0.0, 0.0, 0] for layer in tcs}  # sse, y sum of squares, active, tokens
    sums = {layer: 0.0 for layer in tcs}
    seen = 0
    for batch in token_batches("wiki", model.tokenizer, seq_len=64, batch_size=8, split="heldout", max_tokens=n_tokens):
        tokens, keep = batch.tokens, batch.attention_mask.bool()
        keep[:, 0] = False
        _, cache = model.run_with_cache(tokens, names_filter=names)
        for layer, tc in tcs.items():
            x = cache[f"blocks.{layer}.ln2.hook_normalized"][keep]
            y = cache[f"blocks.{layer}.hook_mlp_out"][keep]
            out, z = tc(x)
            a = acc[layer]
            a[0] += float((y - out).pow(2).sum())
            a[1] += float(y.pow(2).sum())
            a[2] += float((z != 0).sum())
            a[3] += y.shape[0]
            sums[layer] = sums[layer] + y.sum(0)
        seen += int(keep.sum())
        if seen >= n_tokens:
            break
    rows = []
    for layer, (sse, sq, active, n) in acc.items():
        total = sq - float(sums[layer].pow(2).sum()) / n  # sum |y - mean y|^2
        rows.append({"layer": layer, "fvu": sse / total, "l0": active / n, "tokens": n})
    return rows


def top_features(graph, tcs, model, n: int = 8) -> list[dict]:
    """The ``n`` features of most influence on the logits, each with the tokens its decoder row promotes most."""
    from circuits.attribution.prune import node_influence

    infl = node_influence(graph.adjacency.double(), graph.logit_weights().double())[:graph.n_features]
    W_U = model.W_U.detach().float()
    rows = []
    order = infl.argsort(descending=True)
    order = order[graph.features[order, 1] > 0]  # the BOS position's features are counted apart (bos_in_top20)
    for i in order[:n].tolist():
        layer, pos, feat = graph.features[i].tolist()
        logits = tcs[layer].W_dec[feat].detach().float() @ W_U
        top = logits.topk(5).indices.tolist()
        rows.append({"node": f"tc{layer}.f{feat}@{pos}", "token": graph.token_strings[pos],
                     "activation": float(graph.activations[i]), "influence": float(infl[i]),
                     "top_logits": [model.tokenizer.decode([t]) for t in top]})
    return rows


def attribute_prompt(model, tcs, facts, prompt: str) -> dict:
    """The attribution graph of ``prompt`` (BOS prepended): scores, node counts, top features, the prediction."""
    from circuits.attribution.attribute import attribute
    from circuits.attribution.prune import graph_scores, prune
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
    from workbench.data.tokens import bos_id, encode

    tok = model.tokenizer
    bos = bos_id(tok)
    tokens = torch.tensor(([bos] if bos is not None else []) + encode(tok, prompt))
    start = time.perf_counter()
    rm = ReplacementModel(model, tokens, feature_sets_from_transcoders(tcs, facts))
    graph = attribute(rm, tokenizer=tok, batch_size=64, progress=True)
    seconds = time.perf_counter() - start
    replacement, completeness = graph_scores(graph)
    pruned = prune(graph)
    kept = pruned.node_mask[:graph.n_features].sum()
    probs = torch.softmax(rm.logits[-1].float(), -1)
    top_p, top_i = probs.topk(3)
    return {"prompt": prompt, "tokens": len(tokens), "seconds": seconds, "replacement": replacement,
            "completeness": completeness, "features": graph.n_features, "errors": graph.n_layers * graph.n_pos,
            "token_nodes": graph.n_pos, "logits": graph.n_logits, "nodes": graph.n_nodes,
            "pruned_features": int(kept),
            "prediction": [(tok.decode([int(i)]), float(p)) for p, i in zip(top_p, top_i, strict=True)],
            "top_features": top_features(graph, tcs, model), "bos_in_top20": bos_in_top(graph, 20)}


def bos_in_top(graph, n: int) -> int:
    """How many of the ``n`` features of most influence on the logits sit at the BOS position."""
    from circuits.attribution.prune import node_influence

    infl = node_influence(graph.adjacency.double(), graph.logit_weights().double())[:graph.n_features]
    return int((graph.features[infl.argsort(descending=True)[:n], 1] == 0).sum())


def run(model, tcs, record: dict, md_path: Path, eval_tokens: int) -> None:
    """FVU / L0 per layer, the three graphs, and the markdown report."""
    from circuits.frozen.facts import ModelFacts

    facts = ModelFacts.of(model)
    quality = fvu_l0(model, tcs, eval_tokens)
    graphs = [attribute_prompt(model, tcs, facts, prompt) for prompt, _ in PROMPTS.values()]
    write_json(md_path.with_suffix(".json"), {"set": record, "quality": quality, "graphs": graphs})
    old = md_path.read_text() if md_path.exists() else ""
    reading = old[old.index(READING):] if READING in old else ""  # the written reading survives a rerun
    md_path.write_text(report(record, quality, graphs) + ("\n" + reading if reading else ""))
    print(md_path.read_text())


def report(record: dict, quality: list[dict], graphs: list[dict]) -> str:
    """The measured part of the markdown report."""
    md = ["# Attribution graphs of SmolLM2-135M over transcoders trained here", "",
          "Generated by `case_studies/attribution_smollm2.py` (numbers in `attribution_smollm2.json`).", "",
          "## The transcoder set", "",
          f"One {record['recipe']} transcoder per layer ({record['layers']} layers, `blocks.L.ln2.hook_normalized` -> "
          f"`blocks.L.hook_mlp_out`), {record['tokens']:,} training tokens each (one pass harvests all layers): "
          + (f"{record['cpu_seconds'] / 60:.1f} CPU minutes ({record['wall_seconds'] / 60:.1f} wall minutes, "
             f"{record['torch_threads']} torch threads, on two shared cores)." if record.get("cpu_seconds") else
             "CPU time not recorded.")
          + (f" **Stopped at step {record['stopped_at_step']} of the {record['planned_tokens']:,}-token schedule "
             "for time** (saved from its checkpoint; the learning rate never decayed)."
             if record.get("stopped_at_step") else ""), "",
          f"FVU and L0 on {quality[0]['tokens']:,} held-out wiki tokens (heldout split):", "",
          "| layer | FVU | L0 |", "|---:|---:|---:|"]
    md += [f"| {q['layer']} | {q['fvu']:.3f} | {q['l0']:.1f} |" for q in quality]
    mean_fvu = sum(q["fvu"] for q in quality) / len(quality)
    md += ["", f"Mean FVU over the layers: {mean_fvu:.3f}."]
    if mean_fvu > 0.5:
        md += ["", f"**warning: the transcoders reconstruct little of the MLP outputs (mean FVU {mean_fvu:.2f}); the "
               "graphs below route most influence through error nodes.**"]
    md += ["", "## The graphs", "",
           "| prompt | tokens | features | error nodes | logits | replacement | completeness | features kept "
           "by pruning (0.8) | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {g['prompt']} | {g['tokens']} | {g['features']} | {g['errors']} | {g['logits']} | "
           f"{g['replacement']:.3f} | {g['completeness']:.3f} | {g['pruned_features']} | {g['seconds']:.0f} |"
           for g in graphs]
    for g in graphs:
        pred = ", ".join(f"`{t!r}` {p:.2f}" for t, p in g["prediction"])
        md += ["", f"### {g['prompt']!r}", "", f"The model's top predictions: {pred}. Features at the BOS position among "
               f"the 20 of most influence: {g['bos_in_top20']}; the table lists the 8 of most influence elsewhere.", "",
               "| feature | at token | activation | influence | tokens its decoder promotes |", "|---|---|---:|---:|---|"]
        md += [f"| {f['node']} | `{f['token']!r}` | {f['activation']:.2f} | {f['influence']:.4f} | "
               f"{', '.join(repr(t) for t in f['top_logits'])} |" for f in g["top_features"]]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "run", "all", "save-checkpoint"])
    parser.add_argument("--tokens", type=int, default=20_000, help="training tokens per transcoder (default 20000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-seconds", type=float, default=None, help="save-checkpoint: the stopped build's CPU time")
    parser.add_argument("--wall-seconds", type=float, default=None, help="save-checkpoint: its wall time")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for FVU / L0 (default 2048)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(MODEL, device="cpu")
    if args.step == "save-checkpoint":
        print(json.dumps(save_from_checkpoint(model, args.tokens, args.cpu_seconds, args.wall_seconds)))
    if args.step in ("build", "all"):
        print(json.dumps(build(model, args.tokens)))
    if args.step in ("run", "all"):
        record = json.loads((set_folder(args.tokens) / "set.json").read_text())
        run(model, load_set(args.tokens), record, Path(__file__).with_suffix(".md"), args.eval_tokens)


if __name__ == "__main__":
    main()
