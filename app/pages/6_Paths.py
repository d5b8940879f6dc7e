"""Paths: the logits split exactly by path length (against the binomial count of paths), the top individual paths,
direct attribution and the lesion curves.

Reads runs of kind ``paths`` (``workbench paths`` or ``circuits.paths.analyse_paths`` + ``save_paths_run``). Every
figure comes from :mod:`circuits.paths.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st

from circuits.graph import Circuit
from circuits.paths.figures import direct_figure, length_profile_figure, lesion_figure, loss_by_length_figure
from workbench.store import RunInfo, Store

TITLE = "Paths"
KIND = "paths"
HEADLINE = ("n_sublayers", "completeness_error", "clean_loss", "target", "effective_length", "direct_share",
            "reweighted_loss", "lesion_half_loss")


def _pick_run(infos: list[RunInfo]) -> RunInfo:
    labels = [f"{i.model or '-'} · {i.run_id}" + ("" if i.ok else " (corrupt)") for i in infos]
    k = st.selectbox("Run", range(len(infos)), format_func=lambda j: labels[j], key="paths_run")
    return infos[k if k is not None else 0]


def _run_view(store: Store, info: RunInfo) -> None:
    if not info.ok:
        st.error(f"Run {info.kind}/{info.run_id} is corrupt: {info.error}")
        return
    try:
        run = store.load(info.kind, info.run_id)
        lengths = run.table("lengths")
        tables = {name: run.table(name) for name in ("direct", "top_paths", "lesion_single", "lesion_random")
                  if name in run.names("table")}
        circuit = Circuit.from_json(run.json("circuit")) if "circuit" in run.names("json") else None
    except Exception as exc:
        st.error(f"Cannot read run {info.kind}/{info.run_id}: {exc}")
        return
    summary = run.summary
    params = run.params
    what = f"prompt: {params['prompt']!r}" if params.get("prompt") else f"task: {params.get('task')}"
    st.caption(f"{info.model or '-'} · {what} · target token {summary.get('target_token')!r}")
    numbers = [(k, summary[k]) for k in HEADLINE if isinstance(summary.get(k), (int, float))]
    if numbers:
        cols = st.columns(4)
        for j, (k, v) in enumerate(numbers):
            cols[j % 4].metric(k, f"{v:.4g}" if isinstance(v, float) else v)
    tab_len, tab_paths, tab_lesion = st.tabs(["By path length", "Top paths", "Lesions"])
    with tab_len:
        st.plotly_chart(length_profile_figure(lengths), key=f"{info.run_id}-profile")
        st.plotly_chart(loss_by_length_figure(lengths), key=f"{info.run_id}-loss")
        st.dataframe(lengths, hide_index=True, width="stretch")
    with tab_paths:
        if "top_paths" in tables:
            st.dataframe(tables["top_paths"], hide_index=True, width="stretch")
        if circuit is not None and len(circuit):
            st.plotly_chart(circuit.figure(title="Top paths"), key=f"{info.run_id}-circuit")
        if "direct" in tables:
            st.plotly_chart(direct_figure(tables["direct"]), key=f"{info.run_id}-direct")
    with tab_lesion:
        if "lesion_single" in tables or "lesion_random" in tables:
            st.plotly_chart(lesion_figure(tables.get("lesion_single"), tables.get("lesion_random")),
                            key=f"{info.run_id}-lesion")
        else:
            st.info("This run has no lesion study (it was made with --lesion-draws 0).")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    store = Store()
    try:
        infos = store.list(kind=KIND)
    except Exception as exc:
        st.error(f"Cannot read the run store at {store.root}: {exc}")
        return
    if not infos:
        st.info("No path-ensemble runs stored yet: run `workbench paths --prompt \"...\"` (or `workbench demo`).")
        return
    _run_view(store, _pick_run(infos))


main()
