"""Patching runs in the store (kind ``patching``): scores, a circuit, and its faithfulness.

Layout of one run ``runs/patching/<run_id>/``:

- ``scores.parquet``: one row per scored component: ``layer``, ``head`` (-1 for a whole attention layer or an MLP),
  ``position`` (-1 when the score covers every position), ``component`` (``head``, ``attn``, ``mlp``), ``node``
  (its node id) and ``score`` (m(clean) - m(patched), see :mod:`circuits.patching.activation`).
- ``scores.safetensors``: ``scores`` as computed: [L, H] (heads), [L, H, pos] (heads-positions or path with
  positions), [L, pos] (layers), or [n_nodes] (discover: the found nodes' scores, in the table's order).
- ``circuit.json``: the circuit (node-link JSON, :class:`circuits.graph.Circuit`): the ``top_k`` components by |score|
  (or the discovered circuit), each node with its score; metadata holds the task's tokens of the first prompt.
- ``task.json``: ``{"prompts", "corrupted_prompts", "tokens" (first clean prompt, as strings), "metric", "description"}``.
- summary: ``mode``, ``metric_clean``, ``metric_empty``, ``faithfulness`` (of circuit.json), ``n_nodes``, ``top``
  (the top components as ``[node, score]`` pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from circuits.graph import Circuit
from circuits.patching.ablation import PatchingInputError, references
from circuits.patching.activation import head_patching_scores, layer_patching_scores
from circuits.patching.discovery import discover
from circuits.patching.faithfulness import faithfulness_many
from circuits.patching.nodes import components
from circuits.patching.path import path_head_scores, reaches
from workbench.data.task_base import Task

__all__ = ["MODES", "patching_run", "score_table"]

MODES: tuple[str, ...] = ("heads", "heads-positions", "layers", "path", "discover")


def score_table(scores: torch.Tensor, mode: str, component: str = "attn") -> pd.DataFrame:
    """The long table of a score tensor ([L, H], [L, H, pos] or [L, pos] for ``layers``)."""
    rows = []
    if mode == "layers":
        for (layer, pos), v in _items(scores):
            node = f"mlp{layer}@{pos}" if component == "mlp" else f"L{layer}@{pos}"
            rows.append((layer, -1, pos, component, node, v))
    elif scores.ndim == 2:
        rows = [(layer, h, -1, "head", f"L{layer}.H{h}", v) for (layer, h), v in _items(scores)]
    else:
        rows = [(layer, h, p, "head", f"L{layer}.H{h}@{p}", v) for (layer, h, p), v in _items(scores)]
    return pd.DataFrame(rows, columns=["layer", "head", "position", "component", "node", "score"])


def _items(t: torch.Tensor):
    for index in torch.cartesian_prod(*[torch.arange(s) for s in t.shape]).reshape(-1, t.ndim).tolist():
        yield tuple(index), float(t[tuple(index)])


def patching_run(
    store,
    model,
    model_spec: str,
    task: Task,
    *,
    mode: str = "heads",
    ablation: str = "mean",
    receivers: Sequence[str] | str = "logits",
    receiver_input: str = "z",
    component: str = "attn",
    top_k: int = 5,
    min_faithfulness: float = 0.8,
    max_rounds: int | None = None,
    params: dict[str, Any] | None = None,
    progress: bool = False,
):
    """Compute one patching analysis (``mode`` in MODES) of ``task`` and store it as a ``patching`` run: RunInfo."""
    if mode not in MODES:
        raise PatchingInputError(f"unknown mode {mode!r}; accepted: {', '.join(MODES)}")
    refs = references(model, task, ablation)
    run_params = {"mode": mode, "task": task.name, "n": task.batch_size, "ablation": ablation, "top_k": top_k,
                  **({"receivers": receivers, "receiver_input": receiver_input} if mode == "path" else {}),
                  **({"component": component} if mode == "layers" else {}),
                  **({"min_faithfulness": min_faithfulness, "max_rounds": max_rounds} if mode == "discover" else {}),
                  **(params or {})}
    tokens = [model.tokenizer.decode([int(t)]) for t in task.clean_tokens[0]]
    if mode == "discover":
        circuit = discover(model, task, top_k=top_k, ablation=ablation, min_faithfulness=min_faithfulness,
                           max_rounds=max_rounds, progress=progress)
        found = [n for n in circuit if circuit.graph.nodes[n].get("kind") in ("head", "mlp")]
        scores = torch.tensor([circuit.graph.nodes[n]["score"] for n in found])
        table = pd.DataFrame([
            (circuit.graph.nodes[n]["layer"], circuit.graph.nodes[n].get("head") if circuit.graph.nodes[n].get("head") is not None else -1,
             circuit.graph.nodes[n].get("position") if circuit.graph.nodes[n].get("position") is not None else -1,
             circuit.graph.nodes[n]["kind"], n, circuit.graph.nodes[n]["score"]) for n in found
        ], columns=["layer", "head", "position", "component", "node", "score"])
        f = circuit.metadata["faithfulness"]
        m_empty = circuit.metadata["metric_empty"]
    else:
        if mode in ("heads", "heads-positions"):
            scores = head_patching_scores(model, task, per_position=mode == "heads-positions", ablation=ablation,
                                          refs=refs, progress=progress)
        elif mode == "layers":
            scores = layer_patching_scores(model, task, component, ablation=ablation, refs=refs, progress=progress)
        else:
            scores = path_head_scores(model, task, receivers, ablation=ablation, receiver_input=receiver_input,
                                      refs=refs, progress=progress)
        table = score_table(scores, mode, component)
        if mode == "path" and not isinstance(receivers, str):  # only the heads that reach a receiver were scored
            recv = components(model, task, receivers)
            sent = components(model, task, list(table["node"]))
            table = table[[any(reaches(s, r) for r in recv) for s in sent]].reset_index(drop=True)
        best = table.reindex(table["score"].abs().sort_values(ascending=False).index).head(top_k)
        circuit = Circuit(f"{mode} patching: {task.name}", {"method": f"{mode} patching", "task": task.name})
        for row in best.itertuples():
            node = row.node if mode != "layers" or component == "mlp" else None
            if node is None:  # a whole attention layer at one position: all its heads there
                for h in range(model.cfg.n_heads):
                    circuit.add_node(f"L{row.layer}.H{h}@{row.position}", score=row.score)
            else:
                circuit.add_node(node, score=row.score)
        if mode == "path" and not isinstance(receivers, str):
            for r in receivers:
                circuit.add_node(r, role="receiver")
        (f_t,), _, m_empty = faithfulness_many(model, task, [circuit], ablation=ablation, refs=refs)
        f = float(f_t)
        circuit.metadata["faithfulness"] = f
    circuit.metadata["tokens"] = tokens
    top = table.reindex(table["score"].abs().sort_values(ascending=False).index).head(top_k)
    with store.create("patching", model=model_spec, params=run_params) as w:
        w.save_table("scores", table)
        w.save_tensors("scores", {"scores": scores.float().contiguous()})
        w.save_json("circuit", circuit.to_json())
        w.save_json("task", {"prompts": task.prompts, "corrupted_prompts": task.corrupted_prompts, "tokens": tokens,
                             "metric": task.metric_name, "description": task.description})
        w.summary.update({"mode": mode, "metric_clean": refs.clean_metric, "metric_empty": float(m_empty),
                          "faithfulness": float(f), "n_nodes": sum(1 for n in circuit if not n.startswith("logit")),
                          "top": [[r.node, float(r.score)] for r in top.itertuples()]})
    return w.info
