"""CD-T runs in the store (kind ``cdt``): one library call computes everything a run holds and writes it.

Run layout (``runs/cdt/<run_id>/``):

- ``manifest.json``: params ``task``, ``n``, ``seed``, ``task_options``, ``sources``, ``targets``, ``per_position``,
  ``ablation``, ``rules``, ``top_k``, ``discover``, ``faithfulness_bound``, ``texts``; summary ``clean_metric``,
  ``metric_name``, ``top_sources`` (list of ``[id, score]``), and with discovery ``faithfulness``, ``n_nodes``,
  ``n_candidates``, ``circuit_heads``.
- ``head_scores.safetensors``: ``per_head`` [L, H] (beta part of the metric per whole head) and, with ``per_position``,
  ``per_position`` [L, H, T].
- ``scores.parquet``: one row per source: ``source``, ``metric_beta``, ``relevance`` and ``relevance:<target>`` per
  target component (sources default to every head at every position, or every whole head).
- ``circuit.json`` (with discovery): the circuit in node-link form (``Circuit.to_json``).
- ``words.parquet`` (with texts): ``text_index``, ``text``, ``phrase``, ``first_word``, ``last_word``, ``n_words``,
  ``first_token``, ``last_token``, ``contribution``, ``logit_diff`` (the text's clean logit difference);
  ``explanations.json``: a list of ``{"text", "words", "contributions", "logit_diff", "answers", "html"}``.
"""

from __future__ import annotations

from typing import Any

import torch

from circuits.cdt.discovery import discover
from circuits.cdt.local import explain
from circuits.cdt.scores import decompose_sources, head_nodes, prepare
from workbench.data.task_base import Task

__all__ = ["analyse", "save_run"]


def analyse(model, task: Task, *, sources=None, targets=("logit",), per_position: bool = True, top_k: int = 10,
            run_discovery: bool = False, faithfulness_bound: float = 0.8, ablation: str = "mean", texts=(),
            progress: bool = False, **rule_options) -> dict[str, Any]:
    """Everything a ``cdt`` run stores, as ``{"tensors": ..., "tables": ..., "json": ..., "summary": ...}``."""
    import pandas as pd

    ctx = prepare(model, task, ablation=ablation)
    w = ctx.weights
    heads = head_nodes(w.n_layers, w.n_heads, task.seq_len, per_position=per_position)
    scores = decompose_sources(ctx, sources=sources if sources else heads, targets=targets,
                               progress=progress, **rule_options)
    tensors = {}
    whole = decompose_sources(ctx, sources=head_nodes(w.n_layers, w.n_heads, task.seq_len, per_position=False),
                              **rule_options)
    tensors["per_head"] = whole.metric.float().view(w.n_layers, w.n_heads).cpu()
    if per_position:
        per = scores if not sources and list(targets) == ["logit"] else decompose_sources(ctx, sources=heads,
                                                                                           **rule_options)
        tensors["per_position"] = per.metric.float().view(w.n_layers, w.n_heads, task.seq_len).cpu()
    rank = torch.argsort(scores.relevance().abs(), descending=True)[:top_k].tolist()
    summary: dict[str, Any] = {
        "clean_metric": scores.clean_metric, "metric_name": task.metric_name,
        "top_sources": [[scores.sources[i], float(scores.relevance()[i])] for i in rank],
    }
    out: dict[str, Any] = {"tensors": {"head_scores": tensors}, "tables": {"scores": scores.to_frame()}, "json": {},
                           "summary": summary, "rules": scores.rules}
    if run_discovery:
        circuit = discover(model, task, top_k=top_k, faithfulness_bound=faithfulness_bound, ablation=ablation,
                           progress=progress, **rule_options)
        out["json"]["circuit"] = circuit.to_json()
        summary.update({k: circuit.metadata[k] for k in ("faithfulness", "n_nodes", "n_candidates")})
        summary["circuit_heads"] = [list(h) for h in circuit.heads()]
    if texts:
        frames, docs = [], []
        for i, text in enumerate(texts):
            ex = explain(model, text, **rule_options)
            frame = ex.table.copy()
            frame.insert(0, "text", text)
            frame.insert(0, "text_index", i)
            frame["logit_diff"] = ex.logit_diff
            frames.append(frame)
            words = ex.word_table()
            docs.append({"text": text, "words": ex.words, "contributions": words["contribution"].tolist(),
                         "logit_diff": ex.logit_diff, "answers": list(ex.answers), "html": ex.html()})
        out["tables"]["words"] = pd.concat(frames, ignore_index=True)
        out["json"]["explanations"] = docs
    return out


def save_run(store, model_spec: str, params: dict[str, Any], result: dict[str, Any]):
    """Write :func:`analyse`'s result as one ``cdt`` run; returns its RunInfo."""
    with store.create("cdt", model=model_spec, params={**params, "rules": result.get("rules", {})}) as writer:
        for name, tensors in result["tensors"].items():
            writer.save_tensors(name, tensors)
        for name, table in result["tables"].items():
            writer.save_table(name, table)
        for name, doc in result["json"].items():
            writer.save_json(name, doc)
        writer.summary.update(result["summary"])
    return writer.info
