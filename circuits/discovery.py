"""One greedy circuit discovery: score the candidates, keep the top k, recurse, prune by faithfulness.

Any :class:`Scorer` drives it (CD-T: :class:`circuits.cdt.discovery.CdtScorer`; path patching:
:class:`circuits.patching.discovery.PathPatchingScorer`):

1. Round r asks the scorer for its candidates (given the nodes kept in the rounds before); none left ends the search,
   as does ``max_rounds``.
2. The scorer scores them (against the output, the nodes found so far, the last round's nodes: its choice) and gives
   one or more rankings; the ``top_k`` of each ranking are kept (their union, in ranking order), each with the
   attributes and edges the scorer gives it and its ``round``.
3. The union of the kept nodes is the circuit; :func:`greedy_prune` tries removing them weakest first (the scorer's
   ``strength``) and keeps each removal after which the faithfulness stays at or above ``faithfulness_bound``.

The result is a :class:`~workbench.circuit.Circuit` with a ``logit`` node, the kept nodes and the scorer's edges; its
metadata holds ``top_k``, ``faithfulness_bound``, ``max_rounds``, ``round_sizes``, ``n_found``,
``faithfulness_unpruned``, ``faithfulness`` (of what is returned), ``bound_met`` (faithfulness >= bound),
``n_nodes`` and, after pruning, ``prune_scored`` (circuits scored, the unpruned one included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from workbench.circuit import Circuit
from workbench.nodes import Node

__all__ = ["Found", "Round", "Scorer", "check_options", "discover", "greedy_prune"]


@dataclass
class Found:
    """What the circuit records of one kept candidate: its node attributes (``score`` at least), its edges
    ``(target id, weight)`` (to ``logit`` or to nodes kept earlier) and its ``strength`` (pruning tries the weakest
    first)."""

    attrs: dict[str, Any]
    edges: list[tuple[str, float]] = field(default_factory=list)
    strength: float = 0.0


@dataclass
class Round:
    """One round's scores: ``rankings`` (each a tensor [n_candidates], larger is better: the ``top_k`` of each are
    kept) and ``found(i)``, the record of candidate i once kept."""

    rankings: Sequence[torch.Tensor]
    found: Callable[[int], Found]


class Scorer(Protocol):
    """What drives :func:`discover`."""

    def candidates(self, round_: int, kept: Sequence[Sequence[Node]]) -> Sequence[Node]:
        """The candidates of round ``round_`` given the nodes kept in each earlier round (empty: stop)."""
        ...

    def score(self, candidates: Sequence[Node], kept: Sequence[Sequence[Node]]) -> Round:
        """Score the candidates (against the output and/or the nodes kept so far)."""
        ...

    def faithfulness(self, circuits: Sequence[Sequence[str]]) -> Sequence[float]:
        """Faithfulness of each circuit, given as node ids (which may include ``logit``), in one batched pass."""
        ...


def check_options(top_k: int, faithfulness_bound: float, max_rounds: int | None = None, prune_batch: int = 1,
                  prune_coarse: int = 0, error: type[ValueError] = ValueError) -> None:
    """``error`` naming the option unless top_k >= 1, 0 < faithfulness_bound <= 1, max_rounds None or >= 1,
    prune_batch >= 1 and prune_coarse >= 0."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise error(f"top_k must be a positive integer, got {top_k!r}")
    if not 0 < faithfulness_bound <= 1:
        raise error(f"faithfulness_bound must be in (0, 1], got {faithfulness_bound!r}")
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1):
        raise error(f"max_rounds must be None (no limit) or a positive integer, got {max_rounds!r}")
    if not isinstance(prune_batch, int) or prune_batch < 1:
        raise error(f"prune_batch must be at least 1, got {prune_batch!r}")
    if not isinstance(prune_coarse, int) or prune_coarse < 0:
        raise error(f"prune_coarse must be 0 (off) or a positive number of cuts, got {prune_coarse!r}")


def discover(scorer: Scorer, *, top_k: int, faithfulness_bound: float = 0.8, max_rounds: int | None = None,
             prune: bool = True, prune_batch: int = 1, prune_coarse: int = 0, name: str = "",
             metadata: dict[str, Any] | None = None, progress: bool = False) -> Circuit:
    """The circuit ``scorer`` finds (see the module docstring).

    top_k: nodes kept per ranking and round. faithfulness_bound: pruning keeps F at or above it (and ``bound_met``
    says whether the result reaches it). max_rounds: stop after this many rounds (None: until no candidate is left).
    prune: prune at all. prune_batch / prune_coarse: see :func:`greedy_prune`. name / metadata: the circuit's.
    """
    check_options(top_k, faithfulness_bound, max_rounds, prune_batch, prune_coarse)
    circuit = Circuit(name, {**(metadata or {}), "top_k": top_k, "faithfulness_bound": faithfulness_bound,
                             "max_rounds": max_rounds})
    circuit.add_node("logit", kind="logit")
    kept: list[list[Node]] = []
    strength: dict[str, float] = {}
    round_ = 0
    while max_rounds is None or round_ < max_rounds:
        pool = list(scorer.candidates(round_, kept))
        if not pool:
            break
        scores = scorer.score(pool, kept)
        chosen: list[int] = []
        for ranking in scores.rankings:
            chosen += torch.argsort(ranking, descending=True)[:top_k].tolist()
        new = []
        for i in dict.fromkeys(chosen):
            node, found = pool[i], scores.found(i)
            circuit.add_node(node.id, **{**found.attrs, "round": round_})
            for target, weight in found.edges:
                circuit.add_edge(node.id, target, weight)
            strength[node.id] = found.strength
            new.append(node)
        kept.append(new)
        round_ += 1
    found_ids = [n.id for nodes in kept for n in nodes]
    (f_unpruned,) = scorer.faithfulness([list(circuit.graph.nodes)])
    circuit.metadata.update({"round_sizes": [len(nodes) for nodes in kept], "n_found": len(found_ids),
                             "faithfulness_unpruned": float(f_unpruned)})
    f_final = float(f_unpruned)
    if prune:
        order = sorted(found_ids, key=lambda n: strength[n])
        left, f_final, scored = greedy_prune(scorer.faithfulness, list(circuit.graph.nodes), order,
                                             bound=faithfulness_bound, batch=prune_batch, coarse=prune_coarse,
                                             progress=progress, start=f_final)
        circuit.graph.remove_nodes_from(set(circuit.graph.nodes) - set(left))
        circuit.metadata["prune_scored"] = scored
    circuit.metadata.update({"faithfulness": f_final, "bound_met": bool(f_final >= faithfulness_bound),
                             "n_nodes": sum(1 for n in found_ids if n in circuit.graph)})
    circuit.graph.graph["faithfulness"] = f_final
    return circuit


def _prefix_trials(kept: list[str], removed: set[str], order: list[str], start: int, size: int) -> list[list[str]]:
    """Trial j (j = 1..size): ``kept`` without the removed nodes and without ``order[start:start + j]``."""
    trials = []
    gone = set(removed)
    for node in order[start:start + size]:
        gone.add(node)
        trials.append([n for n in kept if n not in gone])
    return trials


def greedy_prune(faithfulness: Callable[[Sequence[Sequence[str]]], Sequence[float]], nodes: Sequence[str],
                 order: Sequence[str], *, bound: float, batch: int = 1, coarse: int = 0, progress: bool = False,
                 start: float | None = None) -> tuple[list[str], float, int]:
    """Greedy pruning by faithfulness: (kept node ids, their F, number of circuits scored).

    faithfulness: F of each of a list of circuits (node id lists), in one batched pass. nodes: the circuit's node ids
    (all kept unless pruned). order: the nodes to try removing, first tried first (weakest first); nodes not in
    ``order`` are never removed. A removal is kept when F of what remains stays at or above ``bound``. start: F of
    ``nodes`` when already known (it is still counted as scored).

    batch: most removals tried per batched pass. A pass scores the circuits that drop the next 1, 2, ..., s
    candidates on top of what is already removed; the first that falls below the bound is where the one-at-a-time
    greedy would keep a node, so the result is the same as ``batch=1`` (only the trials after it are wasted). The
    pass size s doubles after a pass whose removals were all kept (up to ``batch``) and halves after one that stopped
    early, so long runs of removals share passes and runs of kept nodes waste little.
    coarse: if > 0, first score ``coarse`` cuts (the weakest 1/coarse, 2/coarse, ... of ``order``) in one pass and
    remove the largest cut that keeps F at or above the bound; the greedy then runs over the rest. Faster on large
    circuits, but no longer the one-at-a-time result.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if coarse < 0:
        raise ValueError(f"coarse must be 0 (off) or a positive number of cuts, got {coarse}")
    if not 0 < bound <= 1:
        raise ValueError(f"bound must be in (0, 1], got {bound!r}")
    kept = list(dict.fromkeys(nodes))
    in_circuit = set(kept)
    missing = [n for n in order if n not in in_circuit]
    if missing:
        raise ValueError(f"order names nodes that are not in the circuit: {', '.join(missing[:5])}")
    order = list(dict.fromkeys(order))
    f_now = float(faithfulness([kept])[0]) if start is None else float(start)
    scored, first = 1, 0
    removed: set[str] = set()
    if coarse and len(order) > 1:
        cuts = sorted({max(1, round(len(order) * j / coarse)) for j in range(1, coarse + 1)})
        trials = [[n for n in kept if n not in set(order[:c])] for c in cuts]
        f_cuts = [float(f) for f in faithfulness(trials)]
        scored += len(cuts)
        good = [i for i, f in enumerate(f_cuts) if f >= bound]
        if good:
            best = max(cuts[i] for i in good)
            removed.update(order[:best])
            f_now, first = f_cuts[cuts.index(best)], best
    bar = tqdm(total=len(order) - first, desc="pruning", disable=not progress, leave=False)
    step = 1
    while first < len(order):
        size = min(step, len(order) - first)
        trials = _prefix_trials(kept, removed, order, first, size)
        f_trials = [float(f) for f in faithfulness(trials)]
        scored += size
        accepted = 0
        for f in f_trials:
            if f < bound:
                break
            accepted += 1
            f_now = f
        removed.update(order[first:first + accepted])
        step = min(batch, 2 * step) if accepted == size else max(1, step // 2)
        first += accepted + (1 if accepted < size else 0)  # the first failed node is kept
        bar.update(min(size, accepted + 1))
    bar.close()
    return [n for n in kept if n not in removed], f_now, scored
