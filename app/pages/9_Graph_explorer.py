"""Graph explorer: an attribution run's graph on its prompt, re-pruned live from the stored full graph, with feature
cards, pinned nodes and named supernodes.

Reads runs of kind ``attribution`` (``workbench attribute``). Everything computed here is a library call:
``circuits.attribution.storage.load_graph``, ``circuits.attribution.explore`` (re-pruning, layout, supernodes,
figure, selection) and ``circuits.attribution.cards`` (the feature card's contexts and histogram).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from page_helpers import metric_grid, pick_run, run_verb_with_progress, show_run, stored_runs

from circuits.attribution.cards import card_for, cards_by_feature, context_html, histogram_figure
from circuits.attribution.explore import GraphView, graph_figure, group, layout, reprune, selected_ids
from circuits.attribution.graph import AttributionGraph
from circuits.attribution.storage import MissingGraphError, load_graph
from workbench.store import Run, Store

TITLE = "Graph explorer"
MAKE_ONE = ('No attribution graph stored yet: run `workbench attribute --model toy/llama-d64-l4 --prompt "The city was '
            'founded in the early years of the" --train-tokens 20480` (or `workbench demo`).')


@st.cache_resource(max_entries=4, show_spinner=False)
def _graph(path: str, created: str) -> AttributionGraph:
    return load_graph(Store().load(*path.split("/")[-2:]))


@st.cache_resource(max_entries=32, show_spinner=False)
def _pruned_view(path: str, created: str, node_threshold: float, edge_threshold: float) -> GraphView:
    graph = _graph(path, created)
    return layout(graph, reprune(graph, node_threshold, edge_threshold))


@st.cache_resource(max_entries=4, show_spinner=False)
def _cards(path: str, created: str) -> dict:
    run = Store().load(*path.split("/")[-2:])
    return cards_by_feature(run.json("features") if "features" in run.names("json") else None)


def _state(run_id: str) -> dict[str, Any]:
    """This run's explorer state: pinned node ids and supernodes (name -> member ids)."""
    return st.session_state.setdefault("graph_explorer", {}).setdefault(run_id, {"supernodes": {}})


def _pin(key: str, node_id: str) -> None:
    st.session_state[key] = sorted({*st.session_state.get(key, []), node_id})


def _make_supernode(run_id: str, key: str, name_key: str) -> None:
    name, members = st.session_state.get(name_key, "").strip(), list(st.session_state.get(key, []))
    if name and members:
        supers = _state(run_id)["supernodes"]
        for other in supers.values():  # a node belongs to one supernode: the newest
            other[:] = [m for m in other if m not in members]
        supers[name] = members
        st.session_state[key] = []
        st.session_state[name_key] = ""


def _card_view(node_id: str, cards: dict, view: GraphView) -> None:
    """The feature card of a node: top contexts by activation interval, logits, histogram, frequency."""
    row = view.nodes[view.nodes["id"] == node_id]
    card = card_for(node_id, cards)
    if card is None:
        st.info(f"{node_id}: no feature card (cards exist for feature nodes; the run computed them for "
                f"{len(cards)} features, see `--max-feature-files`)." if cards else
                f"{node_id}: this run holds no feature cards (run `workbench attribute` with `--feature-files`).")
        return
    activation = float(row["activation"].iloc[0]) if len(row) else None
    st.subheader(f"Feature card: {card['transcoder_id']}.f{card['feature']}")
    metric_grid([("activation here", activation if activation is not None else "-"),
                 ("max activation", float(card["act_max"])), ("frequency", float(card["activation_frequency"])),
                 ("tokens scanned", int(card["n_tokens"]))])
    left, right = st.columns([3, 2])
    with left:
        if not card["n_positive"]:
            st.info(f"Never active on the {card['n_tokens']} held-out tokens scanned (see `--feature-tokens`).")
        for q in card["examples_quantiles"]:
            if q["examples"]:
                st.markdown(f"**{q['quantile_name']}**")
                st.markdown("".join(context_html(ex, float(card["act_max"])) for ex in q["examples"]),
                            unsafe_allow_html=True)
    with right:
        st.dataframe(pd.DataFrame({"top logits": card["top_logits"], "effect": card["top_logit_values"],
                                   "bottom logits": card["bottom_logits"], "effect ": card["bottom_logit_values"]}),
                     hide_index=True, width="stretch")
        st.plotly_chart(histogram_figure(card, activation), key=f"hist-{node_id}", width="stretch")


def _show(run: Run) -> None:
    try:
        graph = _graph(f"{run.kind}/{run.run_id}", str(run.manifest.get("created")))
    except MissingGraphError as exc:
        st.info(f"{exc}.")
        return
    s, p, rid = run.summary, run.params, run.run_id
    metric_grid([("replacement score", s.get("replacement_score")), ("completeness score", s.get("completeness_score")),
                 ("feature nodes", graph.n_features), ("graph edges", s.get("graph_edges"))])
    for w in s.get("warnings", []):
        st.warning(w)
    cols = st.columns(2)
    node_t = cols[0].slider("Node influence threshold", 0.0, 1.0, float(p.get("node_threshold", 0.8)), 0.01,
                            key=f"node-{rid}", help="keep the nodes holding this fraction of the influence")
    edge_t = cols[1].slider("Edge influence threshold", 0.0, 1.0, float(p.get("edge_threshold", 0.98)), 0.005,
                            key=f"edge-{rid}", help="keep the edges holding this fraction of the edge influence")
    view = _pruned_view(f"{run.kind}/{rid}", str(run.manifest.get("created")), node_t, edge_t)
    state, pin_key, inspect_key = _state(rid), f"pinned-{rid}", f"inspect-{rid}"
    cards = _cards(f"{run.kind}/{rid}", str(run.manifest.get("created")))
    shown = group(view, state["supernodes"])
    st.caption(f"{len(shown.nodes)} nodes ({len(view.nodes)} before grouping), {len(shown.edges)} edges; the full "
               f"graph has {graph.n_nodes} nodes. Click a node to see its feature card.")
    fig = graph_figure(shown, pinned=st.session_state.get(pin_key, []), selected=st.session_state.get(inspect_key))
    event = st.plotly_chart(fig, key=f"chart-{rid}", on_select="rerun", selection_mode="points", width="stretch")
    options = list(view.nodes["id"])
    clicked = [i for i in selected_ids(event, fig) if i in options]
    if clicked and clicked[0] != state.get("clicked"):  # a new click (a kept selection does not pin the box)
        st.session_state[inspect_key] = state["clicked"] = clicked[0]
    elif st.session_state.get(inspect_key) not in options:  # first visit, or the node was pruned away
        st.session_state[inspect_key] = next((i for i in options if card_for(i, cards)), options[0])
    node_id = st.selectbox("Inspect node", options, key=inspect_key)
    st.button("Pin this node", key=f"pin-{rid}", on_click=_pin, args=(pin_key, node_id))
    st.multiselect("Pinned nodes", sorted({*options, *st.session_state.get(pin_key, [])}), key=pin_key)
    c1, c2 = st.columns([3, 1])
    c1.text_input("Supernode name", key=f"name-{rid}", placeholder="e.g. 'say a capital'")
    c2.button("Group pinned nodes", key=f"group-{rid}", on_click=_make_supernode, args=(rid, pin_key, f"name-{rid}"))
    if state["supernodes"]:
        st.dataframe(pd.DataFrame({"supernode": list(state["supernodes"]),
                                   "members": [", ".join(m) for m in state["supernodes"].values()]}),
                     hide_index=True, width="stretch")
        if st.button("Ungroup all", key=f"ungroup-{rid}"):
            state["supernodes"].clear()
            st.rerun()
    _card_view(node_id, cards, view)
    if (run.path / "graph_files").is_dir():
        st.caption(f"circuit-tracer's graph and feature files of this run: `{run.path / 'graph_files'}`")
    _interventions(run, graph, node_id, list(st.session_state.get(pin_key, [])))


def _interventions(run: Run, graph: AttributionGraph, node_id: str, pinned: list[str]) -> None:
    """Zero, scale or set the pinned feature nodes (else the inspected one) and rerun: ``workbench intervene`` with
    this run's prompt, transcoders and targets (:func:`circuits.attribution.intervene_analysis.config_for_graph`),
    started with a progress bar; its stored run's figures are drawn here."""
    from dataclasses import asdict

    from circuits.attribution.intervene_analysis import INTERVENE, config_for_graph
    from workbench.errors import ConfigError
    from workbench.ui import launch

    st.subheader("Intervene")
    nodes = [n for n in (pinned or [node_id]) if n.startswith("tc")]
    if not nodes:
        st.info("Pin feature nodes (tcL.fI@P) to intervene on them; error nodes, embeddings and logits cannot be set.")
        return
    c1, c2, c3 = st.columns(3)
    op = c1.radio("Operation", ["zero", "scale", "set"], horizontal=True, key=f"iv-op-{run.run_id}")
    value = c2.number_input("Factor" if op == "scale" else "Value", value=0.0 if op == "set" else 2.0,
                            key=f"iv-value-{run.run_id}", disabled=op == "zero")
    mode = c3.radio("Rerun", ["spliced", "replacement"], horizontal=True, key=f"iv-mode-{run.run_id}",
                    help="spliced: the real model with the transcoders in place of the MLPs; replacement: the frozen "
                         "linearised model the graph describes")
    try:
        cfg = config_for_graph(run.params, nodes, op, float(value), mode)
    except ConfigError as exc:
        st.error(str(exc))
        return
    argv = launch.build_argv("intervene", {**asdict(cfg), "model": run.model})
    st.code(launch.shell_command(argv), language="bash")
    if not st.button(f"Run the intervention on {len(nodes)} feature(s)", key=f"iv-run-{run.run_id}"):
        return
    result = run_verb_with_progress(argv)
    if result is None:
        return
    stored = Store().load("intervention", result["run"]["run_id"])
    for w in stored.summary.get("warnings", []):
        st.warning(w)
    st.dataframe(stored.table("targets"), hide_index=True, width="stretch")
    for name, fig in INTERVENE.figures(stored).items():
        st.plotly_chart(fig, key=f"iv-{name}-{run.run_id}", width="stretch")


def _label(info: Any) -> str:
    prompt = str(((info.manifest or {}).get("params") or {}).get("prompt") or "")
    return f"{info.model or '-'} · {prompt[:50]!r} · {info.run_id}"


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    store = Store()
    infos = stored_runs(store, "attribution", empty=MAKE_ONE)
    if infos:
        show_run(store, pick_run(infos, _label, key="graph_run"), _show)


main()
