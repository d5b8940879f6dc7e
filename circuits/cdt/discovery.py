"""Circuit discovery with CD-T: rank against the output, then against the nodes found, down to layer 0; union; prune.

Candidates are each head at each position (optionally each MLP at each position). Rounds walk down the model one
stage at a time (the last layer's MLP, its heads, the MLP before, ... down to layer 0's heads):

1. Round 0 (the last stage): its candidates are scored against the task's metric (the beta part of the metric); the
   ``top_k`` by absolute score are kept.
2. Each later round scores its stage's candidates in one batched pass against the output and against every node kept
   so far (``mean|beta_t| / (mean|beta_t| + mean|gamma_t|)``, averaged over those targets); the ``top_k`` by each
   ranking are kept (the union of the two), so that a node reached only through later nodes (a previous-token head
   feeding an induction head's keys) is found as well as one acting on the output directly.
3. The union is pruned greedily: nodes are tried weakest first (score relative to the strongest of its round) and
   removed whenever the faithfulness ``F = (m(C) - m(empty)) / (m(M) - m(empty))`` (everything outside the circuit
   mean-ablated, :func:`circuits.patching.faithfulness`) stays at or above ``faithfulness_bound``.

The returned :class:`~workbench.circuit.Circuit` holds the kept nodes with their ``score`` (the beta part of the metric),
``relevance_to_found`` (in [0, 1]), ``round`` and ``relative`` (the larger of the two scores relative to the round's
best) attributes; edges go from each node to ``logit`` (weight = its score) and to the later kept nodes it is relevant
to (weight = that relevance); ``metadata["faithfulness"]`` holds F.

Counting: on per-position candidates a "node" is one head at one position, so a budget such as "a quarter of the heads"
is counted over (head, position) pairs: ``n_layers * n_heads * seq_len`` candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import circuits.discovery as loop
from circuits.cdt.nodes import CDTInputError, Node
from circuits.cdt.scores import decompose_sources, head_nodes, prepare
from workbench.circuit import Circuit
from workbench.data.task_base import Task

__all__ = ["CdtScorer", "candidates", "discover", "prune"]


def candidates(n_layers: int, n_heads: int, seq_len: int, *, per_position: bool = True,
               include_mlps: bool = False) -> list[Node]:
    """The nodes discovery ranks: every head (and MLP) at every position (or whole, without ``per_position``)."""
    nodes = head_nodes(n_layers, n_heads, seq_len, per_position=per_position)
    if include_mlps:
        nodes += [Node("mlp", layer, position=p)
                  for layer in range(n_layers) for p in (range(seq_len) if per_position else [None])]
    return sorted(nodes, key=lambda n: (n.order, n.head or 0, n.positions or ()))


def prune(model, task: Task, circuit: Circuit, *, faithfulness_bound: float, ablation: str = "mean",
          progress: bool = False, batch: int = 1, coarse: int = 0) -> tuple[Circuit, float]:
    """Greedy pruning of head/MLP nodes, weakest ``relative`` score first, while F stays >= ``faithfulness_bound``.

    batch / coarse: see :func:`circuits.patching.prune_greedy` (``batch`` changes the speed, not the result;
    ``coarse`` first removes the largest weakest-first cut that keeps the bound). Returns the pruned circuit and its
    faithfulness (computed by :func:`circuits.patching.faithfulness_many`); ``metadata["prune_scored"]`` holds the
    number of circuits scored.
    """
    from circuits.patching import prune_greedy

    g = circuit.graph.copy()
    order = sorted((n for n, d in g.nodes(data=True) if d.get("kind") in ("head", "mlp")),
                   key=lambda n: g.nodes[n].get("relative") or 0.0)
    kept, f_now, scored = prune_greedy(model, task, list(g.nodes), order, bound=faithfulness_bound,
                                       ablation=ablation, batch=batch, coarse=coarse, progress=progress)
    g.remove_nodes_from(set(g.nodes) - set(kept))
    out = Circuit(circuit.name, {**circuit.metadata, "prune_scored": scored})
    out.graph = g
    return out, f_now


class CdtScorer:
    """The CD-T scorer of :func:`circuits.discovery.discover`: round r scores the r-th stage from the top (the last
    MLP, its heads, the MLP before, ...) against the output and every node kept so far, in one batched pass;
    faithfulness by mean (or zero) ablation (:class:`circuits.patching.Faithfulness`)."""

    def __init__(self, model, task: Task, *, per_position: bool = True, include_mlps: bool = False,
                 ablation: str = "mean", chunk_rows: int = 256, dtype: torch.dtype | None = None,
                 progress: bool = False, **rule_options) -> None:
        from circuits.patching.faithfulness import Faithfulness

        self.ctx = prepare(model, task, ablation=ablation, dtype=dtype)
        w = self.ctx.weights
        self.pool = candidates(w.n_layers, w.n_heads, task.seq_len, per_position=per_position,
                               include_mlps=include_mlps)
        self.stages = sorted({n.order for n in self.pool}, reverse=True)
        self.chunk_rows, self.progress, self.rule_options = chunk_rows, progress, rule_options
        self.rules: dict = {}
        self.faithfulness = Faithfulness(model, task, ablation=ablation)

    def candidates(self, round_: int, kept: Sequence[Sequence[Node]]) -> list[Node]:
        if round_ >= len(self.stages):
            return []
        return [n for n in self.pool if n.order == self.stages[round_]]

    def score(self, candidates: Sequence[Node], kept: Sequence[Sequence[Node]]) -> loop.Round:
        found = [n for nodes in kept for n in nodes]
        scores = decompose_sources(self.ctx, sources=list(candidates), targets=["logit", *found], strict_order=False,
                                   chunk_rows=self.chunk_rows, progress=self.progress, **self.rule_options)
        self.rules = scores.rules
        to_output = scores.metric
        to_found = scores.relevance() if found else torch.zeros_like(to_output)
        top_o = float(to_output.abs().max()) or 1.0
        top_f = float(to_found.max()) or 1.0

        def record(i: int) -> loop.Found:
            relative = max(float(to_output[i].abs()) / top_o, float(to_found[i]) / top_f)
            edges = [("logit", float(to_output[i]))]
            for j, t in enumerate(found):
                r = scores.target_relevance[i, j]
                if not torch.isnan(r) and float(r) > 0:
                    edges.append((t.id, float(r)))
            attrs = {"score": float(to_output[i]), "relevance_to_found": float(to_found[i]), "relative": relative}
            return loop.Found(attrs, edges, relative)

        return loop.Round([to_output.abs(), *([to_found] if found else [])], record)


def discover(model, task: Task, *, top_k: int = 20, faithfulness_bound: float = 0.8, per_position: bool = True,
             include_mlps: bool = False, ablation: str = "mean", do_prune: bool = True, chunk_rows: int = 256,
             dtype: torch.dtype | None = None, progress: bool = False, prune_batch: int = 1, prune_coarse: int = 0,
             max_rounds: int | None = None, **rule_options) -> Circuit:
    """The CD-T circuit of ``task`` (see the module docstring): :class:`CdtScorer` in the one greedy loop
    (:func:`circuits.discovery.discover`); ``metadata["faithfulness"]`` holds its F and ``bound_met`` whether it
    reaches the bound.

    top_k: nodes kept per round and ranking. faithfulness_bound: pruning keeps F at or above it. max_rounds: stop
    after this many stages (default: down to layer 0). prune_batch / prune_coarse: see :func:`prune`.
    rule_options: see :class:`circuits.cdt.rules.Rules`. Also in the metadata: the faithfulness before pruning, the
    candidate count, the rounds' sizes and the rule options.
    """
    loop.check_options(top_k, faithfulness_bound, max_rounds, prune_batch, prune_coarse, error=CDTInputError)
    scorer = CdtScorer(model, task, per_position=per_position, include_mlps=include_mlps, ablation=ablation,
                       chunk_rows=chunk_rows, dtype=dtype, progress=progress, **rule_options)
    circuit = loop.discover(
        scorer, top_k=top_k, faithfulness_bound=faithfulness_bound, max_rounds=max_rounds, prune=do_prune,
        prune_batch=prune_batch, prune_coarse=prune_coarse, progress=progress, name=f"CD-T: {task.name}",
        metadata={"method": "cdt", "task": task.name, "ablation": ablation, "per_position": per_position,
                  "include_mlps": include_mlps, "n_candidates": len(scorer.pool)})
    meta = circuit.metadata
    meta.update({"rules": scorer.rules, "rounds": meta["round_sizes"],
                 "faithfulness_before_pruning": meta["faithfulness_unpruned"]})
    return circuit
