"""Benchmark: dictionary training throughput of our trainer against a plain PyTorch loop on the same activations.

Run: ``.venv/bin/python bench/dictionaries.py [--source smollm2|random] [--tokens 65536] [--steps 16]``.
Activations: SmolLM2's ``blocks.3.ln2.hook_normalized`` harvested once (or random ones of the same width), 4,608
latents (8x), batch 4,096. Rows (all measured in this process, interleaved in rounds, best round kept):

- ``plain relu``: the straightforward loop (dense encoder and decoder, L1 penalty, Adam);
- ``ours relu``: :func:`circuits.dictionaries.train.train_dictionaries` (ReLU, norm-weighted L1) on a TensorBuffer;
- ``plain topk``: dense TopK (scatter into a dense code, dense decoder);
- ``ours topk``: our TopK with the sparse encoder-gradient / embedding-bag decoder path (and AuxK bookkeeping).

Also prints this machine's fp32 matmul rate ([4096, 576] @ [576, 4608]) and each row's achieved FLOP rate, counting
the dense work of a ReLU step as ``10 * B * d_in * d_sae`` (encoder forward and weight gradient, decoder forward and
both gradients) and of a sparse TopK step as ``2 * B * d_in * d_sae`` plus the k-sparse terms.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from circuits.dictionaries.buffer import TensorBuffer
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries

D_SAE_MULT, BATCH, K = 8, 4096, 32
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
    a, b = torch.randn(BATCH, d_in), torch.randn(d_in, d_sae)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * BATCH * d_in * d_sae * reps / (time.perf_counter() - t)


def plain_loop(x: torch.Tensor, steps: int, topk: bool) -> float:
    """The straightforward loop; returns tokens/s."""
    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    g = torch.Generator().manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) * 0.01)
    W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) * 0.01)
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=4e-4)
    n = x.shape[0] // BATCH
    t = time.perf_counter()
    for s in range(steps):
        xb = x[(s % n) * BATCH : (s % n + 1) * BATCH]
        pre = (xb - b_dec) @ W_enc + b_enc
        if topk:
            v, i = pre.topk(K, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
            loss = (z @ W_dec + b_dec - xb).pow(2).sum(-1).mean()
        else:
            z = F.relu(pre)
            loss = (z @ W_dec + b_dec - xb).pow(2).sum(-1).mean() + 1e-3 * z.sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - t)


def ours(x: torch.Tensor, steps: int, topk: bool) -> float:
    spec = DictSpec(HOOK, activation="topk" if topk else "relu", k=K if topk else None, l1=1e-3, expansion=D_SAE_MULT)
    cfg = TrainDictConfig(tokens=steps * BATCH, batch_size=BATCH, warmup_steps=10, log_every=10**9)
    buf = TensorBuffer({HOOK: x}, batch_size=BATCH, epochs=steps)
    t = time.perf_counter()
    train_dictionaries(None, None, [spec], cfg, buffer=buf, progress=False)
    return steps * BATCH / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["smollm2", "random"], default="smollm2")
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    x = activations(args.source, args.tokens)
    d_in, d_sae = x.shape[1], x.shape[1] * D_SAE_MULT
    rate = matmul_rate(d_in, d_sae)
    rows = {"plain relu": (plain_loop, False), "ours relu": (ours, False),
            "plain topk": (plain_loop, True), "ours topk": (ours, True)}
    best = {name: 0.0 for name in rows}
    for _ in range(args.rounds):
        for name, (fn, topk) in rows.items():
            best[name] = max(best[name], fn(x, args.steps, topk))
    dense = {"plain relu": 10, "ours relu": 10, "plain topk": 10, "ours topk": 2}
    print(f"activations: {args.source} {tuple(x.shape)}, d_sae {d_sae}, batch {BATCH}, TopK k={K}, "
          f"{args.steps} steps x {args.rounds} rounds (best kept), threads {torch.get_num_threads()}")
    print(f"fp32 matmul [{BATCH},{d_in}]@[{d_in},{d_sae}]: {rate / 1e9:.1f} GFLOP/s")
    print(f"{'trainer':<12} {'tokens/s':>10} {'vs plain':>9} {'GFLOP/s':>8} {'of matmul':>9}")
    out = {"matmul_gflops": rate / 1e9, "rows": {}}
    for name, tps in best.items():
        base = best["plain topk" if "topk" in name else "plain relu"]
        flops = tps * dense[name] * d_in * d_sae
        out["rows"][name] = {"tokens_per_s": tps, "ratio_vs_plain": tps / base, "gflops": flops / 1e9}
        print(f"{name:<12} {tps:>10.0f} {tps / base:>8.2f}x {flops / 1e9:>8.1f} {flops / rate:>8.0%}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
