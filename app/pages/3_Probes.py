"""Linear probes: cross-validated accuracy per layer against a shuffled-label control.

Reads ``probe`` runs from the store (written by :func:`probes.demos.store_probe`). A run that cannot be read is
reported with ``st.error``.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs

from probes.figures import probe_figure
from workbench.store import Store

st.set_page_config(page_title="Probes", layout="wide")
st.title("Linear probes on the residual stream")


def _show(run) -> None:
    s, p = run.summary, run.params
    cols = st.columns(4)
    cols[0].metric("best layer", str(s.get("best_layer", "-")))
    cols[1].metric("best accuracy", f"{s.get('best_accuracy', float('nan')):.3f}")
    cols[2].metric("control at best", f"{s.get('control_at_best', float('nan')):.3f}")
    cols[3].metric("examples", str(s.get("n", "-")))
    st.caption(f"corpus {p.get('corpus')}, pooling {p.get('pool')}, {p.get('folds')}-fold cross-validation")
    table = run.table("layers")
    st.plotly_chart(probe_figure(table), key="probe")
    st.dataframe(table, hide_index=True)


browse_runs(Store(), "probe", show=_show,
            empty="No probe run stored yet: run `workbench probe --model smollm2-135m` or `workbench demo`.")
