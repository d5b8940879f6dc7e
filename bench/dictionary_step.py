"""Benchmark: where one dictionary training step spends its time, component by component.

Run: ``.venv/bin/python bench/dictionary_step.py [--activation topk|relu] [--threads 2] [--steps 5] [--dead 0]
[--cpu-time] [--autocast bf16]``. Prints a table, then one JSON object as its last line.

The step is the trainer's own (:func:`circuits.dictionaries.train._step_losses`, backward, the decoder-parallel
projection, fused Adam from :func:`circuits.dictionaries.precision.make_adam`, TopK's row renormalisation, the
dead-latent counters) at the shape of ``bench/dictionaries.py`` (d_in 576, d_sae 4,608, batch 4,096, k 32) on
random activations, after a few warm-up steps; ``--dead N`` marks N latents dead so AuxK runs (ranking among their
columns). Components are timed back to back (the CPU runs them synchronously; on CUDA each is synchronised);
the encoder's dense product alone is timed too, the step's floor, and each row's share of the step is printed.
``--cpu-time`` times with the process's CPU time instead of the wall clock: on a machine shared with other jobs and
one thread, it does not count the time others held the core.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from bench.timing import LoadWatch, emit
    from circuits.dictionaries.model import Dictionary
    from circuits.dictionaries.precision import autocast_context, make_adam
    from circuits.dictionaries.train import DictSpec, _step_losses

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activation", choices=["topk", "relu"], default="topk")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dead", type=int, default=0, help="latents marked dead (AuxK runs when > 0)")
    p.add_argument("--cpu-time", action="store_true", help="time with the process's CPU time")
    p.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    clock = time.process_time if args.cpu_time else time.perf_counter
    B, d_in, d_sae, k = 4096, 576, 4608, 32
    watch = LoadWatch()
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, d_in, generator=gen).to(dev) for _ in range(4)]
    d = Dictionary.create("sae", d_in, d_sae, activation=args.activation, k=k if args.activation == "topk" else None,
                          hook_in="h", seed=0, device=dev)
    with torch.no_grad():
        d.W_enc.mul_(0.3)
    spec = DictSpec("h", activation=args.activation, k=k if args.activation == "topk" else None, l1=1e-3)
    opt = make_adam(d.parameters(), 4e-4, (0.9, 0.999))
    dead = torch.zeros(d_sae, dtype=torch.bool, device=dev)
    dead[torch.randperm(d_sae, generator=gen)[: args.dead].to(dev)] = True
    since = torch.zeros(d_sae, dtype=torch.long, device=dev)
    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = clock()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        spent[name] += clock() - t
        return out

    def step(x: torch.Tensor) -> None:
        loss, _, fired = timed("forward (encoder, top-k, sparse decoder, AuxK)" if args.activation == "topk"
                               else "forward (fused ReLU code)",
                               lambda: _step_losses(d, x, x, spec, dead, 1 / 32, log=False, autocast=args.autocast))
        timed("zero_grad", lambda: opt.zero_grad(set_to_none=True))
        timed("backward", loss.backward)
        if args.activation == "topk":
            timed("remove_parallel_gradient", d.remove_parallel_gradient)
        timed("Adam (fused)", opt.step)
        if args.activation == "topk":
            with torch.no_grad():
                timed("renormalise decoder rows", lambda: d.W_dec.div_(d.W_dec.norm(dim=1, keepdim=True)
                                                                         .clamp_min(1e-12)))
        timed("dead-latent counters", lambda: since.add_(B).masked_fill_(fired, 0))

    for i in range(3):
        step(xs[i % len(xs)])
    spent.clear()
    for i in range(args.steps):
        step(xs[i % len(xs)])
    with torch.no_grad(), autocast_context(args.autocast, dev):  # the floor in the step's own precision
        xin = xs[0] - d.b_dec
        for _ in range(args.steps):
            timed("(encoder product alone)", lambda: torch.addmm(d.b_enc, xin, d.W_enc))
    total = sum(v for n, v in spent.items() if not n.startswith("(")) / args.steps
    floor = spent["(encoder product alone)"] / args.steps
    print(f"{args.activation} step at d_in {d_in}, d_sae {d_sae}, batch {B}, k {k}, dead {args.dead}, threads "
          f"{torch.get_num_threads()}, device {dev}, autocast {args.autocast}, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    rows = {}
    for name, v in spent.items():
        ms = v / args.steps * 1e3
        rows[name] = ms
        print(f"{name:<50} {ms:9.1f} ms {ms / 1e3 / total:7.1%}")
    print(f"{'step':<50} {total * 1e3:9.1f} ms   (encoder product alone: {floor / total:.0%} of the step)")
    print(watch.describe())
    emit({"bench": "dictionary_step", "activation": args.activation, "dead": args.dead, "ms": rows,
          "step_ms": total * 1e3, "encoder_share": floor / total, "load": watch.to_json(),
          "unreliable": watch.unreliable, "cpu_time": args.cpu_time})


if __name__ == "__main__":
    main()
