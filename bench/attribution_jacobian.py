"""The fallback of ``bench/attribution.py`` when circuit-tracer cannot run: attribution against a plain autograd
Jacobian of the same replacement model, same process.

``autograd jacobian``: ``torch.autograd.functional.jacobian`` of the map (feature activations, error vectors, token
embeddings) -> (every active feature's pre-activation, every logit node's value), contracted with the source values
into the same adjacency (one backward pass per output, as autograd does by default). Reported: seconds, the cost
ratio, the working memory of one call of each (measured one after the other before the timing rounds: the
Jacobian's may reuse memory the attribution freed, so its figure is a lower bound), the largest edge difference
relative to the largest |edge|, and why circuit-tracer was not run.
"""

from __future__ import annotations

import torch

from bench.memory import PeakMemory
from bench.timing import compare, emit, table


def jacobian_adjacency(rm, targets) -> torch.Tensor:
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


def jacobian_main(model, tokens, tcs, facts, targets, args, rounds: int, watch, why: str) -> None:
    """Time attribution against the Jacobian, print the table and the one JSON line (with ``why``)."""
    from circuits.attribution.attribute import attribute
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders

    rm = ReplacementModel(model, tokens, feature_sets_from_transcoders(tcs, facts))
    modes = {"attribute": lambda: attribute(rm, targets, batch_size=args.batch_size),
             "autograd jacobian": lambda: jacobian_adjacency(rm, targets)}
    memory = {}
    for label, fn in modes.items():
        with PeakMemory() as peak:
            fn()
        memory[label] = peak.result.to_json()
    comparison = compare(modes, rounds=rounds, warmup=0, load=watch)
    graph, jac = comparison.results["attribute"], comparison.results["autograd jacobian"]
    F, K = graph.n_features, graph.n_logits
    ours = torch.cat([graph.adjacency[:F, :graph.logit_start], graph.adjacency[graph.logit_start:, :graph.logit_start]])
    max_diff = float((ours - jac.to(ours)).abs().max()) / float(ours.abs().max())
    ratio = comparison.ratio("autograd jacobian", "attribute")
    print(f"{args.model}, {len(tokens)} tokens, {F} active features, {K} logits, {graph.n_nodes} nodes, "
          f"torch threads {torch.get_num_threads()}")
    print(table(comparison, "attribute"))
    print(f"autograd jacobian / attribute: {ratio:.2f}x the time; largest edge difference {max_diff:.2e} of max |edge|")
    for label, m in memory.items():
        print(f"working memory {label}: {m['working_mb']:.1f} MiB")
    emit({"bench": "attribution", "baseline": "autograd jacobian", "model": args.model, "tokens": len(tokens),
          "features": F, "logits": K, "nodes": graph.n_nodes, "batch_size": args.batch_size,
          "threads": torch.get_num_threads(),
          "seconds_median": {label: t.median for label, t in comparison.timings.items()},
          "ratio_jacobian_to_attribute": ratio,
          "ratio_meaning": "seconds of the autograd Jacobian / seconds of attribute in the same round, median",
          "max_edge_diff_rel": max_diff, "working_memory_mb": {k_: m["working_mb"] for k_, m in memory.items()},
          "memory": memory, "circuit_tracer": f"not run: {why}",
          "timing": comparison.to_json(baseline="attribute"), "load": watch.to_json(), "unreliable": watch.unreliable})
