"""``workbench patch``: activation patching, path patching and patching-driven circuit discovery on a task."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_model_args, add_task_args, report_run

# circuits.patching: ablation.ABLATIONS, path.RECEIVER_INPUTS, runs.MODES (mirrored so that building the parser does
# not import torch)
ABLATIONS: tuple[str, ...] = ("mean", "zero", "corrupted")
RECEIVER_INPUTS: tuple[str, ...] = ("z", "q", "k", "v")
MODES: tuple[str, ...] = ("heads", "heads-positions", "layers", "path", "discover")


def cmd_patch(args: argparse.Namespace) -> int:
    from circuits.patching.prompts import prompt_task
    from circuits.patching.runs import patching_run
    from workbench.data import make_task
    from workbench.models import load_model
    from workbench.store import Store

    model = load_model(args.model, device=args.device)
    if args.prompt:
        if not (args.corrupted and args.correct and args.incorrect):
            raise ValueError("--prompt needs --corrupted, --correct and --incorrect as well")
        task = prompt_task(model.tokenizer, args.prompt, args.corrupted, args.correct, args.incorrect)
    else:
        task = make_task(args.task, model.tokenizer, n=args.n, seed=args.seed)
    task = task.to(next(model.parameters()).device)
    receivers = "logits" if args.receivers in (None, ["logits"]) else args.receivers
    info = patching_run(
        Store(), model, args.model, task, mode=args.mode, ablation=args.ablation, receivers=receivers,
        receiver_input=args.receiver_input, component=args.component, top_k=args.top_k,
        min_faithfulness=args.min_faithfulness, params={"seed": args.seed}, progress=not args.json,
    )
    summary = info.summary
    lines = [f"patching ({args.mode}, {args.ablation}) of {task.name} on {args.model}",
             f"metric clean {summary.get('metric_clean'):.4f}, empty {summary.get('metric_empty'):.4f}; "
             f"faithfulness of the top {summary.get('n_nodes')} nodes: {summary.get('faithfulness'):.3f}"]
    lines += [f"  {node:<16} {score:+.4f}" for node, score in summary.get("top", [])]
    return report_run(args, info, lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``patch`` verb."""
    p = sub.add_parser("patch", help="activation / path patching of heads, positions or layers; circuit discovery")
    add_model_args(p)
    add_task_args(p, "ioi")
    p.add_argument("--mode", default="heads", choices=MODES,
                   help="heads, heads-positions, layers (whole attention or MLP per position), path (path patching "
                        "of every head to --receivers), discover (path-patching circuit discovery); default heads")
    p.add_argument("--ablation", default="mean", choices=ABLATIONS, help="replacement value (default mean)")
    p.add_argument("--receivers", nargs="+", default=None, metavar="NODE",
                   help="path mode: 'logits' (default) or node ids such as L5.H1 L5.H1@9 mlp6")
    p.add_argument("--receiver-input", default="z", choices=RECEIVER_INPUTS, help="path mode: what of a head receiver is patched (default z)")
    p.add_argument("--component", default="attn", choices=("attn", "mlp"), help="layers mode: which sublayer (default attn)")
    p.add_argument("--top-k", type=int, default=5, help="nodes in the stored circuit (discover: per round; default 5)")
    p.add_argument("--min-faithfulness", type=float, default=0.8, help="discover: pruning bound (default 0.8)")
    p.add_argument("--prompt", nargs="+", default=None, help="own clean prompts instead of --task")
    p.add_argument("--corrupted", nargs="+", default=None, help="with --prompt: corrupted prompts (same token counts)")
    p.add_argument("--correct", nargs="+", default=None, help="with --prompt: one-token right answer(s)")
    p.add_argument("--incorrect", nargs="+", default=None, help="with --prompt: one-token wrong answer(s)")
    p.set_defaults(func=cmd_patch)
