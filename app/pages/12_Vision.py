"""Vision: a vision transformer on the digits as an ensemble of paths (the class token's logits split exactly by path
length, path pruning and EnsembleScale) and its lazy neurons (active MLP neurons per layer).

Reads runs of kind ``vit`` (``workbench vit --model toy/vit-relu-d64-l4``). Every figure comes from
:mod:`circuits.vision.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs, metric_grid

from circuits.vision.figures import examples_figure, lengths_figure, pruning_figure, sparsity_figure
from workbench.store import Run, Store

TITLE = "Vision"
KIND = "vit"
HEADLINE = ("accuracy", "completeness_error", "n_sublayers", "drop_longest_accuracy", "greedy_accuracy",
            "ensemble_scale_accuracy", "mean_active", "active_last_layer")


def _show(run: Run) -> None:
    info, summary = run.info, run.summary
    st.caption(f"{info.model or '-'} · {summary.get('n_images')} {summary.get('split')} digits · "
               f"{summary.get('activation')} MLP · greedy pruning dropped lengths {summary.get('greedy_dropped')!r}")
    for warning in summary.get("warnings", []):
        st.warning(warning)
    metric_grid([(k, summary[k]) for k in HEADLINE if isinstance(summary.get(k), (int, float))], columns=4)
    tab_len, tab_prune, tab_lazy, tab_digits = st.tabs(["Path lengths", "Pruning and EnsembleScale", "Lazy neurons",
                                                        "Digits"])
    with tab_len:
        lengths = run.table("lengths")
        st.plotly_chart(lengths_figure(lengths), key=f"{info.run_id}-lengths")
        st.dataframe(lengths, hide_index=True, width="stretch")
    with tab_prune:
        pruning = run.table("pruning")
        st.plotly_chart(pruning_figure(pruning), key=f"{info.run_id}-pruning")
        st.dataframe(pruning, hide_index=True, width="stretch")
        if "scales" in run.names("table"):
            st.caption("EnsembleScale: one weight per path length, fitted on the held-out digits")
            st.dataframe(run.table("scales"), hide_index=True)
    with tab_lazy:
        sparsity = run.table("sparsity")
        st.plotly_chart(sparsity_figure(sparsity), key=f"{info.run_id}-sparsity")
        st.dataframe(sparsity, hide_index=True, width="stretch")
    with tab_digits:
        examples = run.tensors("examples")
        if int(examples["images"].shape[0]):
            st.plotly_chart(examples_figure(examples), key=f"{info.run_id}-examples")
        else:
            st.info("This run draws no digits (it was made with --examples 0).")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    browse_runs(Store(), KIND, show=_show, key="vit_run", label_of=lambda i: f"{i.model or '-'} · {i.run_id}",
                empty="No vision-transformer runs stored yet: run `workbench vit --model toy/vit-relu-d64-l4` "
                      "(or `workbench demo`).")


main()
