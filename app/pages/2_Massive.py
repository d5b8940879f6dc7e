"""Massive activations: residual-stream magnitudes per layer, where the largest values sit (position, dimension,
token), a layer x dimension map, the zero / mean / random intervention, and their training dynamics.

Reads ``massive`` runs (written by :func:`probes.demos.store_massive`) and ``dynamics`` runs (written by
:mod:`probes.dynamics_run`). A run that cannot be read is reported with ``st.error``.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs

from probes.figures import intervention_figure, massive_heatmap_figure, massive_layers_figure
from workbench.store import Store

st.set_page_config(page_title="Massive activations", layout="wide")
st.title("Massive activations")


def _show(run) -> None:
    s = run.summary
    cols = st.columns(4)
    cols[0].metric("max |h|", f"{s.get('max_value', float('nan')):,.0f}")
    cols[1].metric("where", f"layer {s.get('max_layer')}, dim {s.get('max_dim')}, pos {s.get('max_pos')}")
    cols[2].metric("max top-1 / median", f"{s.get('max_ratio', float('nan')):,.0f}")
    cols[3].metric("massive layers", str(len(s.get("massive_layers", []))))
    layers = run.table("layers")
    tensors = run.tensors("stats")
    left, right = st.columns(2)
    left.plotly_chart(massive_layers_figure(layers), key="layers")
    d_model = int(tensors["max_abs"].shape[1])
    top_dims = right.slider("Dimensions shown (largest)", 8, d_model, min(64, d_model), key="dims") if d_model > 8 else 0
    right.plotly_chart(massive_heatmap_figure(tensors["max_abs"], layers["layer"].tolist(), top_dims), key="heat")
    if "intervention" in run.names("json"):
        result = run.json("intervention")
        st.subheader("Intervention (held-out loss)")
        left, right = st.columns([2, 1])
        left.plotly_chart(intervention_figure(result), key="int")
        right.json(result)
    st.subheader("Largest values per layer")
    st.dataframe(layers, hide_index=True)
    if "tokens" in run.names("table"):
        st.subheader("Tokens carrying massive activations (positions after the first)")
        st.dataframe(run.table("tokens"), hide_index=True)


def _show_dynamics(run) -> None:
    from probes.dynamics import dynamics_figure

    stats, fits = run.table("statistics"), run.table("fits")
    options = [c for c in ("massive_ratio", "top1", "median", "mlp_active") if c in stats.columns]
    statistic = st.selectbox("Statistic", options or ["massive_ratio"], key="dynstat")
    st.plotly_chart(dynamics_figure(stats, fits, statistic), key="dyn")
    st.dataframe(fits, hide_index=True)


def _dynamics(store: Store) -> None:
    st.header("Training dynamics")
    browse_runs(store, "dynamics", show=_show_dynamics, empty="No dynamics run stored yet.", key="dynrun",
                label="dynamics run")


store = Store()
browse_runs(store, "massive", show=_show, label="massive run",
            empty="No massive run stored yet: run `workbench massive --model smollm2-135m` or `workbench demo`.")
_dynamics(store)
