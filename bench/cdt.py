"""CD-T against path patching: time to score every head (and every head at every position) on one task.

For each model and task, in one process and with the same ablation (mean over the task's corrupted prompts):

- ``cdt``: :func:`circuits.cdt.head_scores` (the beta part of the task metric with each head as source);
- ``path patching``: path patching of every head to the logits (sender ablated, every other head frozen at its clean
  output, MLPs recomputing), :mod:`circuits.patching.path`, senders batched as rows (this project's fast way: many
  senders per forward; each forward is a whole one: the bridge runs every layer even when asked to start later);
- ``path patching, 1/fwd``: the same, one sender per forward (the usual way of running it); on large sender sets
  only a random sample of senders is run and the time scaled to all of them (said in the row);
- ``activation patching``: the total effect of every head, :func:`circuits.patching.head_patching_scores`, the
  reference a ranking is judged by here.

Reported per baseline: seconds (best and median of the rounds), CD-T's speed-up (the baseline's seconds over CD-T's
in the same round, median over rounds), the Spearman correlation of CD-T's ranking with the baseline's, and the
ranking quality of each method: its Spearman correlation with activation patching (CD-T's in ``cdt_quality``, the
baseline's in ``base_quality``). Times include the reference runs each method needs. The four methods run
interleaved in rounds in one process (:func:`bench.timing.compare`), after a warm-up of the hooks on one prompt and
``--warmup`` untimed rounds; the load average is recorded and a run whose load rose above the core count is flagged
unreliable. The last line of output is one JSON object.

    .venv/bin/python bench/cdt.py                   # toy/induction-2l (induction) and smollm2-135m (ioi), 8 prompts
    .venv/bin/python bench/cdt.py --quick           # toy/induction-2l only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, Timed, compare, emit  # noqa: E402

CASES = {
    "toy": ("toy/induction-2l", "induction", {"half_len": 20}),
    "smollm2": ("smollm2-135m", "ioi", {}),
    "smollm2-gt": ("smollm2-135m", "greater-than", {}),
}


def _scores(out: torch.Tensor) -> torch.Tensor:
    return out.detach().float().cpu()


def _top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    k = min(k, a.numel())
    top_a = set(a.flatten().abs().argsort(descending=True)[:k].tolist())
    top_b = set(b.flatten().abs().argsort(descending=True)[:k].tolist())
    return len(top_a & top_b) / k


def _one_per_forward(model, task, per_position: bool, sample: int) -> Timed:
    """Seconds of path patching with one sender per forward, over every head (or a sample scaled up); the note
    saying so as the result."""
    from circuits.patching import path_patching_scores
    from circuits.patching.path import all_components

    ids = all_components(model, task, per_position=per_position)
    run = ids
    if len(ids) > sample:
        gen = torch.Generator().manual_seed(0)
        run = [ids[i] for i in torch.randperm(len(ids), generator=gen)[:sample].tolist()]
    t0 = time.perf_counter()
    path_patching_scores(model, task, run, ablation="mean", max_rows=task.batch_size)
    seconds = (time.perf_counter() - t0) * len(ids) / len(run)
    return Timed(seconds, "" if len(run) == len(ids) else f"{len(run)} of {len(ids)} senders run, time scaled")


def bench_case(name: str, n: int, per_position: bool, device: str | None, rounds: int, warmup: int,
               watch: LoadWatch, positions_only: bool = False, sample: int = 400) -> list[dict]:
    from circuits import cdt
    from circuits.patching import head_patching_scores, path_head_scores
    from workbench.data import make_task
    from workbench.models import load_model

    spec, task_name, options = CASES[name]
    model = load_model(spec, device=device)
    task = make_task(task_name, model.tokenizer, n=n, seed=0, **options)
    task = task.to(next(model.parameters()).device)
    rows = []
    modes = [True] if positions_only else [False, True] if per_position else [False]
    for pos in modes:
        methods = {
            "cdt": lambda pos=pos: _scores(cdt.head_scores(model, task, per_position=pos, ablation="mean")),
            "path patching": lambda pos=pos: _scores(path_head_scores(model, task, per_position=pos, ablation="mean",
                                                                      progress=False)),
            "activation patching": lambda pos=pos: _scores(head_patching_scores(model, task, per_position=pos,
                                                                                ablation="mean", progress=False)),
            "path patching, 1/fwd": lambda pos=pos: _one_per_forward(model, task, pos, sample),
        }
        with torch.no_grad():
            head_patching_scores(model, task.select(slice(0, 1)))  # warm-up of the hooks
            cdt.head_scores(model, task.select(slice(0, 1)), per_position=pos)
            timing = compare(methods, rounds=rounds, warmup=max(warmup, 1), load=watch, min_seconds=0.5)
        cdt_scores, path, act = (timing.results[k] for k in ("cdt", "path patching", "activation patching"))
        note = timing.results["path patching, 1/fwd"]

        def rho(a, b):
            return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)

        baselines = (("path patching", path, ""), ("path patching, 1/fwd", path, note),
                     ("activation patching", act, ""))
        for method, scores, remark in baselines:
            rows.append({
                "model": spec, "task": task_name, "prompts": n, "seq": task.seq_len,
                "scored": "heads x positions" if pos else "heads", "n_scores": int(scores.numel()),
                "baseline": method, "baseline_s": round(statistics.median(timing[method].seconds), 3),
                "baseline_best_s": round(timing[method].best, 3), "cdt_s": round(timing["cdt"].median, 3),
                "cdt_best_s": round(timing["cdt"].best, 3), "speedup": round(timing.ratio(method, "cdt"), 2),
                "best_speedup": round(timing.best_ratio(method, "cdt"), 2), "rounds_s": list(timing[method].seconds),
                "cdt_rounds_s": list(timing["cdt"].seconds), "spearman": round(rho(cdt_scores, scores), 4),
                "cdt_quality": round(rho(cdt_scores, act), 4), "base_quality": round(rho(scores, act), 4),
                "top10_overlap": _top_overlap(cdt_scores, scores), "note": remark,
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(CASES),
                        help="default toy smollm2 (toy with --quick)")
    parser.add_argument("--n", type=int, default=8, help="prompts per task (default 8)")
    parser.add_argument("--no-positions", action="store_true", help="score whole heads only")
    parser.add_argument("--positions-only", action="store_true", help="score heads x positions only")
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="timed rounds of every method (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (default 1)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: the toy model only")
    parser.add_argument("--sample", type=int, default=400,
                        help="senders run by the one-per-forward baseline before scaling its time (default 400)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a shared machine)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["toy"] if args.quick else ["toy", "smollm2"])
    watch = LoadWatch()
    rows = []
    for name in models:
        rows += bench_case(name, args.n, not args.no_positions, args.device, args.rounds, args.warmup, watch,
                           args.positions_only, args.sample)
    header = (f"{'model':<18} {'task':<13} {'scored':<18} {'baseline':<21} {'base s':>8} {'cdt s':>7} {'x':>7} "
              f"{'spearman':>8} {'top10':>6} {'q cdt':>6} {'q base':>6}")
    print(header)
    for r in rows:
        print(f"{r['model']:<18} {r['task']:<13} {r['scored']:<18} {r['baseline']:<21} {r['baseline_s']:>8.2f} "
              f"{r['cdt_s']:>7.2f} {r['speedup']:>7.1f} {r['spearman']:>8.3f} {r['top10_overlap']:>6.1f} "
              f"{r['cdt_quality']:>6.3f} {r['base_quality']:>6.3f} {r['note']}")
    print(f"(seconds: median of {args.rounds} interleaved rounds after {args.warmup} warm-up; x: the baseline's seconds "
          "over CD-T's in the same round, median over rounds)")
    print(watch.describe())
    ratios = {f"{r['model']} {r['scored']}: cdt vs {r['baseline']}": r["speedup"] for r in rows}
    emit({"bench": "cdt", "rounds": args.rounds, "warmup": args.warmup, "threads": torch.get_num_threads(),
          "ratios": ratios, "ratios_meaning": "CD-T's speed-up: baseline seconds / CD-T seconds, median over rounds",
          "rows": rows, "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
