"""Bigram subnetworks: where the kept weights sit (layer x sublayer), how well the subnetwork predicts the bigram
distribution, and what ablating it does to the full model against a random subnetwork of the same size.

Reads runs of kind ``bigram`` (``workbench bigram`` or ``circuits.bigram.analysis.BIGRAM``). Every figure comes from
:mod:`circuits.bigram.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs, metric_grid

from circuits.bigram.figures import figures
from workbench.store import Run, Store

TITLE = "Bigram subnetworks"
KIND = "bigram"
HEADLINE = ("kept_fraction", "n_kept", "first_mlp_share", "top_sublayer", "corr_subnetwork", "corr_full",
            "lm_loss_full", "lm_loss_ablated", "lm_loss_random")


def _show(run: Run) -> None:
    info, summary, params = run.info, run.summary, run.params
    st.caption(f"{info.model or '-'} · corpus {params.get('corpus')} · {params.get('steps')} steps · "
               f"lambda {summary.get('lambda_initial', params.get('l0_lambda'))} · budget {params.get('budget')}")
    for warning in summary.get("warnings", []):
        st.warning(warning)
    metric_grid([(k, summary[k]) for k in HEADLINE if isinstance(summary.get(k), (int, float, str))], columns=3)
    figs = figures(run)
    tab_where, tab_corr, tab_ablation, tab_training = st.tabs(["Where", "Bigram correlation", "Ablation", "Training"])
    with tab_where:
        st.plotly_chart(figs["kept"], key=f"{info.run_id}-kept")
        st.dataframe(run.table("layers"), hide_index=True, width="stretch")
    with tab_corr:
        st.plotly_chart(figs["correlation"], key=f"{info.run_id}-corr")
    with tab_ablation:
        st.plotly_chart(figs["ablation"], key=f"{info.run_id}-ablation")
        st.dataframe(run.table("metrics"), hide_index=True, width="stretch")
    with tab_training:
        st.plotly_chart(figs["training"], key=f"{info.run_id}-training")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    browse_runs(Store(), KIND, show=_show, key="bigram_run", label_of=lambda i: f"{i.model or '-'} · {i.run_id}",
                empty="No bigram subnetwork runs stored yet: run `workbench bigram --model toy/llama-d64-l2` (or "
                      "`workbench demo`).")


main()
