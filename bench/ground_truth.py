"""Build every ground truth and prove its circuit on its own task; prints one JSON object (the last line).

For each ground truth (:func:`workbench.ground_truth.ground_truths`), on ``--n`` pairs of its task:

- ``clean_accuracy``: how often the clean model's top token at the answer position is the right answer (the
  induction toy: at every scored position of the repeated half);
- ``f_kept``: faithfulness F = (m(C) - m(empty)) / (m(M) - m(empty)) of the circuit's nodes with every other head
  (and MLP) interchange-ablated (given its value on the corrupted input), :func:`circuits.patching.faithfulness`;
- ``f_destroyed``: F with only the circuit's own nodes ablated (the complement kept);
- designed models only, on the checkpoint's own weights, edge by edge (:func:`workbench.ground_truth.strict.strict_logits`
  with the corrupted input as the source): ``f_edges``, F when only the designed edges carry clean values and every
  other edge, embedding and head reads the corrupted run; ``f_edges_minus``, that F with each designed edge in turn
  also given its corrupted value (each designed edge is needed when these are well below 1); ``output_norms``, the
  mean output norm of the embeddings and of each head (the distractors outside the circuit are not silent);
- ``training_seconds`` / ``training_cpu_seconds``: wall and CPU seconds of the member's build (its zoo manifest:
  the session that built it, which may be an earlier run with the same cache).

    .venv/bin/python bench/ground_truth.py                 # all ground truths, 256 pairs each
    .venv/bin/python bench/ground_truth.py --only gt-prev-token --n 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages

from circuits.patching import faithfulness  # noqa: E402
from workbench.data.task_base import Task  # noqa: E402
from workbench.ground_truth import GroundTruth, get, names  # noqa: E402


def complement(gt: GroundTruth, n_layers: int, n_heads: int) -> list[str]:
    """Every head and MLP outside the circuit (an attention-only design's MLPs are all zero): the node ids to ablate
    to keep the circuit."""
    heads = [f"L{layer}.H{h}" for layer in range(n_layers) for h in range(n_heads)]
    return [c for c in heads + [f"mlp{layer}" for layer in range(n_layers)] if c not in gt.nodes]


@torch.no_grad()
def clean_accuracy(model, task: Task) -> float:
    """Top-1 accuracy of the clean run on the task's answers (``log_prob`` tasks: every scored position)."""
    logits = model(task.clean_tokens)
    if task.metric_name == "log_prob":
        pos = task.score_positions
        return float((logits[:, pos].argmax(-1) == task.clean_tokens[:, pos + 1]).float().mean())
    rows = torch.arange(task.batch_size)
    return float((logits[rows, task.answer_positions].argmax(-1) == task.correct).float().mean())


@torch.no_grad()
def edge_faithfulness(gt: GroundTruth, task: Task) -> dict[str, Any]:
    """F of the designed edge set, and of it less each edge, by the strict forward on the checkpoint's weights."""
    from transformers import AutoModelForCausalLM

    from workbench import zoo
    from workbench.ground_truth.strict import Wiring, strict_logits

    hf = AutoModelForCausalLM.from_pretrained(str(zoo.model_dir(gt.name))).eval()

    def metric(edges: frozenset[str]) -> float:
        return float(task.metric(strict_logits(hf, Wiring.from_edges(edges), task.clean_tokens, task.corrupted_tokens)))

    m_clean, m_corrupted = float(task.metric(hf(input_ids=task.clean_tokens).logits)), metric(frozenset())
    f = lambda m: (m - m_corrupted) / (m_clean - m_corrupted)  # noqa: E731
    from workbench.ground_truth.build import evaluate
    from workbench.ground_truth.designs import DESIGNS

    return {"f_edges": f(metric(gt.edges)), "output_norms": evaluate(hf, DESIGNS[gt.name]())["output_norms"],
            "f_edges_minus": {e: f(metric(gt.edges - {e})) for e in sorted(gt.edges)}}


def prove(gt: GroundTruth, model, n: int = 256, seed: int = 1) -> dict[str, Any]:
    """The proof numbers of one ground truth on ``n`` pairs of its task (see the module's docstring)."""
    task = gt.make_task(model, n=n, seed=seed)
    out: dict[str, Any] = {
        "how": gt.how, "nodes": sorted(gt.nodes), "n_edges": len(gt.edges), "edges": sorted(gt.edges),
        "clean_accuracy": clean_accuracy(model, task),
        "f_kept": faithfulness(model, task, sorted(gt.nodes), ablation="corrupted"),
        "f_destroyed": faithfulness(model, task, complement(gt, model.cfg.n_layers, model.cfg.n_heads),
                                    ablation="corrupted"),
    }
    if gt.how == "designed":
        out.update(edge_faithfulness(gt, task))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from workbench import zoo
    from workbench.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="ground-truth names (default: all)")
    parser.add_argument("--n", type=int, default=256, help="task pairs per model")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in args.only or names():
        t0 = time.perf_counter()
        gt = get(name)
        model = load_model(gt.spec, device="cpu")
        built = time.perf_counter() - t0
        manifest = zoo.manifest(name)
        results[name] = {**prove(gt, model, n=args.n, seed=args.seed), "build_and_load_seconds": built,
                         "training_seconds": manifest["seconds_last_session"],
                         "training_cpu_seconds": manifest["cpu_seconds_last_session"]}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "edges"}), file=sys.stderr, flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
