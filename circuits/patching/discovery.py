"""Circuit discovery driven by path patching: :class:`PathPatchingScorer` in the one greedy loop
(:func:`circuits.discovery.discover`), pruned greedily by faithfulness.

1. Round 0 scores every component (heads, optionally MLPs, whole or per position) by path patching to the logits;
   the ``top_k`` largest by |score| are kept.
2. Each later round takes the nodes kept last as receivers and scores every not-yet-found component that can reach one
   of them by path patching through the receivers it reaches; the ``top_k`` largest are kept. The search ends when no
   earlier component is left (layer 0) or after ``max_rounds`` rounds.
3. The union of the found nodes is the circuit; pruning tries removing nodes from the weakest (smallest |score|) up,
   keeping a removal whenever the faithfulness stays at or above ``faithfulness_bound``.

Each node keeps the score of the round that found it (``score``) and the round (``round``); an edge runs from each
found sender to the receivers of its round (weight = its path score), and from first-round nodes to ``logit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import circuits.discovery as loop
from circuits.patching.ablation import PatchingInputError, check_ablation, references
from circuits.patching.faithfulness import Faithfulness, prune_greedy
from circuits.patching.nodes import components
from circuits.patching.path import all_components, path_patching_scores, reaches
from workbench.circuit import Circuit
from workbench.data.task_base import Task
from workbench.nodes import Node

__all__ = ["PathPatchingScorer", "discover", "prune_by_faithfulness"]


class PathPatchingScorer:
    """The path-patching scorer of :func:`circuits.discovery.discover`: round 0 against the logits, each later round
    the components that reach the last round's nodes, through them; faithfulness with the same references."""

    def __init__(self, model, task: Task, *, per_position: bool = False, include_mlps: bool = False,
                 ablation: str = "mean", max_rows: int | None = None, progress: bool = False) -> None:
        check_ablation(ablation)
        self.model, self.task, self.ablation, self.max_rows, self.progress = model, task, ablation, max_rows, progress
        self.refs = references(model, task, ablation)
        self.pool: list[Node] = components(model, task, all_components(model, task, per_position=per_position,
                                                                        include_mlps=include_mlps))
        self.faithfulness = Faithfulness(model, task, ablation=ablation, refs=self.refs)

    def candidates(self, round_: int, kept: Sequence[Sequence[Node]]) -> list[Node]:
        if round_ == 0:
            return list(self.pool)
        found = {n for nodes in kept for n in nodes}
        return [c for c in self.pool if c not in found and any(reaches(c, r) for r in kept[-1])]

    def score(self, candidates: Sequence[Node], kept: Sequence[Sequence[Node]]) -> loop.Round:
        receivers = "logits" if not kept else [r.id for r in kept[-1]]
        scores = path_patching_scores(self.model, self.task, [c.id for c in candidates], receivers,
                                      ablation=self.ablation, refs=self.refs, max_rows=self.max_rows,
                                      progress=self.progress)

        def found(i: int) -> loop.Found:
            s = float(scores[i])
            targets = ["logit"] if not kept else [r.id for r in kept[-1] if reaches(candidates[i], r)]
            return loop.Found({"score": s}, [(t, s) for t in targets], abs(s))

        return loop.Round([scores.abs()], found)


def prune_by_faithfulness(
    model,
    task: Task,
    circuit: Circuit,
    *,
    faithfulness_bound: float | None = None,
    ablation: str = "mean",
    refs=None,
    progress: bool = False,
    batch: int = 1,
    coarse: int = 0,
    min_faithfulness: float | None = None,
) -> tuple[Circuit, float]:
    """Greedy pruning: remove nodes (weakest |score| first) while F stays >= ``faithfulness_bound`` (default 0.8;
    ``min_faithfulness`` is accepted as its old name).

    batch / coarse: see :func:`circuits.patching.prune_greedy` (``batch`` changes the speed, not the result).
    Returns (pruned circuit, its faithfulness). Nodes that are not heads or MLPs are kept.
    """
    bound = _bound(faithfulness_bound, min_faithfulness)
    current = circuit.graph.copy()
    order = sorted(
        (n for n in current.nodes if current.nodes[n].get("kind") in ("head", "mlp")),
        key=lambda n: abs(current.nodes[n].get("score") or 0.0),
    )
    kept, f_now, scored = prune_greedy(model, task, list(current.nodes), order, bound=bound,
                                       ablation=ablation, refs=refs, batch=batch, coarse=coarse, progress=progress)
    current.remove_nodes_from(set(current.nodes) - set(kept))
    out = Circuit(circuit.name, {**circuit.metadata, "prune_scored": scored})
    out.graph = current
    return out, f_now


def _bound(faithfulness_bound: float | None, min_faithfulness: float | None) -> float:
    if faithfulness_bound is not None and min_faithfulness is not None and faithfulness_bound != min_faithfulness:
        raise PatchingInputError(
            f"faithfulness_bound={faithfulness_bound!r} and its old name min_faithfulness={min_faithfulness!r} "
            "disagree; give faithfulness_bound only")
    bound = faithfulness_bound if faithfulness_bound is not None else min_faithfulness
    return 0.8 if bound is None else bound


def discover(
    model,
    task: Task,
    *,
    top_k: int = 3,
    per_position: bool = False,
    include_mlps: bool = False,
    ablation: str = "mean",
    faithfulness_bound: float | None = None,
    prune: bool = True,
    max_rounds: int | None = None,
    max_rows: int | None = None,
    progress: bool = False,
    prune_batch: int = 1,
    prune_coarse: int = 0,
    min_faithfulness: float | None = None,
) -> Circuit:
    """A circuit found by path patching (see the module docstring); metadata holds its faithfulness and ``bound_met``.

    top_k: nodes kept per round. per_position: nodes are ``L{l}.H{h}@{p}`` instead of whole heads. include_mlps:
    MLPs are candidates too. ablation: for path patching and faithfulness (``mean``, ``zero`` or ``corrupted``).
    faithfulness_bound: pruning keeps F at or above it (default 0.8; ``min_faithfulness`` is its old name).
    max_rounds: stop after this many rounds (default: until no earlier component is left). prune_batch /
    prune_coarse: see :func:`circuits.discovery.greedy_prune`. Also in the metadata: ``faithfulness_unpruned``,
    ``nodes_unpruned``, ``metric_model`` and ``metric_empty`` (m(M) and m(empty)), ``rounds`` (rounds run).
    """
    bound = _bound(faithfulness_bound, min_faithfulness)
    check_ablation(ablation)
    loop.check_options(top_k, bound, max_rounds, prune_batch, prune_coarse, error=PatchingInputError)
    scorer = PathPatchingScorer(model, task, per_position=per_position, include_mlps=include_mlps, ablation=ablation,
                                max_rows=max_rows, progress=progress)
    circuit = loop.discover(
        scorer, top_k=top_k, faithfulness_bound=bound, max_rounds=max_rounds, prune=prune, prune_batch=prune_batch,
        prune_coarse=prune_coarse, progress=progress, name=f"path patching: {task.name}",
        metadata={"method": "path patching", "task": task.name, "ablation": ablation, "per_position": per_position,
                  "include_mlps": include_mlps})
    meta = circuit.metadata
    if meta["round_sizes"]:
        meta["rounds"] = len(meta["round_sizes"])
    meta.update({"nodes_unpruned": meta["n_found"], "metric_model": scorer.faithfulness.metric_model,
                 "metric_empty": scorer.faithfulness.metric_empty, "min_faithfulness": bound if prune else None})
    return circuit
