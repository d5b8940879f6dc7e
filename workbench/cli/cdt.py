"""``workbench cdt``: contextual decomposition (CD-T) scores, circuit discovery and word-level explanations."""

from __future__ import annotations

import argparse
import dataclasses

from workbench.cli.common import add_model_args, add_task_args, report_run

# circuits.cdt.rules.ATTENTION_RULES and BIAS_SPLITS (mirrored so that building the parser does not import torch)
ATTENTION_RULES: tuple[str, ...] = ("own", "total", "ablated")
BIAS_SPLITS: tuple[str, ...] = ("proportional", "gamma")


def cmd_cdt(args: argparse.Namespace) -> int:
    from circuits.cdt.runs import analyse, save_run
    from workbench.data import make_task
    from workbench.models import load_model
    from workbench.store import Store

    model = load_model(args.model, device=args.device)
    options = {}
    if args.half_len is not None:
        options["half_len"] = args.half_len
    task = make_task(args.task, model.tokenizer, n=args.n, seed=args.seed, **options)
    if args.metric:
        if args.metric != "logit_diff":
            raise ValueError(f"--metric only switches a task to its single-position logit difference, got {args.metric!r}")
        task = dataclasses.replace(task, metric_name="logit_diff", score_positions=None)
    rules = {"sign_rule": args.sign_rule, "bias_split": args.bias_split, "norm_eps": args.norm_eps}
    if args.attention is not None:  # else each use keeps the library's default (scores: ablated; --explain: total)
        rules["attention"] = args.attention
    result = analyse(
        model, task, sources=args.sources, targets=args.targets, per_position=not args.whole_heads, top_k=args.top_k,
        run_discovery=args.discover, faithfulness_bound=args.faithfulness_bound, ablation=args.ablation,
        texts=args.explain or (), progress=not args.json, **rules,
    )
    params = {"task": task.name, "n": args.n, "seed": args.seed, "task_options": options, "metric": task.metric_name,
              "sources": args.sources, "targets": args.targets, "per_position": not args.whole_heads,
              "ablation": args.ablation, "top_k": args.top_k, "discover": args.discover,
              "faithfulness_bound": args.faithfulness_bound, "texts": args.explain or []}
    info = save_run(Store(), args.model, params, result)
    summary = info.summary
    lines = [f"CD-T on {args.model}, task {task.name} ({task.metric_name}), clean metric {summary['clean_metric']:.4f}",
             "top sources (beta part of the metric, or relevance to the targets):"]
    lines += [f"  {node:<14} {score:+.4f}" for node, score in summary["top_sources"]]
    if args.discover:
        lines.append(f"circuit: {summary['n_nodes']} of {summary['n_candidates']} nodes, faithfulness "
                     f"{summary['faithfulness']:.3f}, heads {summary['circuit_heads']}")
    for doc in result["json"].get("explanations", []):
        words = " ".join(f"{w}({c:+.2f})" for w, c in zip(doc["words"], doc["contributions"], strict=True))
        lines.append(f"{doc['text']!r}: logit diff {doc['logit_diff']:+.3f}; {words}")
    return report_run(args, info, lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``cdt`` verb."""
    p = sub.add_parser("cdt", help="contextual decomposition: head/position relevance, circuit discovery, word contributions")
    add_model_args(p)
    add_task_args(p, "induction")
    p.add_argument("--half-len", type=int, default=None, help="induction: length of the repeated half")
    p.add_argument("--metric", default=None, choices=("logit_diff",),
                   help="use the task's single-position logit difference instead of its own metric")
    p.add_argument("--sources", nargs="+", default=None, metavar="NODE",
                   help="sources: L1.H0@5, L1.H0, mlp2@3, emb@2-4 ... (default: every head at every position)")
    p.add_argument("--targets", nargs="+", default=["logit"], metavar="NODE",
                   help="'logit' (the task metric, default) or later components such as L1.H0@7 mlp1")
    p.add_argument("--whole-heads", action="store_true", help="score whole heads instead of heads at positions")
    p.add_argument("--top-k", type=int, default=10, help="sources listed; discovery: nodes kept per round (default 10)")
    p.add_argument("--discover", action="store_true", help="run the iterative CD-T circuit discovery")
    p.add_argument("--faithfulness-bound", type=float, default=0.8, help="discovery: pruning keeps F at or above it (default 0.8)")
    p.add_argument("--ablation", default="mean", choices=("mean", "zero"), help="source semantics (default mean)")
    p.add_argument("--attention", default=None, choices=ATTENTION_RULES,
                   help="attention rule (default: the library's for each use: ablated for the scores and the discovery, "
                        "total for --explain; published: own)")
    p.add_argument("--sign-rule", action=argparse.BooleanOptionalAction, default=False,
                   help="apply the sign rule after MLPs and residual additions (default off; published: on)")
    p.add_argument("--bias-split", default="proportional", choices=BIAS_SPLITS, help="how biases are shared (default proportional)")
    p.add_argument("--norm-eps", type=float, default=None, help="epsilon of the norms (default: the model's)")
    p.add_argument("--explain", nargs="+", default=None, metavar="TEXT",
                   help="also explain these texts word by word (sentiment prompt, ' positive' vs ' negative')")
    p.set_defaults(func=cmd_cdt)
