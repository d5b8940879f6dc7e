"""Edge-level circuit discovery behind the analysis contract (:mod:`workbench.analysis`): run kind ``edges``
(``workbench edges``).

Usage (notebook)::

    from circuits.edges.analysis import EDGES, EdgesConfig
    result = EDGES.run(model, EdgesConfig(task="induction", method="eap-ig", steps=5, top_k=10))
    result.summary["faithfulness"], result.objects["scores"].top(5)

Layout of one run ``runs/edges/<run_id>/``:

- ``edges.parquet``: one row per edge of the graph (:class:`circuits.edges.graph.EdgeGraph`): ``edge``
  (``"L0.H1->L1.H0"``; with ``qkv`` ``"L0.H1->L1.H0.k"``), ``sender``, ``receiver``, ``score`` (EAP / EAP-IG: the first-order estimate of
  m(edge ablated) - m(clean); ACDC: the metric change measured when the edge was tried) and ``in_circuit``;
- ``scores.safetensors``: ``scores`` [E] in the table's order;
- ``circuit.json``: the reported circuit (ACDC: its kept edges; EAP, EAP-IG: the ``top_k`` edges by |score|), each
  edge weighted by its score, each node by the sum of |score| over its edges;
- summary: ``method``, ``ablation``, ``n_edges``, ``n_circuit_edges``, ``faithfulness`` of the circuit,
  ``metric_clean``, ``metric_empty`` (every edge ablated), ``seconds`` of the method, ``top`` ([edge, score] pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, Result, TaskOptions, option

__all__ = ["EDGES", "EdgesConfig"]

# circuits.edges.methods.METHODS and circuits.edges.forward.ABLATIONS (mirrored as Literal types)


@dataclass
class EdgesConfig(TaskOptions):
    """Options of ``workbench edges``."""

    method: Literal["eap", "eap-ig", "acdc"] = option("eap-ig", "edge attribution patching, EAP with integrated "
                                                      "gradients, or ACDC's iterative pruning")
    ablation: Literal["corrupted", "mean"] = option("corrupted", "an edge carries the sender's output on the "
                                                    "corrupted prompt, or its mean over them per position")
    steps: int = option(5, "eap-ig: integration steps (1 is plain EAP)", minimum=1, maximum=1000)
    threshold: float = option(0.05, "acdc: an edge stays ablated when the metric change is below this", minimum=0.0)
    acdc_metric: Literal["kl", "metric"] = option("kl", "acdc: KL divergence to the clean output, or the absolute "
                                                  "change of the task's metric")
    top_k: int = option(20, "eap, eap-ig: edges of largest |score| in the reported circuit", minimum=1)
    qkv: bool = option(False, "score the edges into each head's query, key and value inputs apart")


def _compute(model: Any, cfg: EdgesConfig, progress: bool) -> Result:
    import pandas as pd
    import torch

    from circuits.edges.graph import split_edge
    from circuits.edges.methods import edge_faithfulness_many, score_edges

    task = cfg.make_task(model)
    options: dict[str, Any] = {"ablation": cfg.ablation, "qkv": cfg.qkv}
    if cfg.method == "eap-ig":
        options["steps"] = cfg.steps
    if cfg.method == "acdc":
        options.update(threshold=cfg.threshold, metric=cfg.acdc_metric, progress=progress)
    scores = score_edges(model, task, cfg.method, **options)
    chosen = set(scores.kept) if scores.kept is not None else set(scores.top(cfg.top_k))
    (f,), m_clean, m_empty = edge_faithfulness_many(model, task, [sorted(chosen)], ablation=cfg.ablation,
                                                    qkv=cfg.qkv)
    circuit = scores.to_circuit(k=None if scores.kept is not None else cfg.top_k, name=f"{cfg.method}: {task.name}")
    circuit.metadata.update({"task": task.name, "faithfulness": float(f), "ablation": cfg.ablation})
    rows = [(e, *split_edge(e), s, e in chosen) for e, s in scores.edges.items()]
    table = pd.DataFrame(rows, columns=["edge", "sender", "receiver", "score", "in_circuit"])
    top = scores.top(min(cfg.top_k, 10))
    out = Result(tables={"edges": table},
                 tensors={"scores": {"scores": torch.tensor(table["score"].to_numpy(), dtype=torch.float32)}},
                 graphs={"circuit": circuit}, objects={"scores": scores, "task": task})
    out.summary.update({"method": cfg.method, "ablation": cfg.ablation, "n_edges": len(scores.edges),
                        "n_circuit_edges": len(chosen), "faithfulness": float(f), "metric_clean": m_clean,
                        "metric_empty": m_empty, "seconds": scores.seconds,
                        "top": [[e, scores.edges[e]] for e in top]})
    out.lines = [f"{cfg.method} ({cfg.ablation} ablation) of {task.name}: {len(scores.edges)} edges scored in "
                 f"{scores.seconds:.2f} s",
                 f"metric clean {m_clean:.4f}, every edge ablated {m_empty:.4f}; faithfulness of the "
                 f"{len(chosen)}-edge circuit: {float(f):.3f}"]
    out.lines += [f"  {e:<20} {scores.edges[e]:+.4f}" for e in top]
    return out


def _figures(run: Any) -> dict[str, Any]:
    import plotly.graph_objects as go

    from workbench.circuit import Circuit

    table = run.table("edges")
    senders = list(dict.fromkeys(table["sender"]))
    receivers = list(dict.fromkeys(table["receiver"]))
    grid = [[None] * len(receivers) for _ in senders]
    for row in table.itertuples():
        grid[senders.index(row.sender)][receivers.index(row.receiver)] = float(row.score)
    heat = go.Figure(go.Heatmap(z=grid, x=receivers, y=senders, colorscale="RdBu", zmid=0,
                                colorbar={"title": "score"}))
    heat.update_layout(title=f"{run.summary.get('method')} edge scores (sender -> receiver)",
                       xaxis_title="receiver", yaxis_title="sender", yaxis_autorange="reversed")
    figs = {"edge_scores": heat}
    circuit = Circuit.from_json(run.json("circuit"))
    if len(circuit):  # ACDC may prune every edge
        figs["circuit"] = circuit.figure()
    return figs


EDGES = Analysis(
    kind="edges", verb="edges", config=EdgesConfig, compute=_compute, figures=_figures,
    help="edge-level circuits: EAP, EAP-IG or ACDC over the component edge graph",
    demo=EdgesConfig(task="induction", n=8, seed=0, half_len=20, method="acdc", ablation="mean", threshold=0.1),
    demo_model="toy/induction-2l")
