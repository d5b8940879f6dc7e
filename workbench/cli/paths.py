"""``workbench paths``: the path-ensemble analysis of a prompt or a task (runs of kind ``paths``)."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_model_args, report_run


def cmd_paths(args: argparse.Namespace) -> int:
    from circuits.paths.analysis import analyse_paths, save_paths_run
    from circuits.paths.frozen import PathInputError
    from workbench.models import load_model
    from workbench.store import Store

    if (args.prompt is None) == (args.task is None):
        raise PathInputError("give either --prompt TEXT or --task NAME (not both)")
    if args.max_length is not None and args.max_length < 1:
        raise PathInputError(f"--max-length must be >= 1, got {args.max_length}")
    if args.prompt is not None and not args.prompt.strip():
        raise PathInputError("empty prompt: --prompt needs at least one non-blank character")
    model = load_model(args.model, device=args.device)
    task = None
    if args.task is not None:
        from workbench.data import make_task

        task = make_task(args.task, model.tokenizer, n=args.n)
    result = analyse_paths(model, args.prompt, task=task, max_length=args.max_length, search_length=args.search_length,
                           beam=args.beam, top=args.top, lesion_draws=args.lesion_draws, lesion_step=args.lesion_step,
                           progress=not args.json)
    info = save_paths_run(Store(), result, args.model)
    s = result.summary
    lines = [f"paths run {info.run_id}",
             f"{s['n_sublayers']} sublayers; completeness error {s['completeness_error']:.2e}; clean loss {s['clean_loss']:.3f};"
             f" effective length {s['effective_length']:.2f}",
             "length  paths  target  loss(<=k)"]
    lines += [f"{r.length:>6} {r.n_paths:>6} {r.target:>8.3f} {r.cumulative_loss:>8.3f}" for r in result.lengths.itertuples()]
    lines += ["top paths:"] + [f"  {r.score:+.3f}  {r.path}" for r in result.top_paths.head(10).itertuples()]
    return report_run(args, info, lines, s)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``paths`` verb."""
    p = sub.add_parser("paths", help="split the logits exactly by path length; top paths; lesion curves")
    add_model_args(p)
    p.add_argument("--prompt", default=None, help="text to analyse (target: the top prediction at its last token)")
    p.add_argument("--task", default=None, help="a task (induction, greater-than, ioi, sentiment): target logit difference")
    p.add_argument("--n", type=int, default=4, help="examples of the task (default 4)")
    p.add_argument("--max-length", type=int, default=None, help="keep path lengths up to this apart (>= 1; default all)")
    p.add_argument("--search-length", type=int, default=3, help="longest path of the top-path search (default 3)")
    p.add_argument("--beam", type=int, default=8, help="beam width of the top-path search (default 8)")
    p.add_argument("--top", type=int, default=20, help="number of top paths kept (default 20)")
    p.add_argument("--lesion-draws", type=int, default=2, help="random-lesion draws per k (0: no lesions; default 2)")
    p.add_argument("--lesion-step", type=int, default=1, help="delete k = step, 2 step, ..., n sublayers (default 1)")
    p.set_defaults(func=cmd_paths)
