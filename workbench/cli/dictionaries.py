"""Verbs ``train-dict`` and ``eval-dict``: sparse dictionaries (SAEs, transcoders) trained or loaded, evaluated, stored."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_model_args, report_run


def _hooks(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.hook is None and args.layer is None:
        raise ValueError("give --hook (e.g. blocks.6.hook_resid_post) or --layer (uses ln2.hook_normalized -> hook_mlp_out "
                         "for transcoders, hook_resid_post for SAEs)")
    if args.hook:
        return args.hook, args.hook_out
    if args.kind == "sae":
        return f"blocks.{args.layer}.hook_resid_post", None
    return f"blocks.{args.layer}.ln2.hook_normalized", args.hook_out or f"blocks.{args.layer}.hook_mlp_out"


def _lines(summary: dict) -> list[str]:
    rows = [f"{'dictionary':<60} {'L0':>8} {'FVU':>7} {'CE rec(0)':>9} {'KL':>8} {'dead':>6}"]
    for label, m in summary.items():
        if isinstance(m, dict):
            rows.append(f"{label:<60} {m['l0']:>8.2f} {m['fvu']:>7.3f} {m['ce_recovered_zero']:>9.3f} {m['kl']:>8.4f} "
                        f"{m['dead_fraction']:>6.2f}")
    return rows


def cmd_train_dict(args: argparse.Namespace) -> int:
    from circuits.dictionaries.runs import train_and_store
    from circuits.dictionaries.train import DictSpec, TrainDictConfig

    hook_in, hook_out = _hooks(args)
    if args.kind != "sae" and hook_out is None:
        raise ValueError(f"a {args.kind} needs --hook-out (or use --layer)")
    values = args.k if args.activation == "topk" else args.l1
    if args.activation == "topk" and not args.k:
        raise ValueError("--activation topk needs --k (one or more values)")
    specs = [DictSpec(hook_in, kind=args.kind, hook_out=hook_out, activation=args.activation, expansion=args.expansion,
                      l1=v if args.activation == "relu" else 0.0, k=v if args.activation == "topk" else None)
             for v in values]
    cfg = TrainDictConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                          seed=args.seed, spill_dir=args.spill_dir)
    info, _ = train_and_store(args.model, specs, cfg, corpus=args.corpus, seq_len=args.seq_len,
                              eval_tokens=args.eval_tokens, feature_tokens=args.eval_tokens, workdir=args.workdir,
                              device=args.device, progress=not args.json)
    return report_run(args, info, _lines(info.summary))


def cmd_eval_dict(args: argparse.Namespace) -> int:
    from circuits.dictionaries.runs import evaluate_and_store

    info = evaluate_and_store(args.model, args.path, corpus=args.corpus, seq_len=args.seq_len,
                              eval_tokens=args.eval_tokens, feature_tokens=args.eval_tokens, device=args.device,
                              progress=not args.json)
    return report_run(args, info, _lines(info.summary))


def register(sub) -> None:
    """Add ``train-dict`` and ``eval-dict``."""
    p = sub.add_parser("train-dict", help="train SAEs / transcoders on a hook (one pass for several sparsities)")
    add_model_args(p)
    p.add_argument("--hook", help="input hook, e.g. blocks.6.hook_resid_post or blocks.6.ln2.hook_normalized")
    p.add_argument("--hook-out", help="output hook of a transcoder, e.g. blocks.6.hook_mlp_out")
    p.add_argument("--layer", type=int, help="layer shortcut instead of --hook")
    p.add_argument("--kind", choices=["sae", "transcoder", "skip_transcoder"], default="sae")
    p.add_argument("--activation", choices=["relu", "topk"], default="relu")
    p.add_argument("--expansion", type=float, default=8.0, help="latents per input dimension (default 8)")
    p.add_argument("--l1", type=float, nargs="+", default=[1e-3], help="L1 coefficient(s) for ReLU (one run each)")
    p.add_argument("--k", type=int, nargs="+", help="active latents for TopK (one dictionary per value)")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens (default 200k)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="wiki")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--workdir", help="folder for resume checkpoints (a killed run continues from there)")
    p.add_argument("--spill-dir", help="keep the activation buffer in memory-mapped files there")
    p.set_defaults(func=cmd_train_dict)

    q = sub.add_parser("eval-dict", help="evaluate SAELens-layout dictionary folders on held-out text")
    add_model_args(q)
    q.add_argument("path", nargs="+", help="folders holding cfg.json and sae_weights.safetensors")
    q.add_argument("--corpus", default="wiki")
    q.add_argument("--seq-len", type=int, default=128)
    q.add_argument("--eval-tokens", type=int, default=8192)
    q.set_defaults(func=cmd_eval_dict)
