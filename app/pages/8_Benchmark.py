"""Benchmark: circuit discovery methods scored against models whose circuits are known.

Reads runs of kind ``benchmark`` (``workbench benchmark``): the score table (node and edge ROC-AUC, CPR, CMD,
faithfulness of the top-k circuit, seconds), and per ground-truth model the ROC curves, the faithfulness-versus-size
curves, the agreement of the methods and their top-k circuits side by side. Figures come from
:mod:`circuits.benchmark.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs

from circuits.benchmark.figures import agreement_figure, curve_figure, roc_figure, side_by_side_figure
from workbench.store import Run, Store

TITLE = "Benchmark"
KIND = "benchmark"


def _show(run: Run) -> None:
    scores = run.table("scores")
    summary = run.summary
    for warning in summary.get("warnings", []):
        st.warning(warning)
    st.caption(f"{len(set(scores['model']))} ground-truth models · methods: {', '.join(dict.fromkeys(scores['method']))}")
    st.subheader("Mean over the ground-truth models")
    st.dataframe(run.table("means"), hide_index=True, width="stretch")
    st.subheader("Every model and method")
    st.dataframe(scores, hide_index=True, width="stretch")
    if "not_applicable" in scores:
        skipped = scores[scores["not_applicable"].notna()]
        if len(skipped):
            st.info("Not applicable (empty rows, left out of the means): " + "; ".join(
                f"{r.method} on {r.model}" for r in skipped.itertuples()) + ". The transcoder methods need MLPs.")
    model = st.selectbox("Ground-truth model", list(dict.fromkeys(scores["model"])), key=f"{run.info.run_id}-model")
    roc, curves = run.table("roc"), run.table("curves")
    left, right = st.columns(2)
    left.plotly_chart(roc_figure(roc, model, "edge"), key=f"{run.info.run_id}-{model}-roc-edge")
    right.plotly_chart(roc_figure(roc, model, "node"), key=f"{run.info.run_id}-{model}-roc-node")
    st.plotly_chart(curve_figure(curves, model), key=f"{run.info.run_id}-{model}-curve")
    left, right = st.columns(2)
    left.plotly_chart(agreement_figure(run.table("agreement"), model), key=f"{run.info.run_id}-{model}-agree")
    right.plotly_chart(side_by_side_figure(run.table("top"), model), key=f"{run.info.run_id}-{model}-side")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    browse_runs(Store(), KIND, show=_show, key="benchmark_run", label_of=lambda i: f"{i.run_id}",
                empty="No benchmark runs stored yet: run `workbench benchmark` (or `workbench demo`).")


main()
