"""Benchmark: one bigram-mask training step against one plain training step of the same model, same process.

Run: ``.venv/bin/python bench/bigram.py [--model toy/llama-d64-l2] [--batch-size 8] [--seq-len 64] [--rounds 5]``.
Modes, interleaved in rounds (:func:`bench.timing.compare`) on one batch of Wikipedia rows:

- ``forward``: the bare forward pass (no gradient);
- ``weight step``: forward, the bigram cross-entropy, backward into the weights (what training the model itself
  costs; the baseline);
- ``mask step``: one step of :func:`circuits.bigram.train.train_masks`' loop: soft masks sigmoid(beta * s) over every
  attention and MLP matrix, the masked forward through ``torch.func.functional_call``, the bigram cross-entropy
  plus the kept-fraction penalty, backward into the mask logits and an Adam step.

Prints a table and one JSON object as its last line; the ratio ``mask step / weight step`` is the overhead of the
masks (their elementwise work and the optimizer over one logit per masked weight).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy/llama-d64-l2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from circuits.bigram.counts import BigramCounter
    from circuits.bigram.masks import find_groups, masked_logits
    from circuits.bigram.train import bigram_loss
    from workbench.data import token_batches
    from workbench.models import load_model

    watch = LoadWatch()
    model = load_model(args.model, device=args.device)
    counter = BigramCounter(int(model.cfg.d_vocab))
    for b in token_batches("wiki", model.tokenizer, seq_len=args.seq_len, batch_size=64, max_tokens=100_000):
        counter.add(b.tokens, b.attention_mask)
    table_ = counter.table().to(args.device)
    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=args.seq_len, batch_size=args.batch_size,
                                    seed=3)))
    tokens, real = batch.tokens.to(args.device), batch.attention_mask.to(args.device).bool()
    groups = find_groups(model)
    n = sum(g.size for g in groups)
    logits = {g.name: torch.zeros(g.shape, device=args.device, requires_grad=True) for g in groups}
    optimizer = torch.optim.Adam(list(logits.values()), lr=0.05)
    params = dict(model.named_parameters())
    weights = [params[g.name] for g in groups]

    def weight_step() -> None:
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        use = real & table_.kept(tokens)
        log_q = torch.log_softmax(model(tokens).float(), -1)[use]
        table_.cross_entropy(log_q, tokens[use]).mean().backward()
        for w in weights:
            w.requires_grad_(False)
            w.grad = None

    def mask_step() -> None:
        soft = {k: torch.sigmoid(10.0 * s) for k, s in logits.items()}
        ce, _ = bigram_loss(model, table_, tokens, real, soft)
        loss = ce + 10.0 * sum(m.sum() for m in soft.values()) / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        ones = {g.name: torch.ones(g.shape, device=args.device) for g in groups}
        exact = bool(torch.equal(masked_logits(model, tokens, ones), model(tokens)))
    modes = {"forward": lambda: torch.no_grad()(model)(tokens), "weight step": weight_step, "mask step": mask_step}
    comparison = compare(modes, rounds=args.rounds, warmup=1, load=watch, min_seconds=0.5)
    ratio = comparison.ratio("mask step", "weight step")
    print(f"{args.model}, {int(real.sum())} tokens, {n:,} masked weights, torch threads {torch.get_num_threads()}")
    print(table(comparison, "weight step"))
    print(f"mask step / weight step: {ratio:.3f} (median of per-round ratios); all-ones mask exact: {exact}")
    emit({"bench": "bigram", "model": args.model, "tokens": int(real.sum()), "masked_weights": n,
          "threads": torch.get_num_threads(), "ratio_mask_to_weight_step": ratio,
          "ratio_mask_step_to_forward": comparison.ratio("mask step", "forward"), "all_ones_exact": exact,
          "timing": comparison.to_json(baseline="weight step"), "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
