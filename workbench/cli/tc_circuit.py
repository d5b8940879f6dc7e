"""``workbench tc-circuit``: a weights-based circuit through transcoders for one prompt (METHODS.md section 1)."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_model_args, report_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tc-circuit",
        help="greedy path search through transcoders from a logit difference or a feature; stores a tc-circuit run",
        description="Freeze attention patterns and norm scales from the clean run of one prompt, replace the MLPs of "
        "the given layers by transcoders plus error nodes, search paths back from the target and store the circuit.",
    )
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (BOS is prepended when the tokenizer has one)")
    src.add_argument("--task", help="a task (greater-than, ioi, sentiment, induction): its --example-th prompt")
    p.add_argument("--example", type=int, default=0, help="which example of the task (default 0)")
    p.add_argument("--n", type=int, default=16, help="task examples for the clean/spliced metric (default 16)")
    p.add_argument("--transcoder", action="append", default=[], metavar="FOLDER",
                   help="a transcoder folder in SAELens format (repeat for several layers)")
    p.add_argument("--target", default="logit", help="'logit' (a logit difference) or a feature id like tc5.f12@7")
    p.add_argument("--correct", help="token (text) whose logit counts +1 (a task supplies its own)")
    p.add_argument("--incorrect", help="token (text) whose logit counts -1 (a task supplies its own)")
    p.add_argument("--position", type=int, default=-1, help="target position (default: the last)")
    p.add_argument("--beam-width", type=int, default=8, help="paths kept per step (num_branches, default 8)")
    p.add_argument("--depth", type=int, default=4, help="steps back from the target (default 4)")
    p.set_defaults(func=cmd_tc_circuit)


def _single_token(tokenizer, text: str, what: str) -> int:
    from workbench.data.tokens import encode

    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise ValueError(f"--{what} {text!r} is {len(ids)} tokens for this tokenizer; give a single token")
    return ids[0]


def cmd_tc_circuit(args: argparse.Namespace) -> int:
    import torch

    from circuits.dictionaries.saelens_io import hook_layer, load_dictionary
    from circuits.transcoder_paths.runs import save_tc_circuit, tc_circuit
    from workbench.data.tasks import make_task
    from workbench.data.tokens import bos_id, encode
    from workbench.models import load_model
    from workbench.store import Store

    if args.beam_width < 1 or args.depth < 1:
        raise ValueError(f"--beam-width and --depth must be at least 1, got {args.beam_width} and {args.depth}")
    model = load_model(args.model, device=args.device)
    tokenizer = model.tokenizer
    transcoders = {}
    for folder in args.transcoder:
        tc = load_dictionary(folder, device=str(model.W_E.device))
        layer = hook_layer(tc.hook_in)
        if layer is None or layer in transcoders:
            raise ValueError(f"{folder}: reads {tc.hook_in}; expected one transcoder per layer, on blocks.L.ln2.hook_normalized")
        transcoders[layer] = tc
    task = None
    if args.task:
        task = make_task(args.task, tokenizer, n=max(args.n, args.example + 1))
        if not 0 <= args.example < len(task):
            raise ValueError(f"--example {args.example} is outside the task's {len(task)} examples")
        tokens = task.clean_tokens[args.example]
        correct, incorrect = int(task.correct[args.example]), int(task.incorrect[args.example])
        position = int(task.answer_positions[args.example]) if args.position == -1 else args.position
    else:
        bos = bos_id(tokenizer)
        tokens = torch.tensor(([bos] if bos is not None else []) + encode(tokenizer, args.prompt))
        correct = incorrect = None
        position = args.position
    if args.correct is not None:
        correct = _single_token(tokenizer, args.correct, "correct")
    if args.incorrect is not None:
        incorrect = _single_token(tokenizer, args.incorrect, "incorrect")
    result = tc_circuit(model, tokens, transcoders, args.target, correct=correct, incorrect=incorrect,
                        position=position, num_branches=args.beam_width, max_depth=args.depth, task=task)
    params = {"prompt": args.prompt, "task": args.task, "example": args.example, "target": args.target,
              "correct": correct, "incorrect": incorrect, "position": position, "beam_width": args.beam_width,
              "depth": args.depth, "transcoders": args.transcoder}
    info = save_tc_circuit(Store(), result, model=args.model, params=params)
    s = result.summary
    lines = [f"target {s['target_label']}: {s['target_value']:.4f} (sum of contributions {s['contributions_sum']:.4f})",
             f"circuit: {s['nodes']} nodes, {s['edges']} edges; top paths:"]
    lines += [f"  {v:+.4f}  {p}" for p, v in zip(result.paths["path"][:8], result.paths["value"][:8], strict=True)]
    if "metric_clean" in s:
        lines.append(f"{s['metric']}: clean {s['metric_clean']:.4f}, spliced {s['metric_spliced']:.4f}")
    return report_run(args, info, lines, s)
