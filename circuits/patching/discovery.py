"""Circuit discovery driven by path patching, pruned greedily by faithfulness.

1. Score every component (heads, optionally MLPs, whole or per position) by path patching to the logits; keep the
   ``top_k`` largest by |score|.
2. Take the nodes found last as receivers; score every not-yet-found component that can reach one of them by path
   patching through the receivers it reaches; keep the ``top_k`` largest. Repeat until no earlier component is left
   (layer 0) or for ``max_rounds`` rounds.
3. The union of the found nodes is the circuit; prune greedily: try removing nodes from the weakest (smallest
   |score|) up, keeping a removal whenever the faithfulness stays at or above ``min_faithfulness``.

Each node keeps the score of the round that found it (``score``) and the round (``round``); an edge runs from each
found sender to the receivers of its round (weight = its path score), and from first-round nodes to ``logit``.
"""

from __future__ import annotations

import torch

from circuits.graph import Circuit
from circuits.patching.ablation import check_ablation, references
from circuits.patching.faithfulness import faithfulness_many, prune_greedy
from circuits.patching.nodes import components
from circuits.patching.path import all_components, path_patching_scores, reaches
from workbench.data.task_base import Task

__all__ = ["discover", "prune_by_faithfulness"]


def prune_by_faithfulness(
    model,
    task: Task,
    circuit: Circuit,
    *,
    min_faithfulness: float = 0.8,
    ablation: str = "mean",
    refs=None,
    progress: bool = False,
    batch: int = 1,
    coarse: int = 0,
) -> tuple[Circuit, float]:
    """Greedy pruning: remove nodes (weakest |score| first) while F stays >= ``min_faithfulness``.

    batch / coarse: see :func:`circuits.patching.prune_greedy` (``batch`` changes the speed, not the result).
    Returns (pruned circuit, its faithfulness). Nodes that are not heads or MLPs are kept.
    """
    current = circuit.graph.copy()
    order = sorted(
        (n for n in current.nodes if current.nodes[n].get("kind") in ("head", "mlp")),
        key=lambda n: abs(current.nodes[n].get("score") or 0.0),
    )
    kept, f_now, scored = prune_greedy(model, task, list(current.nodes), order, bound=min_faithfulness,
                                       ablation=ablation, refs=refs, batch=batch, coarse=coarse, progress=progress)
    current.remove_nodes_from(set(current.nodes) - set(kept))
    out = Circuit(circuit.name, {**circuit.metadata, "prune_scored": scored})
    out.graph = current
    return out, f_now


def discover(
    model,
    task: Task,
    *,
    top_k: int = 3,
    per_position: bool = False,
    include_mlps: bool = False,
    ablation: str = "mean",
    min_faithfulness: float = 0.8,
    prune: bool = True,
    max_rounds: int | None = None,
    max_rows: int | None = None,
    progress: bool = False,
    prune_batch: int = 1,
    prune_coarse: int = 0,
) -> Circuit:
    """A circuit found by path patching (see the module docstring); metadata holds its faithfulness.

    top_k: nodes kept per round. per_position: nodes are ``L{l}.H{h}@{p}`` instead of whole heads. include_mlps:
    MLPs are candidates too. ablation: for path patching and faithfulness (``mean``, ``zero`` or ``corrupted``).
    max_rounds: stop after this many rounds (default: until no earlier component is left). prune_batch /
    prune_coarse: see :func:`prune_by_faithfulness`.
    """
    check_ablation(ablation)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    refs = references(model, task, ablation)
    candidates = all_components(model, task, per_position=per_position, include_mlps=include_mlps)
    comp = dict(zip(candidates, components(model, task, candidates), strict=True))
    circuit = Circuit(
        f"path patching: {task.name}",
        {"method": "path patching", "task": task.name, "ablation": ablation, "top_k": top_k,
         "per_position": per_position, "include_mlps": include_mlps, "max_rounds": max_rounds},
    )
    circuit.add_node("logit", kind="logit")
    found: list[str] = []
    receivers: list[str] | str = "logits"
    rounds = 2 * model.cfg.n_layers + 1 if max_rounds is None else max_rounds
    for round_ in range(rounds):
        if isinstance(receivers, str):
            pool = list(candidates)
        else:
            recv = [comp[r] for r in receivers]
            pool = [c for c in candidates if c not in found and any(reaches(comp[c], r) for r in recv)]
        if not pool:
            break
        scores = path_patching_scores(
            model, task, pool, receivers, ablation=ablation, refs=refs, max_rows=max_rows, progress=progress
        )
        best = torch.argsort(scores.abs(), descending=True)[:top_k].tolist()
        new = [pool[i] for i in best]
        for i in best:
            circuit.add_node(pool[i], score=float(scores[i]), round=round_)
            targets = ["logit"] if isinstance(receivers, str) else [
                r for r in receivers if reaches(comp[pool[i]], comp[r])
            ]
            for t in targets:
                circuit.add_edge(pool[i], t, float(scores[i]))
        found += new
        receivers = new
        circuit.metadata["rounds"] = round_ + 1
    (f_full,), m_full, m_empty = faithfulness_many(model, task, [circuit], ablation=ablation, refs=refs)
    circuit.metadata.update({"faithfulness_unpruned": float(f_full), "nodes_unpruned": len(found),
                             "metric_model": m_full, "metric_empty": m_empty})
    f_final = float(f_full)
    if prune:
        circuit, f_final = prune_by_faithfulness(
            model, task, circuit, min_faithfulness=min_faithfulness, ablation=ablation, refs=refs, progress=progress,
            batch=prune_batch, coarse=prune_coarse,
        )
    circuit.metadata.update({"faithfulness": f_final, "min_faithfulness": min_faithfulness if prune else None})
    return circuit
