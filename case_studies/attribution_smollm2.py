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

Run: ``nice -n 10 .venv/bin/python case_studies/attribution_smollm2.py all [--tokens 40000] [--threads 2]``.
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


def load_set(tokens: int, device: str = "cpu") -> dict[int, object]:
    """The saved set: layer -> transcoder Dictionary."""
    folder = set_folder(tokens)
    layers = sorted(int(p.name[1:]) for p in folder.glob("L*") if p.name[1:].isdigit())
    return {layer: load_dictionary(folder / f"L{layer}", device=device) for layer in layers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "run", "all"])
    parser.add_argument("--tokens", type=int, default=40_000, help="training tokens per transcoder (default 40000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(MODEL, device="cpu")
    if args.step in ("build", "all"):
        print(json.dumps(build(model, args.tokens)))
    if args.step in ("run", "all"):
        from case_studies.attribution_smollm2_run import run

        run(model, load_set(args.tokens), json.loads((set_folder(args.tokens) / "set.json").read_text()),
            Path(__file__).with_suffix(".md"))


if __name__ == "__main__":
    main()
