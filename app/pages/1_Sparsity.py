"""Sparsity: fraction of active MLP units per layer (train versus held-out), |a| > tau, neuron firing frequencies,
performance-aware cutoffs and top-k losses.

Reads ``sparsity`` runs from the store (written by :func:`probes.demos.store_sparsity`); the figures come from
:mod:`probes.figures`. A run that cannot be read is reported with ``st.error``.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs

from probes.figures import (
    firing_histogram_figure,
    sparsity_layers_figure,
    tau_figure,
    thresholds_figure,
    topk_figure,
)
from workbench.store import Store

st.set_page_config(page_title="Sparsity", layout="wide")
st.title("Activation sparsity (lazy neurons)")


def _show(run) -> None:
    s = run.summary
    cols = st.columns(4)
    cols[0].metric("activation", str(s.get("activation", "-")))
    for col, split in zip(cols[1:3], ("train", "heldout"), strict=False):
        if f"fraction_nonzero_{split}" in s:
            col.metric(f"% nonzero ({split})", f"{100 * s[f'fraction_nonzero_{split}']:.2f}%")
    cols[3].metric("dead neurons (train)", str(s.get("dead_neurons_train", "-")))
    layers = run.table("layers")
    left, right = st.columns(2)
    left.plotly_chart(sparsity_layers_figure(layers, "fraction_nonzero"), key="nonzero")
    right.plotly_chart(sparsity_layers_figure(layers, "fraction_pre_positive"), key="prepos")
    tau = run.table("tau")
    splits = list(dict.fromkeys(layers["split"]))
    split = st.selectbox("Split", splits, key="split")
    left, right = st.columns(2)
    left.plotly_chart(tau_figure(tau, split), key="tau")
    neurons = run.tensors("neurons")
    if f"{split}.hist_counts" in neurons:
        dead = int(layers[layers["split"] == split]["dead_neurons"].sum())
        right.plotly_chart(firing_histogram_figure(neurons[f"{split}.hist_counts"], neurons[f"{split}.hist_edges"],
                                                   dead), key="hist")
    names = run.names("table")
    if "thresholds" in names:
        st.subheader("Performance-aware cutoffs")
        thr = run.table("thresholds")
        st.plotly_chart(thresholds_figure(thr), key="thr")
        st.dataframe(thr, hide_index=True)
    if "topk" in names:
        st.subheader("Held-out loss versus top-k")
        st.plotly_chart(topk_figure(run.table("topk")), key="topk")
    st.subheader("Per layer")
    st.dataframe(layers, hide_index=True)


browse_runs(Store(), "sparsity", show=_show,
            empty="No sparsity run stored yet: run `workbench sparsity --model smollm2-135m` or `workbench demo`.")
