"""Benchmark: a full attribution graph (batched backward passes) against a plain autograd Jacobian of the same
replacement model, same process.

Run: ``.venv/bin/python bench/attribution.py [--model smollm2-135m] [--tokens 10] [--k 8] [--rounds 3] [--quick]``.
The transcoders are random TopK-k transcoders (4x) on every layer (timing does not depend on what they learned); the
prompt is the first ``--tokens`` wiki tokens. Modes, interleaved in rounds (:func:`bench.timing.compare`):

- ``attribute``: :func:`circuits.attribution.attribute.attribute` for the salient logits, every active feature,
  ``--batch-size`` rows per backward pass;
- ``autograd jacobian``: ``torch.autograd.functional.jacobian`` of the map (feature activations, error vectors,
  token embeddings) -> (every active feature's pre-activation, every logit node's value), contracted with the source
  values into the same adjacency (one backward pass per output, as autograd does by default).

Both start from the same prepared :class:`~circuits.attribution.replacement.ReplacementModel`. Reported: seconds,
the cost ratio, the working memory of one call of each (peak resident memory above the resident size before it,
measured in this process one after the other before the timing rounds: the Jacobian's may reuse memory the
attribution freed, so its figure is a lower bound), and the largest edge difference between the two adjacencies
relative to the largest |edge|. circuit-tracer itself is not run here (it needs transformer-lens < 4 and a model
from its hub); the JSON says so. ``--quick``: 6 tokens, k = 4, 2 rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.memory import PeakMemory  # noqa: E402
from bench.timing import LoadWatch, compare, emit, table  # noqa: E402


def _jacobian_adjacency(rm, targets) -> torch.Tensor:
    """[F + K, F + (L + 1) * T] direct effects from a plain autograd Jacobian of the replacement model."""
    from circuits.attribution.replacement import Sources

    F = rm.n_features
    layer, pos, feat = rm.active[:, 0], rm.active[:, 1], rm.active[:, 2]
    enc = torch.stack([rm.sets[int(la)].W_enc[:, int(f)] for la, f in zip(layer, feat, strict=True)]) if F else None
    b_enc = torch.stack([rm.sets[int(la)].b_enc[int(f)] for la, f in zip(layer, feat, strict=True)]) if F else None

    def inputs(acts: torch.Tensor, errors: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        mlp_in, final = rm.run(Sources(acts[None], errors[None], embed[None]))
        pre = (mlp_in[0, layer, pos] * enc).sum(-1) + b_enc
        return torch.cat([pre, final[0, -1] @ targets.vectors.T + targets.constants])

    src = rm.sources
    J_acts, J_err, J_emb = torch.autograd.functional.jacobian(inputs, (src.acts[0], src.errors[0], src.embed[0]))
    rows = J_acts.shape[0]
    return torch.cat([J_acts * src.acts[0][None], (J_err * src.errors[0][None]).sum(-1).reshape(rows, -1),
                      (J_emb * src.embed[0][None]).sum(-1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 10; 6 with --quick)")
    parser.add_argument("--k", type=int, default=None, help="TopK of the random transcoders (default 8; 4 quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: 6 tokens, k 4, 2 rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_tokens = args.tokens or (6 if args.quick else 10)
    k = args.k or (4 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 3)

    from circuits.attribution.attribute import attribute, salient_logits
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
    from circuits.dictionaries.model import Dictionary
    from circuits.frozen.facts import ModelFacts
    from workbench.data import token_batches
    from workbench.models import load_model

    watch = LoadWatch()
    model = load_model(args.model, device=args.device)
    facts = ModelFacts.of(model)
    d = facts.d_model
    tcs = {layer: Dictionary.create("transcoder", d, 4 * d, activation="topk", k=k, seed=layer,
                                    hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                    hook_out=f"blocks.{layer}.hook_mlp_out")
           for layer in range(facts.n_layers)}
    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=n_tokens, batch_size=1)))
    tokens = batch.tokens[0, :n_tokens]
    rm = ReplacementModel(model, tokens, feature_sets_from_transcoders(tcs, facts))
    targets = salient_logits(rm)

    def full():
        return attribute(rm, targets, batch_size=args.batch_size)

    modes = {"attribute": full, "autograd jacobian": lambda: _jacobian_adjacency(rm, targets)}
    memory = {}
    for label, fn in modes.items():  # before the timing rounds, so that the first mode's memory is not reused
        with PeakMemory() as peak:
            fn()
        memory[label] = peak.result.to_json()
    comparison = compare(modes, rounds=rounds, warmup=0, load=watch)
    graph, jac = comparison.results["attribute"], comparison.results["autograd jacobian"]
    F, K = graph.n_features, graph.n_logits
    ours = torch.cat([graph.adjacency[:F, :graph.logit_start], graph.adjacency[graph.logit_start:, :graph.logit_start]])
    scale = float(ours.abs().max())
    max_diff = float((ours - jac.to(ours)).abs().max()) / scale
    ratio = comparison.ratio("autograd jacobian", "attribute")
    print(f"{args.model}, {n_tokens} tokens, {F} active features, {K} logits, {graph.n_nodes} nodes, "
          f"torch threads {torch.get_num_threads()}")
    print(table(comparison, "attribute"))
    print(f"autograd jacobian / attribute: {ratio:.2f}x the time; largest edge difference {max_diff:.2e} of max |edge|")
    for label, m in memory.items():
        print(f"working memory {label}: {m['working_mb']:.1f} MiB")
    emit({"bench": "attribution", "model": args.model, "tokens": n_tokens, "topk": k, "features": F, "logits": K,
          "nodes": graph.n_nodes, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
          "seconds_median": {label: t.median for label, t in comparison.timings.items()},
          "ratio_jacobian_to_attribute": ratio,
          "ratio_meaning": "seconds of the autograd Jacobian / seconds of attribute in the same round, median",
          "max_edge_diff_rel": max_diff, "working_memory_mb": {k_: m["working_mb"] for k_, m in memory.items()},
          "memory": memory, "circuit_tracer": "not run: it needs transformer-lens < 4 (this environment has 4) and "
          "its own transcoder and model downloads; compared against a plain autograd Jacobian instead",
          "timing": comparison.to_json(baseline="attribute"), "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
