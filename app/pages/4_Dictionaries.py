"""Dictionaries: metrics of each stored SAE / transcoder and a feature browser (contexts, histogram, logit effects);
cross-layer transcoders (``clt`` runs): per-layer FVU / L0 and the source x target decoder-norm map.

Reads ``dictionary`` and ``clt`` runs from the store; all numbers come from the run's tables (computed by
``circuits.dictionaries``). A run that cannot be read is reported with ``st.error`` and skipped.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from page_helpers import browse_runs

from circuits.dictionaries.clt_analysis import TRAIN_CLT
from circuits.dictionaries.figures import (
    activation_histogram,
    context_html,
    frequency_histogram,
    frontier_figure,
    training_figure,
)
from workbench.store import Store

st.set_page_config(page_title="Dictionaries", layout="wide")
st.title("Dictionaries: SAEs and transcoders")


def _browse(run, index: int, d_sae: int) -> None:
    latents = run.table(f"latents-{index}") if f"latents-{index}" in run.names("table") else None
    if latents is None:
        st.info("This run stored no feature tables.")
        return
    contexts = run.table(f"contexts-{index}")
    col1, col2 = st.columns([1, 3])
    with col1:
        latent = int(st.number_input("Latent index", min_value=0, max_value=max(0, d_sae - 1), value=0, step=1,
                                     key=f"latent-{run.info.run_id}-{index}"))
        order = st.selectbox("Or pick among the most frequent", ["-"] + [
            str(int(r)) for r in latents.sort_values("frequency", ascending=False)["latent"].head(50)
        ] if "frequency" in latents else ["-"], key=f"pick-{run.info.run_id}-{index}")
        if order != "-":
            latent = int(order)
        row = latents[latents["latent"] == latent]
        if len(row):
            r = row.iloc[0]
            st.metric("max activation", f"{r['max_activation']:.3f}")
            if "frequency" in r:
                st.metric("firing frequency", f"{r['frequency']:.4%}")
    with col2:
        rows = contexts[contexts["latent"] == latent].sort_values("rank")
        st.subheader(f"Top-activating contexts of latent {latent}")
        if rows.empty:
            st.write("No activation on the scanned tokens.")
        for _, c in rows.iterrows():
            st.markdown(f"`{c['activation']:.3f}` " + context_html(list(c["tokens"]), int(c["highlight"]),
                                                                   float(c["activation"])), unsafe_allow_html=True)
        if len(row):
            r = row.iloc[0]
            views = {k: list(r[k]) for k in ("promoted", "suppressed", "de_embedding") if k in r and r[k] is not None}
            if views:
                st.subheader("Logit effects and de-embedding")
                st.dataframe(pd.DataFrame({k: pd.Series(v) for k, v in views.items()}), use_container_width=True)
        hists = run.tensors("histograms")
        if f"d{index}" in hists:
            st.plotly_chart(activation_histogram(hists[f"d{index}"][latent], hists["edges"], latent),
                            use_container_width=True)


def _show(run) -> None:
    metrics = run.table("metrics")
    st.subheader("Metrics")
    st.dataframe(metrics, use_container_width=True)
    if len(metrics) > 1:
        y = st.selectbox("Frontier axis", ["ce_spliced", "fvu", "ce_recovered_zero", "kl"], key=f"y-{run.info.run_id}")
        st.plotly_chart(frontier_figure(metrics, y=y), use_container_width=True)
    if "history" in run.names("table"):
        st.plotly_chart(training_figure(run.table("history")), use_container_width=True)
    entries = run.json("dictionaries")
    labels = [e["label"] for e in entries]
    label = st.selectbox("Dictionary", labels, key=f"dict-{run.info.run_id}")
    entry = entries[labels.index(label)]
    freqs = run.tensors("frequencies")
    if f"d{entry['index']}" in freqs:
        st.plotly_chart(frequency_histogram(freqs[f"d{entry['index']}"]), use_container_width=True)
    st.subheader("Feature browser")
    _browse(run, entry["index"], int(entry["config"]["d_sae"]))


browse_runs(Store(), "dictionary", show=_show, only_ok=True, key=None, label_of=lambda i: f"{i.run_id} ({i.model})",
            empty="No dictionary runs yet: `workbench train-dict --layer 3 --kind transcoder --activation topk --k 16` "
                  "or `workbench demo`.")


def _show_clt(run) -> None:
    s = run.summary
    cols = st.columns(4)
    cols[0].metric("CE clean", f"{s.get('ce_clean', float('nan')):.4f}")
    cols[1].metric("CE, every MLP replaced", f"{s.get('ce_spliced', float('nan')):.4f}")
    rec = s.get("ce_recovered_zero")
    cols[2].metric("CE recovered (zero)", "-" if rec is None else f"{rec:.3f}")
    share = s.get("cross_layer_share")
    cols[3].metric("cross-layer decoder share", "-" if share is None else f"{share:.3f}")
    for warning in s.get("warnings", []):
        st.warning(warning)
    st.dataframe(run.table("layers"), use_container_width=True)
    for fig in TRAIN_CLT.figures(run).values():
        st.plotly_chart(fig, use_container_width=True)
    st.caption(f"Files in circuit-tracer's layout: `{run.subpath('clt')}` (open with `workbench attribute "
               "--transcoder` that folder)")


st.header("Cross-layer transcoders")
browse_runs(Store(), "clt", show=_show_clt, only_ok=True, key="clt-run", label="CLT run",
            label_of=lambda i: f"{i.run_id} ({i.model})",
            empty="No cross-layer transcoder runs yet: `workbench train-clt --model toy/llama-d64-l2 --k 8`.")
