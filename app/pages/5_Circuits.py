"""Circuits: circuit graphs found by CD-T, by patching and through transcoders; head scores side by side; word-level
explanations.

Reads runs of kind ``cdt``, ``patching`` and ``tc-circuit`` from the run store. A run's circuit is any JSON artifact
in node-link form (``workbench.circuit.Circuit.to_json``); head scores are tables with ``layer``, ``head`` and a score
column (and optionally ``position``); word-level explanations are tables with ``token`` and ``contribution``.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from page_helpers import metric_grid, pick_run, show_run, stored_runs

from workbench.circuit import Circuit
from workbench.store import Run, RunInfo, Store

TITLE = "Circuits"
KINDS = ("cdt", "patching", "tc-circuit")
SCORE_COLUMNS = ("score", "cdt_score", "patching_score", "relevance", "effect")


def circuit_artifacts(run: Run) -> dict[str, Circuit]:
    """Every JSON artifact of ``run`` that is a circuit (node-link JSON), by artifact name."""
    out = {}
    for name in run.names("json"):
        data = run.json(name)
        if isinstance(data, dict) and "nodes" in data and ("links" in data or "edges" in data):
            out[name] = Circuit.from_json(data)
    return out


def score_tables(run: Run) -> dict[str, pd.DataFrame]:
    """Head scores of ``run`` as tables with ``layer``, ``head`` and ``score`` (and ``position`` when per position).

    Found in tables with ``layer``, ``head`` and a score column (rows of whole layers, ``head`` -1, are left out) and
    in tensors named ``head_scores`` (``per_head`` [L, H], ``per_position`` [L, H, T]).
    """
    out = {}
    for name in run.names("table"):
        df = run.table(name)
        if {"layer", "head"} <= set(df.columns) and any(c in df.columns for c in SCORE_COLUMNS):
            df = df[df["head"] >= 0]
            if "component" in df.columns:
                df = df[df["component"] == "head"]
            if len(df):
                out[name] = df
    if "head_scores" in run.names("tensors"):
        tensors = run.tensors("head_scores")
        for key in ("per_head", "per_position"):
            if key in tensors:
                t = tensors[key].double().numpy()
                idx = np.indices(t.shape).reshape(t.ndim, -1)
                cols = {"layer": idx[0], "head": idx[1], "score": t.ravel()}
                if t.ndim == 3:
                    cols["position"] = idx[2]
                out[f"head_scores.{key}"] = pd.DataFrame(cols)
    return out


TEXT_COLUMNS = ("token", "phrase", "word")
GROUP_COLUMNS = ("example", "text_index", "label")


def word_tables(run: Run) -> dict[str, pd.DataFrame]:
    """Tables of ``run`` with a text column (token, phrase or word) and ``contribution``: word-level explanations."""
    out = {}
    for name in run.names("table"):
        df = run.table(name)
        if "contribution" in df.columns and any(c in df.columns for c in TEXT_COLUMNS):
            out[name] = df
    return out


def head_matrix(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Head scores as a [layers, heads] matrix (summed over positions when there is a position column)."""
    col = next(c for c in SCORE_COLUMNS if c in df.columns)
    grid = df.groupby(["layer", "head"])[col].sum().unstack("head").sort_index()
    return grid.to_numpy(dtype=float), col


def heatmap(matrix: np.ndarray, title: str) -> go.Figure:
    """A [layers, heads] heatmap, layer 0 at the bottom, diverging colours around zero."""
    bound = float(np.nanmax(np.abs(matrix))) if matrix.size else 1.0
    fig = go.Figure(go.Heatmap(z=matrix, colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound,
                               hovertemplate="L%{y}.H%{x}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=320,
                      margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def highlighted_html(df: pd.DataFrame) -> str:
    """Tokens as inline spans coloured by contribution: blue pushes the target up, red pushes it down."""
    text_col = next(c for c in TEXT_COLUMNS if c in df.columns)
    values = df["contribution"].astype(float).to_numpy()
    bound = float(np.max(np.abs(values))) if len(values) else 1.0
    spans = []
    separator = " " if text_col != "token" else ""
    for token, value in zip(df[text_col].astype(str), values, strict=True):
        alpha = min(abs(value) / bound, 1.0) if bound > 0 else 0.0
        rgb = "33,102,172" if value >= 0 else "178,24,43"
        spans.append(f'<span title="{value:+.4g}" style="background: rgba({rgb},{alpha:.2f}); padding: 1px 2px; '
                     f'border-radius: 3px; white-space: pre">{html.escape(token)}</span>{separator}')
    return '<div style="line-height: 2; font-family: monospace">' + "".join(spans) + "</div>"


def _circuit_view(circuit: Circuit, key: str) -> None:
    scores = [abs(d["score"]) for d in circuit.nodes if isinstance(d.get("score"), (int, float))]
    weights = [abs(e["weight"]) for e in circuit.edges if isinstance(e.get("weight"), (int, float))]
    cols = st.columns(2)
    node_t = cols[0].slider("Node threshold |score|", 0.0, float(max(scores, default=0.0)) or 1.0, 0.0,
                            key=f"{key}-node")
    edge_t = cols[1].slider("Edge threshold |weight|", 0.0, float(max(weights, default=0.0)) or 1.0, 0.0,
                            key=f"{key}-edge")
    shown = circuit.prune(node_t, edge_t)
    st.caption(f"{len(shown)} of {len(circuit)} nodes, {len(shown.edges)} of {len(circuit.edges)} edges shown")
    fig = shown.figure()
    event = st.plotly_chart(fig, key=f"{key}-chart", on_select="rerun", selection_mode="points", width="stretch")
    nodes, _ = shown.to_frames()
    picked = _selected_nodes(event, fig)
    if picked:
        st.subheader("Selected nodes")
        st.dataframe(nodes[nodes["id"].isin(picked)], hide_index=True, width="stretch")
    with st.expander("All nodes", expanded=not picked):
        st.dataframe(nodes, hide_index=True, width="stretch")


def _selected_nodes(event: Any, fig: go.Figure) -> list[str]:
    """Node ids of the points selected (clicked or lasso) in the circuit chart."""
    try:
        points = event["selection"]["points"]
    except (TypeError, KeyError):
        return []
    ids = []
    for p in points:
        trace = fig.data[p.get("curve_number", 0)]
        meta = getattr(trace, "meta", None) or {}
        if isinstance(meta, dict) and meta.get("role") == "nodes":
            text = trace.hovertext[p["point_index"]] if trace.hovertext is not None else ""
            ids.append(str(text).split("<br>")[0].replace("<b>", "").replace("</b>", ""))
    return ids


def _side_by_side(store: Store, infos: list[RunInfo]) -> None:
    """CD-T and patching head scores of the same model next to each other, with their rank correlation."""
    by_model: dict[str, dict[str, RunInfo]] = {}
    for i in infos:
        if i.ok and i.kind in ("cdt", "patching"):
            by_model.setdefault(i.model or "-", {}).setdefault(i.kind, i)  # newest first
    pairs = {m: d for m, d in by_model.items() if len(d) == 2}
    if not pairs:
        st.info("Side by side needs a `cdt` run and a `patching` run of the same model.")
        return
    model = st.selectbox("Model", sorted(pairs), key="sbs_model")
    mats = {}
    cols = st.columns(2)
    for col, kind in zip(cols, ("cdt", "patching"), strict=True):
        with col:
            try:
                tables = score_tables(store.load(kind, pairs[model][kind].run_id))
            except Exception as exc:
                st.error(f"Cannot read the {kind} run: {exc}")
                continue
            if not tables:
                st.info(f"The {kind} run has no head-score table.")
                continue
            name = next(iter(tables))
            mats[kind], col_name = head_matrix(tables[name])
            st.plotly_chart(heatmap(mats[kind], f"{kind}: {name} ({col_name})"), key=f"sbs-{kind}")
    if len(mats) == 2 and mats["cdt"].shape == mats["patching"].shape:
        a, b = mats["cdt"].ravel(), mats["patching"].ravel()
        rho = pd.Series(a).rank().corr(pd.Series(b).rank())
        st.metric("Spearman rank correlation of head scores", f"{rho:.3f}")


def _show(run: Run) -> None:
    info = run.info
    circuits, scores, words = circuit_artifacts(run), score_tables(run), word_tables(run)
    numbers = [(k, v) for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    metric_grid(numbers[:8])
    for name, circuit in circuits.items():
        st.subheader(f"Circuit graph: {name}")
        _circuit_view(circuit, key=f"{info.run_id}-{name}")
    for name, df in scores.items():
        matrix, col = head_matrix(df)
        st.plotly_chart(heatmap(matrix, f"{name} ({col}, summed over positions)"), key=f"{info.run_id}-hm-{name}")
    for name, df in words.items():
        st.subheader(f"Word-level explanation: {name}")
        group = next((c for c in GROUP_COLUMNS if c in df.columns), None)
        examples = sorted(df[group].unique()) if group else [None]
        for ex in examples[:10]:
            part = df[df[group] == ex] if group else df
            st.markdown(highlighted_html(part), unsafe_allow_html=True)
        st.dataframe(df, hide_index=True, width="stretch")
    if not (circuits or scores or words):
        st.info("This run holds no circuit, head scores or word-level explanation.")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    store = Store()
    infos = stored_runs(store, *KINDS, empty="No circuit runs stored yet: run `workbench cdt`, `workbench patch` or "
                                             "`workbench tc-circuit` (or `workbench demo`).")
    if not infos:
        return
    tab_run, tab_sbs = st.tabs(["Circuit runs", "CD-T versus patching"])
    with tab_run:
        show_run(store, pick_run(infos, lambda i: f"{i.kind} · {i.model or '-'} · {i.run_id}", key="circuit_run"), _show)
    with tab_sbs:
        _side_by_side(store, infos)


main()
