"""Score discovery methods on ground-truth models: node and edge ROC-AUC, MIB's CPR and CMD, top-k faithfulness,
agreement, seconds.

For each ground truth (:mod:`workbench.ground_truth`) the model is loaded, its task built, and every method scores
every edge of the whole-component graph (:class:`circuits.edges.graph.EdgeGraph`): the edge methods (EAP, EAP-IG,
ACDC) directly, the node methods (activation patching, path patching, CD-T) through
:func:`circuits.benchmark.node_methods.edges_from_nodes`, and the transcoder methods (transcoder paths, attribution
graphs) by summing their per-prompt feature graphs per component (:mod:`circuits.benchmark.transcoder_methods`; their
transcoders are trained once per model on the task's own inputs, ``transcoder_seconds``). A transcoder method on a
model without a working MLP is not applicable: its row holds None (NaN in the table) and no curve. Then, per
(model, method):

- ``edge_auroc`` against the true edges, ``node_auroc`` against the true nodes (heads and MLPs; an edge method's
  node score is the sum of |score| over its edges);
- the faithfulness curve of the top-n edge circuits at MIB's fractions, its ``cpr`` and ``cmd``;
- ``f_top_k``: the faithfulness of the top-k edges, k = the true edge count (and ``f_true``, the true circuit's own);
- ``seconds`` of the scoring.

Faithfulness is the edge circuit's ``(m(C) - m(all ablated)) / (m(clean) - m(all ablated))`` with every other edge
patched with the corrupted run's values (:func:`circuits.edges.methods.edge_faithfulness_many`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from circuits.benchmark.node_methods import NODE_METHODS, edges_from_nodes
from circuits.benchmark.scores import (
    MIB_FRACTIONS,
    auroc,
    cmd,
    cpr,
    faithfulness_curve,
    jaccard,
    ranked,
    roc_points,
)
from circuits.benchmark.transcoder_methods import TRANSCODER_METHODS, NotApplicableError, check_applicable

__all__ = ["EDGE_METHODS", "METHODS", "MethodScores", "benchmark", "check_methods", "score_method"]

EDGE_METHODS: tuple[str, ...] = ("eap", "eap-ig", "acdc")
METHODS: tuple[str, ...] = (*EDGE_METHODS, *NODE_METHODS, *TRANSCODER_METHODS)
#: the scores of a row whose method does not apply to the model (None there)
SCORE_COLUMNS: tuple[str, ...] = ("node_auroc", "edge_auroc", "cpr", "cmd", "f_top_k", "top_k_recall", "seconds")


class BenchmarkInputError(ValueError):
    """A method or ground truth the benchmark does not know, or an option out of range."""


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` de-duplicated in order; BenchmarkInputError naming the accepted ones for an unknown one."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkInputError(f"unknown method(s) {', '.join(map(repr, unknown))}; methods: {', '.join(METHODS)}")
    if not methods:
        raise BenchmarkInputError(f"give at least one method; methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


@dataclass
class MethodScores:
    """One method's scores on one model: ``edges`` (id -> score, every edge of the graph), ``nodes`` (component ->
    score, heads and MLPs), ``kept`` (ACDC's circuit, else None), ``seconds``."""

    method: str
    edges: dict[str, float]
    nodes: dict[str, float]
    kept: frozenset[str] | None
    seconds: float


def score_method(model: Any, task: Any, method: str, graph: Any, *, steps: int = 5, threshold: float = 0.01,
                 transcoders: dict[int, Any] | None = None) -> MethodScores:
    """Score every edge and component of ``graph`` on ``task`` with ``method`` (see :data:`METHODS`);
    ``transcoders`` (layer -> transcoder) for the transcoder methods, which raise NotApplicableError on a model
    without a working MLP. Edges and components a method says nothing about score 0."""
    from circuits.edges.methods import score_edges

    components = [s for s in graph.senders if s != "emb"]
    start = time.perf_counter()
    if method in TRANSCODER_METHODS:
        from circuits.benchmark import transcoder_methods as tm

        check_applicable(model, method)
        if transcoders is None:
            raise BenchmarkInputError(f"{method} needs transcoders (layer -> transcoder), see train_task_transcoders")
        run = tm.transcoder_path_scores if method == "transcoder-paths" else tm.attribution_scores
        nodes, edges = run(model, task, transcoders, set(components), set(graph.edges))
        seconds = time.perf_counter() - start
        return MethodScores(method, {e: edges.get(e, 0.0) for e in graph.edges},
                            {c: nodes.get(c, 0.0) for c in components}, None, seconds)
    if method in EDGE_METHODS:
        options = {"eap-ig": {"steps": steps}, "acdc": {"threshold": threshold}}.get(method, {})
        found = score_edges(model, task, method, **options)
        seconds = time.perf_counter() - start
        summed = found.node_scores()
        return MethodScores(method, dict(found.edges), {c: summed.get(c, 0.0) for c in components}, found.kept,
                            seconds)
    nodes = NODE_METHODS[method](model, task)
    seconds = time.perf_counter() - start
    return MethodScores(method, edges_from_nodes(nodes, graph.edges), {c: nodes.get(c, 0.0) for c in components},
                        None, seconds)


def _evaluate(truth: Any, scores: MethodScores, faith: Callable[[Sequence[Sequence[str]]], list[float]],
              fractions: Sequence[float]) -> tuple[dict[str, Any], Any]:
    curve = faithfulness_curve(scores.edges, faith, fractions=fractions)
    k = len(truth.edges)
    level = "node" if scores.method in NODE_METHODS else "edge"
    row = {"model": truth.name, "method": scores.method, "level": level,
           "node_auroc": auroc(scores.nodes, truth.nodes), "edge_auroc": auroc(scores.edges, truth.edges),
           "cpr": cpr(curve), "cmd": cmd(curve), "f_top_k": faith([ranked(scores.edges)[:k]])[0],
           "top_k_recall": len(set(ranked(scores.edges)[:k]) & truth.edges) / k, "seconds": scores.seconds}
    if scores.kept is not None:
        row["kept_edges"] = len(scores.kept)
    return row, curve


def _input_batches(truth: Any, task: Any) -> Callable[[Any, int], tuple[Any, Any]]:
    """``batch(generator, n) -> (tokens [n, S], None)`` of the ground truth's input distribution: its design's
    training batches, or (an observed ground truth) rows of its task's clean and corrupted prompts."""
    import torch

    from workbench.ground_truth.designs import DESIGNS

    if truth.name in DESIGNS:
        return DESIGNS[truth.name]().batch
    pool = torch.cat([task.clean_tokens, task.corrupted_tokens])

    def batch(gen: Any, n: int) -> tuple[Any, Any]:
        return pool[torch.randint(0, pool.shape[0], (n,), generator=gen)], None

    return batch


def benchmark(truths: Sequence[str], methods: Sequence[str], *, n: int = 32, seed: int = 0, steps: int = 5,
              threshold: float = 0.01, fractions: Sequence[float] = MIB_FRACTIONS, device: str | None = None,
              transcoder_tokens: int = 65_536, progress: bool = True) -> dict[str, Any]:
    """Run ``methods`` on each ground truth of ``truths`` (names, see ``workbench.ground_truth.names``);
    ``transcoder_tokens``: the tokens of the task's inputs the transcoder methods' transcoders train on.

    Returns the tables ``scores`` (a row per model and method, see the module docstring), ``means`` (per method,
    over the models), ``curves`` (model, method, fraction, size, faithfulness), ``roc`` (model, method, level, fpr,
    tpr), ``agreement`` (model, a, b, jaccard of the top-k edge sets) and ``top`` (model, method, edge, rank, score,
    true: every edge that is true or in some method's top-k), plus ``truths`` (per model: nodes, edges, how,
    f_true, metric_clean, metric_ablated).
    """
    import pandas as pd

    from circuits.edges.graph import EdgeGraph
    from circuits.edges.methods import edge_faithfulness_many
    from workbench import ground_truth
    from workbench.models import load_model

    methods = check_methods(methods)
    if n < 1 or steps < 1 or not threshold >= 0 or transcoder_tokens < 1:
        raise BenchmarkInputError(f"n, steps and transcoder_tokens must be >= 1 and threshold >= 0; got n={n}, "
                                  f"steps={steps}, threshold={threshold}, transcoder_tokens={transcoder_tokens}")
    chosen = [ground_truth.get(name) for name in dict.fromkeys(truths)]
    rows, curve_rows, roc_rows, agree_rows, top_rows, facts = [], [], [], [], [], {}
    bar = tqdm(total=len(chosen) * len(methods), desc="benchmark", disable=not progress)
    for truth in chosen:
        model = load_model(truth.spec, device=device)
        task = truth.make_task(model, n=n, seed=seed)
        graph = EdgeGraph.of(model)

        def faith(circuits: Sequence[Sequence[str]], model: Any = model, task: Any = task) -> list[float]:
            return edge_faithfulness_many(model, task, circuits)[0].tolist()

        f_true, m_clean, m_empty = edge_faithfulness_many(model, task, [sorted(truth.edges)])
        facts[truth.name] = {"spec": truth.spec, "how": truth.how, "nodes": sorted(truth.nodes),
                             "edges": sorted(truth.edges), "n_edges_graph": graph.n_edges,
                             "f_true": float(f_true[0]), "metric_clean": m_clean, "metric_ablated": m_empty}
        k = len(truth.edges)
        found: dict[str, MethodScores] = {}
        transcoders: dict[int, Any] | None = None
        for method in methods:
            bar.set_postfix_str(f"{truth.name}: {method}")
            extra: dict[str, Any] = {}
            if method in TRANSCODER_METHODS:
                try:
                    check_applicable(model, method)
                except NotApplicableError as err:
                    rows.append({"model": truth.name, "method": method, "level": "edge", "f_true": float(f_true[0]),
                                 **dict.fromkeys(SCORE_COLUMNS), "not_applicable": str(err)})
                    bar.update()
                    continue
                if transcoders is None:
                    from circuits.benchmark.transcoder_methods import train_task_transcoders

                    transcoders, facts[truth.name]["transcoder_seconds"] = train_task_transcoders(
                        model, _input_batches(truth, task), tokens=transcoder_tokens, seed=seed)
                extra["transcoder_seconds"] = facts[truth.name]["transcoder_seconds"]
            found[method] = scores = score_method(model, task, method, graph, steps=steps, threshold=threshold,
                                                  transcoders=transcoders)
            row, curve = _evaluate(truth, scores, faith, fractions)
            rows.append({**row, "f_true": float(f_true[0]), **extra})
            curve_rows += [{"model": truth.name, "method": method, "fraction": f, "size": s, "faithfulness": v}
                           for f, s, v in zip(curve.fractions, curve.sizes, curve.faithfulness, strict=True)]
            for level, values, true in (("edge", scores.edges, truth.edges), ("node", scores.nodes, truth.nodes)):
                fpr, tpr = roc_points(values, true)
                roc_rows += [{"model": truth.name, "method": method, "level": level, "fpr": a, "tpr": b}
                             for a, b in zip(fpr, tpr, strict=True)]
            bar.update()
        tops = {m: ranked(s.edges)[:k] for m, s in found.items()}
        shown = set(truth.edges).union(*tops.values())
        for m, s in found.items():
            order = {e: i + 1 for i, e in enumerate(ranked(s.edges))}
            top_rows += [{"model": truth.name, "method": m, "edge": e, "rank": order[e], "score": s.edges[e],
                          "true": e in truth.edges} for e in sorted(shown)]
            agree_rows += [{"model": truth.name, "a": m, "b": other, "jaccard": jaccard(tops[m], tops[other])}
                           for other in found]
    bar.close()
    scores_df = pd.DataFrame(rows)
    scores_df[list(SCORE_COLUMNS)] = scores_df[list(SCORE_COLUMNS)].astype(float)
    means = scores_df.groupby("method", sort=False)[list(SCORE_COLUMNS)].mean().reset_index()  # over applicable
    means["models"] = scores_df.groupby("method", sort=False)["edge_auroc"].count().to_numpy()
    return {"scores": scores_df, "means": means, "curves": pd.DataFrame(curve_rows), "roc": pd.DataFrame(roc_rows),
            "agreement": pd.DataFrame(agree_rows), "top": pd.DataFrame(top_rows), "truths": facts}
