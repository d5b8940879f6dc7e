"""``workbench dynamics``: massive-activation and MLP-sparsity dynamics over a zoo family's (or any model's) checkpoints."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_json_arg, report_run


def cmd_dynamics(args: argparse.Namespace) -> int:
    from probes.dynamics_run import run_checkpoint_dynamics, run_dynamics
    from workbench.store import Store

    if args.checkpoints:
        info = run_checkpoint_dynamics(args.target, Store(), name=args.name, n_sequences=args.sequences,
                                       context=args.context, progress=not args.json)
    else:
        info = run_dynamics(args.target, Store(), n_sequences=args.sequences, progress=not args.json)
    summary = Store().load("dynamics", info.run_id).summary
    lines = [f"dynamics of {info.model}: members {', '.join(summary['members'])}"]
    for stat in ("massive_ratio", "mlp_active"):
        lines.append(
            f"  {stat}: five-parameter fit R^2 mean {summary[f'{stat}_r2_mean']:.3f}, min {summary[f'{stat}_r2_min']:.3f}; "
            f"{summary[f'{stat}_prefers_step']} of {summary[f'{stat}_layers']} layers prefer a step (AIC)"
        )
    for target, best in (summary.get("predictor_best_r2") or {}).items():
        lines.append(f"  predictor {target}: leave-one-model-out R^2 {best['r2_lomo']:.3f} ({best['model']})")
    if "predictor" in summary:
        lines.append(f"  predictor {summary['predictor']}")
    return report_run(args, info, lines, summary)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``workbench dynamics``."""
    p = sub.add_parser("dynamics", help="fit massive-activation / MLP-sparsity curves over a model's checkpoints")
    p.add_argument("target", help="zoo family (llama, gpt) or member (e.g. llama-d64-l2), built on first use; with "
                   "--checkpoints, a folder of step-<N> / checkpoint-<N> checkpoints or <folder or hub name>@<rev>,<rev>,...")
    p.add_argument("--checkpoints", action="store_true",
                   help="TARGET names saved checkpoints of any model, not a zoo family (a hub name needs the network)")
    p.add_argument("--name", default=None, help="with --checkpoints: the member's name in the tables (default: the folder's)")
    p.add_argument("--context", type=int, default=128,
                   help="with --checkpoints: tokens per held-out window of the wiki corpus (default 128)")
    p.add_argument("--sequences", type=int, default=10, help="held-out sequences per checkpoint (default 10)")
    add_json_arg(p)
    p.set_defaults(func=cmd_dynamics)
