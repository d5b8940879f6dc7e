"""The QK attribution as a run section: the ``--attention-head L.H --query-pos Q --key-pos K`` options of
``workbench attribute`` (table, JSON and a heatmap of the largest pairwise terms, sources named by node id and token).
"""

from __future__ import annotations

import re
from typing import Any

from workbench.errors import ConfigError

__all__ = ["attention_figure", "attention_section", "parse_head"]

_HEAD = re.compile(r"(?:L)?(\d+)\.(?:H)?(\d+)")


def parse_head(text: str) -> tuple[int, int]:
    """(layer, head) of ``1.0`` or ``L1.H0``; ConfigError naming ``--attention-head`` otherwise."""
    m = _HEAD.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"--attention-head {text!r}: write the head as LAYER.HEAD, e.g. 1.0 (or L1.H0)")
    return int(m[1]), int(m[2])


def _label(node_id: str, tokens: list[str]) -> str:
    from workbench.nodes import parse

    pos = parse(node_id).position
    return node_id if pos is None else f"{node_id} {tokens[pos]!r}"


def attention_section(rm: Any, head_text: str, query_pos: int | None, key_pos: int | None,
                      tokens: list[str]) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    """(table, JSON, summary entries, one report line) of the QK attribution of ``head_text`` at (query, key):
    query default the last position, key default the position the head attends to most from the query."""
    import pandas as pd

    from circuits.attribution.attention import qk_attribution

    layer, head = parse_head(head_text)
    if not 0 <= layer < rm.n_layers:
        raise ConfigError(f"--attention-head {head_text}: layer {layer} out of range; the model has layers "
                          f"0..{rm.n_layers - 1}")
    if not 0 <= head < rm.w.n_heads:
        raise ConfigError(f"--attention-head {head_text}: head {head} out of range; heads 0..{rm.w.n_heads - 1}")
    q = rm.n_pos - 1 if query_pos is None else query_pos
    if not 0 <= q < rm.n_pos:
        raise ConfigError(f"--query-pos {q} is outside the prompt (positions 0..{rm.n_pos - 1})")
    k = int(rm.clean.layers[layer].pattern[0, head, q].argmax()) if key_pos is None else key_pos
    if not 0 <= k <= q:
        raise ConfigError(f"--key-pos {k}: give a position in 0..{q} (at or before --query-pos {q}; later keys are "
                          "masked)")
    res = qk_attribution(rm, layer, head, q, k)
    rows = [{"side": side, "source": s, "token": tokens[_pos(s)] if _pos(s) is not None else "",
             "total": float(t)}
            for side, ids, totals in (("query", res.query_sources, res.query_totals),
                                      ("key", res.key_sources, res.key_totals))
            for s, t in zip(ids, totals.tolist(), strict=True)]
    table = pd.DataFrame(rows).sort_values("total", key=abs, ascending=False, ignore_index=True)
    data = {"layer": layer, "head": head, "query_pos": q, "key_pos": k, "score": res.score,
            "query_sources": [_label(s, tokens) for s in res.query_sources],
            "key_sources": [_label(s, tokens) for s in res.key_sources], "terms": res.terms.tolist()}
    total = float(res.terms.sum())
    summary = {"attention_head": f"L{layer}.H{head}", "attention_query_pos": q, "attention_key_pos": k,
               "attention_score": res.score, "attention_terms_sum_error": abs(total - res.score),
               "attention_pattern": float(rm.clean.layers[layer].pattern[0, head, q, k])}
    top_q = table[table.side == "query"].iloc[0]
    top_k = table[table.side == "key"].iloc[0]
    line = (f"L{layer}.H{head} score at query {q} {tokens[q]!r}, key {k} {tokens[k]!r}: {res.score:.4f}; largest "
            f"query source {top_q.source} ({top_q.total:+.4f}), key source {top_k.source} ({top_k.total:+.4f})")
    return table, data, summary, line


def _pos(node_id: str) -> int | None:
    from workbench.nodes import parse

    return parse(node_id).position


def attention_figure(data: dict[str, Any], top: int = 15) -> Any:
    """Heatmap of the pairwise terms among the ``top`` query and key sources of largest |share|."""
    import plotly.graph_objects as go
    import torch

    terms = torch.tensor(data["terms"], dtype=torch.float64)
    rows = terms.sum(1).abs().argsort(descending=True)[:top].tolist()
    cols = terms.sum(0).abs().argsort(descending=True)[:top].tolist()
    sub = terms[rows][:, cols]
    limit = float(sub.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=sub.tolist(), x=[data["key_sources"][j] for j in cols],
                               y=[data["query_sources"][i] for i in rows], colorscale="RdBu", zmid=0,
                               zmin=-limit, zmax=limit, colorbar={"title": "term"}))
    fig.update_layout(title=f"L{data['layer']}.H{data['head']} QK score {data['score']:.3f} "
                            f"(query {data['query_pos']}, key {data['key_pos']}): largest source pairs",
                      xaxis_title="key-side source", yaxis_title="query-side source", yaxis_autorange="reversed")
    return fig
