"""Paths: the logits split exactly by path length (against the binomial count of paths), the top individual paths,
direct attribution and the lesion curves.

Reads runs of kind ``paths`` (``workbench paths`` or ``circuits.paths.analyse_paths`` + ``save_paths_run``). Every
figure comes from :mod:`circuits.paths.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs, metric_grid

from circuits.paths.figures import direct_figure, length_profile_figure, lesion_figure, loss_by_length_figure
from workbench.circuit import Circuit
from workbench.store import Run, Store

TITLE = "Paths"
KIND = "paths"
HEADLINE = ("n_sublayers", "completeness_error", "clean_loss", "target", "effective_length", "direct_share",
            "reweighted_loss", "lesion_half_loss")


def _show(run: Run) -> None:
    info = run.info
    lengths = run.table("lengths")
    tables = {name: run.table(name) for name in ("direct", "top_paths", "lesion_single", "lesion_random")
              if name in run.names("table")}
    circuit = Circuit.from_json(run.json("circuit")) if "circuit" in run.names("json") else None
    summary = run.summary
    params = run.params
    what = f"prompt: {params['prompt']!r}" if params.get("prompt") else f"task: {params.get('task')}"
    st.caption(f"{info.model or '-'} · {what} · target token {summary.get('target_token')!r}")
    metric_grid([(k, summary[k]) for k in HEADLINE if isinstance(summary.get(k), (int, float))], columns=4)
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
    browse_runs(Store(), KIND, show=_show, key="paths_run", label_of=lambda i: f"{i.model or '-'} · {i.run_id}",
                empty="No path-ensemble runs stored yet: run `workbench paths --prompt \"...\"` (or `workbench demo`).")


main()
