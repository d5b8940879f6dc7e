"""Training: the zoo's training curves (per member and per family) and the fitted dynamics of massive activations.

Reads ``zoo-training`` runs (tables ``loss``, ``eval``) and ``dynamics`` runs (tables ``statistics``, ``fits``,
``predictor``) from the store; figures come from :mod:`workbench.zoo_curves` and :mod:`probes.dynamics`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from page_helpers import browse_runs, stored_runs

from workbench.store import Run, Store

st.set_page_config(page_title="Training", layout="wide")
st.title("Training: zoo curves and dynamics")


def _family_of(model: str) -> str:
    name = model.removeprefix("toy/")
    return name.split("-", 1)[0] if name.startswith(("llama-", "gpt-")) else name


def _curves_section(store: Store) -> None:
    from workbench.zoo_curves import training_figure

    st.header("Zoo training curves")
    infos = stored_runs(store, "zoo-training", only_ok=True,
                        empty="No zoo-training runs yet: build members (`workbench zoo build llama`) and store their "
                              "curves (`workbench.zoo_curves.store_training_run(name)`), or run `workbench demo`.")
    if not infos:
        return
    latest: dict[str, object] = {}
    for info in infos:  # newest first within a model
        latest.setdefault(info.model or info.run_id, info)
    families = sorted({_family_of(m) for m in latest})
    family = st.selectbox("Family", ["all", *families], key="family")
    members = [m for m in latest if family == "all" or _family_of(m) == family]
    chosen = st.multiselect("Members", members, default=members, key="members")
    curves, rows = {}, []
    for model in chosen:
        info = latest[model]
        try:
            run = store.load("zoo-training", info.run_id)
            losses, evals = run.table("loss"), run.table("eval")
        except Exception as exc:
            st.error(f"zoo-training run {info.run_id} of {model} cannot be read: {exc}")
            continue
        curves[model.removeprefix("toy/")] = (losses, evals)
        last = evals.iloc[-1] if len(evals) else {}
        rows.append({"member": model, "checkpoints": len(evals), "steps": int(losses["step"].max()) if len(losses) else 0,
                     "final train loss": last.get("train_loss"), "final held-out loss": last.get("heldout_loss"),
                     "seconds": run.summary.get("seconds")})
    if curves:
        st.plotly_chart(training_figure(curves), width="stretch")
        st.dataframe(pd.DataFrame(rows), hide_index=True)


def _show_dynamics(run: Run) -> None:
    from probes.dynamics import STATISTICS, dynamics_figure

    stats, fits = run.table("statistics"), run.table("fits")
    predictor = run.table("predictor") if "predictor" in run.names("table") else None
    statistic = st.radio("Statistic", list(STATISTICS), horizontal=True, key="dyn_stat")
    members = sorted(stats["member"].unique())
    chosen = st.multiselect("Members", members, default=members, key="dyn_members")
    sub = stats[stats["member"].isin(chosen)]
    st.plotly_chart(dynamics_figure(sub, fits, statistic), width="stretch")
    shown = fits[(fits["statistic"] == statistic) & fits["member"].isin(chosen)]
    st.subheader("Fits per layer")
    st.caption("f(t) = A exp(-λx) log(x) + K, x = γt + t0; t_peak from Lambert W; AIC against a logistic step in log-time.")
    st.dataframe(shown, hide_index=True)
    cols = st.columns(3)
    cols[0].metric("mean R²", f"{shown['r2'].mean():.3f}" if len(shown) else "–")
    cols[1].metric("min R²", f"{shown['r2'].min():.3f}" if len(shown) else "–")
    cols[2].metric("layers preferring a step", int((shown["preferred"] == "step").sum()))
    if predictor is not None:
        st.subheader("Predicting the five parameters from architecture (leave-one-model-out R²)")
        st.dataframe(predictor.pivot(index="model", columns="target", values="r2_lomo"))
    else:
        st.caption(str(run.summary.get("predictor", "")))


def _dynamics_section(store: Store) -> None:
    st.header("Training dynamics: massive activations and MLP sparsity")
    browse_runs(store, "dynamics", show=_show_dynamics, only_ok=True, key="dyn_run", label="Dynamics run",
                label_of=lambda i: f"{i.model} · {i.run_id}",
                empty="No dynamics runs yet: `workbench dynamics llama` (or `workbench demo`).")


store = Store()
_curves_section(store)
_dynamics_section(store)
