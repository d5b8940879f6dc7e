"""Benchmark: dictionary training throughput of our trainer against a plain PyTorch loop, SAELens and sparsify.

Run: ``.venv/bin/python bench/dictionaries.py [--source smollm2|random] [--tokens 65536] [--steps 16] [--rounds 5]
[--threads 2] [--saelens-python /work/venvs/saelens/bin/python] [--sparsify-python /work/venvs/sparsify/bin/python]
[--quick]``. Prints a table, then one JSON object as its last line. ``--quick``: random activations, 8,192 rows,
3 steps, 5 rounds.

Activations: SmolLM2's ``blocks.3.ln2.hook_normalized`` harvested once (or random ones of the same width); every
row trains an SAE on exactly these rows, in the same order (consecutive slices of ``--batch`` rows), with 4,608 latents
(8 x 576), batch 4,096, Adam (lr 4e-4, betas 0.9/0.999), ReLU with an L1 coefficient of 1e-3 on decoder-norm-weighted
activations, or TopK with k = 32, and the same torch thread count. Rows:

- ``plain relu``: the straightforward loop (dense encoder and decoder, decoder-norm-weighted L1 as ours, Adam);
- ``ours relu``: :func:`circuits.dictionaries.train.train_dictionaries` (fused ReLU step) on a TensorBuffer;
- ``saelens relu``: SAELens' ``StandardTrainingSAE`` driven by its own ``SAETrainer.step`` (its public per-batch
  training seam: ``training_forward_pass``, firing statistics, backward, gradient clipping, Adam, schedulers);
- ``plain topk``: dense TopK (scatter into a dense code, dense decoder);
- ``ours topk``: our TopK with the sparse encoder-gradient / embedding-bag decoder path (and AuxK bookkeeping);
- ``saelens topk`` / ``saelens topk sparse``: SAELens' ``TopKTrainingSAE`` through ``SAETrainer.step``, with dense
  activations (its default) and with ``use_sparse_activations=True``. The sparse variant does not run on CPU with
  torch 2.13: its backward stops with ``NotImplementedError: Could not run 'aten::view' with arguments from the
  'SparseCPU' backend`` (the COO code's gradient), so that row is reported as a note;
- ``sparsify topk``: EleutherAI sparsify's ``SparseCoder`` with the inner step of its ``Trainer.fit`` (decoder rows
  set to unit norm, ``forward(x, dead_mask=...)``, loss ``fvu + auxk_alpha * auxk_loss``, parallel decoder gradient
  removed, Adam, linear warm-up); sparsify has no ReLU/L1 coder, so it has only a TopK row.

Latents count as dead after 10 steps without firing in every implementation that tracks them (ours, SAELens,
sparsify), so AuxK terms switch on at the same time. The libraries run in their own virtualenvs (``--saelens-python``,
``--sparsify-python``; rows are skipped with a note when a path is absent), in a child process that loads the same
activations from a temporary safetensors file and times its own step loop; ours times the whole
``train_dictionaries`` call (model build and data-dependent initialisation included). Measured: SAELens 6.54.12 and
eai-sparsify 1.3.3, both on torch 2.13.0 (CPU wheels), installed with ``pip install torch==2.13.0 sae-lens`` /
``... eai-sparsify`` in fresh virtualenvs.

Measured on this 2-core machine, quiet (load average at most 1.92), ``--source smollm2 --threads 2``, two runs:
``--tokens 65536 --steps 16 --rounds 4`` / ``--tokens 131072 --steps 32 --rounds 3``: matmul 179 / 172 GFLOP/s;
ours TopK 19,971 / 20,545 tokens/s (best round), 61 % / 65 % of the matmul rate in useful FLOPs, 1.97x / 1.87x
sparsify (median of per-round ratios; best rounds 1.97x / 1.96x), 6.5x / 7.5x SAELens, 4.2x / 4.3x plain; ours ReLU
6,177 / 6,573 tokens/s, 92 % / 101 % of the matmul rate, 1.51x / 1.67x SAELens, 1.29x / 1.39x plain. Earlier runs on
a loaded machine (load 1.2-1.9 with rounds spread by up to 1.7x) gave TopK 1.83x / 1.55x sparsify and ReLU 1.41x /
1.61x SAELens. Where one step's time goes: ``bench/dictionary_step.py`` (TopK at 2 threads:
the encoder's dense product 65 % of the step, the top-k selection about 15 %, the sparse products, Adam and the
decoder projection the rest; the whole call adds the dictionary's build and data-dependent start, about one step).

Every row runs once untimed (a warm-up; a library row that fails there is dropped with a note), then the rows run
interleaved in rounds (:func:`bench.timing.compare`, order rotated each round); tokens/s is from each row's best
round, and ``ours/this`` is the median over rounds of the per-round ratio, with the load average recorded and a run
whose load rose above the core count flagged unreliable. Also printed: this machine's fp32 matmul rate ([B, 576] @ [576, 4608])
and each row's achieved rate in *useful* FLOPs: the work the step's mathematics needs, the same count for every row of a
kind, whatever an implementation does on top. ReLU: ``10 * B * d_in * d_sae`` (encoder forward and weight gradient,
decoder forward and both gradients). TopK: ``2 * B * d_in * d_sae`` (dense encoder forward, needed to rank the
latents) plus ``8 * B * k * d_in`` (k-sparse decoder forward, both decoder gradients, encoder weight gradient).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__" and "--child" not in sys.argv:  # a library child runs in its own venv, without bench/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

D_SAE_MULT, BATCH, K, L1, LR, WARMUP, DEAD_STEPS = 8, 4096, 32, 1e-3, 4e-4, 10, 10
HOOK = "blocks.3.ln2.hook_normalized"


def activations(source: str, tokens: int) -> torch.Tensor:
    """[tokens, 576] activations: SmolLM2's HOOK over wiki text, or standard normal ones."""
    if source == "random":
        return torch.randn(tokens, 576, generator=torch.Generator().manual_seed(0))
    from circuits.dictionaries.buffer import ActivationBuffer, corpus_source
    from workbench.models import load_model, load_tokenizer

    model = load_model("smollm2-135m", device="cpu")
    src = corpus_source(load_tokenizer("smollm2-135m"), "wiki", seq_len=128, batch_size=32, max_tokens=tokens)
    buf = ActivationBuffer(model, src, [HOOK], block_batches=10**6, batch_size=BATCH)
    return next(buf.blocks()).rows[HOOK].clone()


def matmul_rate(d_in: int, d_sae: int, reps: int = 10) -> float:
    """fp32 FLOP/s of [BATCH, d_in] @ [d_in, d_sae] (best of three timings)."""
    a, b = torch.randn(BATCH, d_in), torch.randn(d_in, d_sae)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * BATCH * d_in * d_sae * reps / best


def batch_at(x: torch.Tensor, step: int) -> torch.Tensor:
    """The step's [BATCH, d_in] rows: consecutive slices of x, wrapping around (a view, no copy)."""
    n = x.shape[0] // BATCH
    return x[(step % n) * BATCH : (step % n + 1) * BATCH]


def plain_loop(x: torch.Tensor, steps: int, topk: bool) -> float:
    """The straightforward loop (autograd through the formulas, Adam); returns tokens/s."""
    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    g = torch.Generator().manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) * 0.01)
    W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) * 0.01)
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=LR)
    t = time.perf_counter()
    for s in range(steps):
        xb = batch_at(x, s)
        pre = (xb - b_dec) @ W_enc + b_enc
        if topk:
            v, i = pre.topk(K, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
            loss = (z @ W_dec + b_dec - xb).pow(2).sum(-1).mean()
        else:
            z = F.relu(pre)
            penalty = (z * W_dec.norm(dim=1)).sum(-1).mean()
            loss = (z @ W_dec + b_dec - xb).pow(2).sum(-1).mean() + L1 * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - t)


def ours(x: torch.Tensor, steps: int, topk: bool) -> float:
    """Our trainer on a TensorBuffer over x; returns tokens/s (the whole call timed)."""
    from circuits.dictionaries.buffer import TensorBuffer
    from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries

    spec = DictSpec(HOOK, activation="topk" if topk else "relu", k=K if topk else None, l1=L1, expansion=D_SAE_MULT)
    cfg = TrainDictConfig(tokens=steps * BATCH, batch_size=BATCH, lr=LR, warmup_steps=WARMUP, log_every=10**9,
                          dead_tokens=DEAD_STEPS * BATCH)
    buf = TensorBuffer({HOOK: x}, batch_size=BATCH, epochs=steps)
    t = time.perf_counter()
    train_dictionaries(None, None, [spec], cfg, buffer=buf, progress=False)
    return steps * BATCH / (time.perf_counter() - t)


# ---------------------------------------------------------------- library rows (run in the library's own virtualenv)
def child_saelens(x: torch.Tensor, steps: int, variant: str) -> float:
    """SAELens: ``SAETrainer.step`` on each batch; variant ``relu``, ``topk`` or ``topk-sparse``."""
    from sae_lens import (
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    if variant == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=L1))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=K, aux_loss_coefficient=1 / 32,
                                                    use_sparse_activations=variant == "topk-sparse"))
    cfg = SAETrainerConfig(total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=LR, lr_end=LR / 10,
                           lr_warm_up_steps=WARMUP, dead_feature_window=DEAD_STEPS, device="cpu",
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    t = time.perf_counter()
    for s in range(steps):
        trainer.step(batch_at(x, s))
        trainer.n_training_steps += 1
    return steps * BATCH / (time.perf_counter() - t)


def child_sparsify(x: torch.Tensor, steps: int, variant: str) -> float:  # noqa: ARG001
    """sparsify: a TopK ``SparseCoder`` trained with the inner step of ``sparsify.Trainer.fit``."""
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=K), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, steps)
    since = torch.zeros(d_sae, dtype=torch.long)
    auxk_alpha = 1 / 32
    t = time.perf_counter()
    for s in range(steps):
        xb = batch_at(x, s)
        if s == 0:
            sae.b_dec.data = xb.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x=xb, y=xb, dead_mask=since > DEAD_STEPS * BATCH)
        did_fire = torch.zeros(d_sae, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        since += BATCH
        since[did_fire] = 0
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
    return steps * BATCH / (time.perf_counter() - t)


CHILDREN = {"saelens": child_saelens, "sparsify": child_sparsify}


def run_child(python: str, lib: str, variant: str, acts: Path, steps: int, threads: int) -> float | str:
    """tokens/s of a library row measured in a child process of ``python``; an error message on failure."""
    cmd = [python, __file__, "--child", lib, "--variant", variant, "--acts", str(acts), "--steps", str(steps),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        lines_err = proc.stderr.strip().splitlines() or ["no output"]
        last = next((ln for ln in reversed(lines_err) if "Error" in ln), lines_err[-1])
        return f"{lib} {variant} failed (exit {proc.returncode}): {last[:300]}"
    return float(json.loads(lines[-1])["tokens_per_s"])


def child_main(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    x = load_file(args.acts)["x"]
    print(json.dumps({"tokens_per_s": CHILDREN[args.child](x, args.steps, args.variant)}))


def useful_flops_per_token(name: str, d_in: int, d_sae: int) -> float:
    return 10 * d_in * d_sae if "relu" in name else 2 * d_in * d_sae + 8 * K * d_in


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["smollm2", "random"], default=None, help="default smollm2 (random quick)")
    p.add_argument("--tokens", type=int, default=None, help="activation rows (default 65536; 8192 quick)")
    p.add_argument("--steps", type=int, default=None, help="training steps per row and round (default 16; 3 quick)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smallest settings: random activations, few rows and steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every row (default: torch's default)")
    p.add_argument("--saelens-python", default="/work/venvs/saelens/bin/python")
    p.add_argument("--sparsify-python", default="/work/venvs/sparsify/bin/python")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--acts", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 16)
    if args.child:  # in the library's virtualenv: no bench package there
        child_main(args)
        return
    from bench.timing import LoadWatch, Timed, compare, emit

    source = args.source or ("random" if args.quick else "smollm2")
    n_rows = args.tokens or (8192 if args.quick else 65536)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    watch = LoadWatch()
    x = activations(source, n_rows)
    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    rate = matmul_rate(d_in, d_sae)
    work = args.steps * BATCH

    def timed(tokens_per_s: float | str) -> Timed | str:
        return tokens_per_s if isinstance(tokens_per_s, str) else Timed(work / tokens_per_s)

    rows = {"plain relu": lambda: timed(plain_loop(x, args.steps, False)),
            "ours relu": lambda: timed(ours(x, args.steps, False)),
            "plain topk": lambda: timed(plain_loop(x, args.steps, True)),
            "ours topk": lambda: timed(ours(x, args.steps, True))}
    notes = []
    tmp = tempfile.TemporaryDirectory()
    acts = Path(tmp.name) / "acts.safetensors"
    from safetensors.torch import save_file

    save_file({"x": x.contiguous()}, str(acts))
    libs = [("saelens", args.saelens_python, [("saelens relu", "relu"), ("saelens topk", "topk"),
                                              ("saelens topk sparse", "topk-sparse")]),
            ("sparsify", args.sparsify_python, [("sparsify topk", "topk")])]
    for lib, python, variants in libs:
        if not python or not Path(python).exists():
            notes.append(f"{lib}: not installed (no interpreter at {python!r}; pass --{lib}-python)")
            continue
        for name, variant in variants:
            rows[name] = (lambda py=python, lb=lib, v=variant: timed(run_child(py, lb, v, acts, args.steps, threads)))
    for name in list(rows):  # the warm-up pass: a row that fails here is dropped with its note
        got = rows[name]()
        if isinstance(got, str):
            notes.append(got)
            del rows[name]
    def must(got: Timed | str) -> Timed:
        if isinstance(got, str):
            raise RuntimeError(f"a row that ran in the warm-up failed in a timed round: {got}")
        return got

    comparison = compare({name: (lambda fn=fn: must(fn())) for name, fn in rows.items()}, rounds=args.rounds,
                         warmup=0, load=watch)
    comparison.warmup = 1  # the untimed pass above
    tmp.cleanup()
    print(f"activations: {source} {tuple(x.shape)}, d_sae {d_sae}, batch {BATCH}, TopK k={K}, L1 {L1}, "
          f"{args.steps} steps x {args.rounds} rounds after a warm-up, torch threads {threads}")
    print(f"fp32 matmul [{BATCH},{d_in}]@[{d_in},{d_sae}]: {rate / 1e9:.1f} GFLOP/s")
    print(f"{'trainer':<20} {'tokens/s':>10} {'median':>10} {'ours/this':>10} {'useful GFLOP/s':>15} {'of matmul':>10}")
    out = {"bench": "dictionaries", "matmul_gflops": rate / 1e9, "threads": threads, "source": source,
           "steps": args.steps, "rows": {}, "ratios": {}, "notes": notes}
    for name, t in comparison.timings.items():
        mine = "ours topk" if "topk" in name else "ours relu"
        over = comparison.ratio(name, mine)  # this row's seconds over ours, same round: ours' speed over this one's
        tps = work / t.best
        flops = tps * useful_flops_per_token(name, d_in, d_sae)
        out["rows"][name] = {"tokens_per_s": tps, "tokens_per_s_median": work / t.median, "ours_over_this": over,
                             "useful_gflops": flops / 1e9, "fraction_of_matmul": flops / rate,
                             "rounds_s": list(t.seconds)}
        if name != mine:
            out["ratios"][f"{mine} / {name}"] = over
        print(f"{name:<20} {tps:>10.0f} {work / t.median:>10.0f} {over:>9.2f}x {flops / 1e9:>15.1f} {flops / rate:>9.0%}")
    for note in notes:
        print("note:", note)
    print(watch.describe())
    out.update(ratios_meaning="ours' throughput over the row's (median over rounds of per-round ratios)",
               rounds=args.rounds, load=watch.to_json(), unreliable=watch.unreliable)
    emit(out)


if __name__ == "__main__":
    main()
