"""Benchmark: feature cards (two streamed passes with top examples, interval samples and histograms) against the bare
work they cannot avoid, two harvests that only encode the same layers.

Run: ``.venv/bin/python bench/feature_cards.py [--model toy/llama-d64-l4] [--tokens 8192] [--features 200]
[--rounds 5] [--quick]``. Prints a table, then one JSON object as its last line.

Both modes stream the same held-out wiki batches through the model with the same hooks; the baseline's consumer
encodes every layer's MLP input with its transcoder and keeps nothing, the other is
:func:`circuits.attribution.features.feature_cards` for ``--features`` features (the cards included). The ratio is
the cards' seconds over the baseline's in the same round (median over rounds): the price of the bookkeeping. The state
kept between batches is reported at two token budgets (it must not grow with the tokens).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


class EncodeOnly:
    """The baseline consumer: encodes each hooked MLP input with its layer's feature set, keeps nothing."""

    def __init__(self, sets) -> None:
        self.sets, self.hooks = sets, [f"blocks.{la}.ln2.hook_normalized" for la in sorted(sets)]

    def consume(self, name, act, mask) -> None:
        s = self.sets[int(name.split(".")[1])]
        s.encode(act.to(s.W_enc.dtype) @ s.W_enc + s.b_enc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy/llama-d64-l4")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,048 tokens, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 2048, 3
    from circuits.attribution import features as fc
    from circuits.attribution.replacement import feature_sets_from_transcoders
    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.transcoder_set import transcoders_by_layer
    from circuits.frozen.facts import ModelFacts
    from workbench.harvest import harvest
    from workbench.models import load_model

    model = load_model(args.model)
    tcs, _ = transcoders_by_layer(model, None, 8192)
    sets = {s.layer: s for s in feature_sets_from_transcoders(tcs, ModelFacts.of(model))}
    gen = torch.Generator().manual_seed(0)
    pairs = sorted({(la, int(f)) for la in sets for f in torch.randperm(sets[la].n_features, generator=gen)[
        :max(1, args.features // len(sets))].tolist()})

    def source(tokens: int):
        return corpus_source(model.tokenizer, "wiki", seq_len=64, batch_size=16, split="heldout", max_tokens=tokens)

    src = source(args.tokens)

    def bare():
        for _ in range(2):
            harvest(model, src(), [EncodeOnly(sets)], max_tokens=args.tokens, progress=False)

    def cards():
        return fc.feature_cards(model, sets, pairs, src, max_tokens=args.tokens)

    cmp = compare({"encode only (2 passes)": bare, "feature cards": cards}, rounds=args.rounds, load=LoadWatch())
    print(table(cmp, "encode only (2 passes)", work=2 * args.tokens))
    state = {}
    for tokens in (args.tokens // 2, args.tokens):
        seen = {}
        real = fc._Harvester._merge

        def spy(self, *a, _real=real, _seen=seen):
            _real(self, *a)
            _seen["bytes"] = sum(t.numel() * t.element_size() for t in self.state.values())

        fc._Harvester._merge = spy
        try:
            fc.feature_cards(model, sets, pairs, source(tokens), max_tokens=tokens)
        finally:
            fc._Harvester._merge = real
        state[tokens] = seen.get("bytes", 0)
        print(f"state kept between batches at {tokens} tokens: {state[tokens]:,} bytes")
    emit({"bench": "feature_cards", "model": args.model, "tokens": args.tokens, "features": len(pairs),
          "ratio_to_encode_only": cmp.ratio("feature cards", "encode only (2 passes)"),
          "state_bytes": {str(k): v for k, v in state.items()}, "timings": cmp.to_json("encode only (2 passes)")})


if __name__ == "__main__":
    main()
