"""Formation: induction-head formation in the induction toy under clamps applied at every training step.

Reads runs of kind ``formation`` (``workbench formation``): the table of phase-change steps, final induction scores
and repeated-half losses per clamp, the loss and score curves, and every head's scores at a chosen evaluation.
Figures come from :mod:`circuits.formation.figures`; the page computes nothing itself.
"""

from __future__ import annotations

import streamlit as st
from page_helpers import browse_runs, metric_grid

from circuits.formation.figures import loss_figure, score_figure
from workbench.store import Run, Store

TITLE = "Formation"
KIND = "formation"


def _show(run: Run) -> None:
    summary = run.summary
    for warning in summary.get("warnings", []):
        st.warning(warning)
    clamps, curves, heads = run.table("clamps"), run.table("curves"), run.table("heads")
    prev = summary.get("prev_head")
    metric_grid([("runs", summary.get("runs")), ("steps", summary.get("steps")),
                 ("previous-token head", "–" if prev is None else f"L0.H{prev}"),
                 ("seconds", f"{summary.get('seconds', 0):.0f}")])
    st.subheader("Phase change per clamp")
    st.caption("Phase-change step: end of the evaluation interval with the steepest fall of the repeated-half loss "
               "(none when that fall is below the run's --min-drop). Final induction score: the best last-layer head.")
    st.dataframe(clamps, hide_index=True, width="stretch")
    st.plotly_chart(loss_figure(curves, clamps), key=f"{run.info.run_id}-loss")
    left, right = st.columns(2)
    left.plotly_chart(score_figure(curves, "best_induction"), key=f"{run.info.run_id}-ind")
    right.plotly_chart(score_figure(curves, "best_previous_token_l0"), key=f"{run.info.run_id}-prev")
    st.subheader("Every head at one evaluation")
    clamp = st.selectbox("Clamp", list(dict.fromkeys(clamps["clamp"])), key=f"{run.info.run_id}-clamp")
    steps = sorted(heads["step"].unique().tolist())
    step = st.select_slider("Step", steps, value=steps[-1], key=f"{run.info.run_id}-step")
    shown = heads[(heads["clamp"] == clamp) & (heads["step"] == step)]
    st.dataframe(shown[["head_name", "induction", "previous_token"]], hide_index=True)


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title("Formation: induction heads under clamps")
    browse_runs(Store(), KIND, show=_show, key="formation_run", label_of=lambda i: f"{i.run_id} · {i.model}",
                empty="No formation runs stored yet: run `workbench formation` (the induction toy trained under each "
                      "clamp of a sweep) or `workbench demo`.")


main()
