"""Pathways: stochastically subsampled self-attention (SSA) against dense training of the induction toy.

Reads runs of kind ``ssa`` (``workbench ssa``): held-out losses during training, the sub-model ensemble against its
size, and the attention cost. Figures come from :mod:`circuits.pathways.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs, metric_grid

from circuits.pathways.figures import cost_figure, curve_figure, ensemble_figure
from workbench.store import Run, Store

TITLE = "Pathways"
KIND = "ssa"


def _fmt(value: object, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _show(run: Run) -> None:
    s = run.summary
    for warning in s.get("warnings", []):
        st.warning(warning)
    metric_grid([("fraction of keys", s.get("fraction")), ("dense loss", _fmt(s.get("dense_loss"))),
                 ("SSA, dense inference", _fmt(s.get("ssa_dense_inference_loss"))),
                 ("SSA, ensemble", _fmt(s.get("ssa_ensemble_loss"))),
                 ("attention FLOPs saved", f"{_fmt(s.get('attention_flops_ratio'), '.2f')}x"),
                 ("training seconds, SSA / dense", _fmt(s.get("train_seconds_ratio"), ".2f"))])
    st.info(f"Implementation: {s.get('implementation', 'masked')}. The FLOP saving is analytic (kept keys only).")
    column = st.radio("Loss", ["loss", "loss_repeated_half", "loss_first_half"], horizontal=True,
                      key=f"{run.info.run_id}-col")
    left, right = st.columns(2)
    left.plotly_chart(curve_figure(run.table("curves"), column), key=f"{run.info.run_id}-curves")
    right.plotly_chart(ensemble_figure(run.table("losses"), column), key=f"{run.info.run_id}-ens")
    st.subheader("Final held-out losses")
    st.dataframe(run.table("losses"), hide_index=True, width="stretch")
    st.plotly_chart(cost_figure(run.table("cost")), key=f"{run.info.run_id}-cost")
    st.dataframe(run.table("cost"), hide_index=True)


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title("Pathways: subsampled attention (SSA)")
    browse_runs(Store(), KIND, show=_show, key="ssa_run", label_of=lambda i: f"{i.run_id} · {i.model}",
                empty="No SSA runs stored yet: run `workbench ssa` (the induction toy trained densely and with "
                      "subsampled attention) or `workbench demo`.")


main()
