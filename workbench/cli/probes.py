"""Verbs of the probes: ``workbench sparsity``, ``workbench massive``, ``workbench probe``."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_model_args, report_run


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _store():
    from workbench.store import Store

    return Store()


def _report(args: argparse.Namespace, info) -> int:
    return report_run(args, info, [f"{k}: {v}" for k, v in info.summary.items()])


def cmd_sparsity(args: argparse.Namespace) -> int:
    from probes.demos import store_sparsity

    info = store_sparsity(_store(), args.model, corpus=args.corpus, max_tokens=args.tokens, seq_len=args.seq_len,
                          batch_size=args.batch_size, layers=args.layers, taus=args.taus, thresholds=args.thresholds,
                          threshold_layers=args.threshold_layers, calib_tokens=args.calib_tokens,
                          eval_tokens=args.eval_tokens, topk=args.topk or (), max_rise=args.max_rise,
                          device=args.device, progress=not args.json)
    return _report(args, info)


def cmd_massive(args: argparse.Namespace) -> int:
    from probes.demos import store_massive

    info = store_massive(_store(), args.model, corpus=args.corpus, max_tokens=args.tokens, seq_len=args.seq_len,
                         batch_size=args.batch_size, layers=args.layers, abs_threshold=args.abs_threshold,
                         ratio_threshold=args.ratio_threshold, intervene=not args.no_intervention,
                         eval_tokens=args.eval_tokens, intervention_layers=args.intervention_layers,
                         device=args.device, progress=not args.json)
    return _report(args, info)


def cmd_probe(args: argparse.Namespace) -> int:
    from probes.demos import store_probe

    info = store_probe(_store(), args.model, corpus=args.corpus, n=args.n, pool=args.pool, folds=args.folds,
                       seed=args.seed, max_tokens=args.max_text_tokens, device=args.device, progress=not args.json)
    return _report(args, info)


def _data_args(p: argparse.ArgumentParser, tokens: int, batch: int) -> None:
    p.add_argument("--corpus", default="wiki", help="corpus name (workbench.data.CORPORA; default wiki)")
    p.add_argument("--tokens", type=int, default=tokens, help=f"token budget (default {tokens})")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row, BOS included (default 128)")
    p.add_argument("--batch-size", type=int, default=batch, help=f"rows per batch (default {batch})")
    p.add_argument("--layers", type=_ints, default=None, help="comma-separated layers (default all)")
    p.add_argument("--eval-tokens", type=int, default=1024, help="held-out tokens for losses (default 1024)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the verbs sparsity, massive and probe."""
    p = sub.add_parser("sparsity", help="MLP activation sparsity per layer and neuron (train and held-out text)")
    add_model_args(p)
    _data_args(p, 16_384, 8)
    p.add_argument("--taus", type=_floats, default=[0.001, 0.01, 0.03, 0.1, 0.3, 1.0], help="|a| > tau grid")
    p.add_argument("--thresholds", action="store_true", help="also search the performance-aware cutoffs (slow)")
    p.add_argument("--threshold-layers", type=_ints, default=None, help="layers for the cutoff search (default all)")
    p.add_argument("--calib-tokens", type=int, default=1024, help="calibration tokens for the cutoffs")
    p.add_argument("--max-rise", type=float, default=0.01, help="allowed relative loss rise (default 0.01)")
    p.add_argument("--topk", type=_ints, default=None, help="comma-separated k for held-out loss versus top-k")
    p.set_defaults(func=cmd_sparsity)

    p = sub.add_parser("massive", help="massive activations in the residual stream and the zero/mean intervention")
    add_model_args(p)
    _data_args(p, 2048, 4)
    p.add_argument("--abs-threshold", type=float, default=100.0, help="massive when |a| > this (default 100)")
    p.add_argument("--ratio-threshold", type=float, default=1000.0, help="and |a| / median > this (default 1000)")
    p.add_argument("--no-intervention", action="store_true", help="skip the zero / mean / random intervention")
    p.add_argument("--intervention-layers", type=_ints, default=None,
                   help="layers to intervene at (default: where massive activations were found)")
    p.set_defaults(func=cmd_massive)

    p = sub.add_parser("probe", help="linear probes for text labels on the residual stream at every layer")
    add_model_args(p)
    p.add_argument("--corpus", default="tweets", help="labelled corpus (tweets or reviews; default tweets)")
    p.add_argument("--n", type=int, default=400, help="examples, class-balanced (default 400)")
    p.add_argument("--pool", choices=["last", "mean"], default="last", help="token pooling (default last)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-text-tokens", type=int, default=64, help="tokens per text, BOS included (default 64)")
    p.set_defaults(func=cmd_probe)
