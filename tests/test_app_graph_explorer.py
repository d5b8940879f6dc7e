"""The Graph explorer page on a real attribute run (AppTest): re-pruning from the stored full graph, the feature
card, pinning and supernodes; an empty store and a run without a full graph say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_attribution import _folders

from circuits.attribution.explore import layout, reprune
from workbench.nodes import parse
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "9_Graph_explorer.py")
TIMEOUT = 30


@pytest.fixture(scope="module")
def attribution_run(tiny_llama, tmp_path_factory):
    """An attribute run of the tiny Llama with feature cards in a store of its own: (store root, RunInfo, Result)."""
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig

    tmp = tmp_path_factory.mktemp("explorer")
    cfg = AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=_folders(tiny_llama, tmp), feature_tokens=256,
                          max_feature_files=20)
    store = Store(tmp / "runs")
    info, result = ATTRIBUTE.launch(tiny_llama, cfg, store=store)
    with store.create("attribution", model="tiny", run_id="20200101-000000-nograph") as w:
        w.summary["nodes"] = 0
    return store.root, info, result


@pytest.fixture
def explorer_store(attribution_run, monkeypatch):
    root, info, result = attribution_run
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    return info, result


def _run(target) -> AppTest:
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def card_key(node_id: str) -> tuple[int, int] | None:
    node = parse(node_id)
    return (node.layer, node.feature) if node.kind == "feature" else None


def _open(run_id: str) -> AppTest:
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    box = at.selectbox(key="graph_run")
    return _run(box.select_index(next(i for i, label in enumerate(box.options) if run_id in label)))


def _caption_nodes(at: AppTest) -> int:
    return int(next(c.value for c in at.caption if "nodes (" in c.value).split()[0])


def test_graph_repruning_and_feature_card(explorer_store):
    info, result = explorer_store
    graph, rid = result.objects["graph"], info.run_id
    at = _open(rid)
    assert at.title[0].value == "Graph explorer"
    assert not at.error, [e.value for e in at.error]
    assert _caption_nodes(at) == len(layout(graph, reprune(graph, 0.8, 0.98)).nodes)
    # the inspected node opens on a feature with a card
    assert at.selectbox(key=f"inspect-{rid}").value.startswith("tc")
    assert any(s.value.startswith("Feature card: tc") for s in at.subheader)
    # a feature that fired on the held-out text: its contexts, logits, histogram and frequency
    cards = {(c["layer"], c["feature"]): c for c in result.json["features"]["features"] if c["n_positive"]}
    node = next(o for o in at.selectbox(key=f"inspect-{rid}").options if (card_key(o) or ()) in cards)
    at = _run(at.selectbox(key=f"inspect-{rid}").set_value(node))
    card = cards[card_key(node)]
    assert any(m.label == "frequency" and m.value == f"{card['activation_frequency']:.4g}" for m in at.metric)
    assert any("Top activations" in m.value for m in at.markdown)
    assert any("rgba(242,142,43" in m.value for m in at.markdown)
    logits = next(d.value for d in at.dataframe if "top logits" in d.value.columns)
    assert list(logits["top logits"]) == card["top_logits"]
    # the sliders re-prune the stored full graph
    for node_t, edge_t in ((0.5, 0.98), (0.95, 0.9)):
        at.slider(key=f"node-{rid}").set_value(node_t)
        at = _run(at.slider(key=f"edge-{rid}").set_value(edge_t))
        assert _caption_nodes(at) == len(layout(graph, reprune(graph, node_t, edge_t)).nodes)


def test_pin_and_group_into_a_supernode(explorer_store):
    info, _ = explorer_store
    rid = info.run_id
    at = _open(rid)
    before = _caption_nodes(at)
    options = [o for o in at.selectbox(key=f"inspect-{rid}").options if o.startswith("tc")][:2]
    for node in options:
        at = _run(at.selectbox(key=f"inspect-{rid}").set_value(node))
        at = _run(at.button(key=f"pin-{rid}").click())
    assert sorted(at.multiselect(key=f"pinned-{rid}").value) == sorted(options)
    at.text_input(key=f"name-{rid}").input("pair")
    at = _run(at.button(key=f"group-{rid}").click())
    assert _caption_nodes(at) == before - 1
    assert at.multiselect(key=f"pinned-{rid}").value == []
    table = next(d.value for d in at.dataframe if "supernode" in d.value.columns)
    assert list(table["supernode"]) == ["pair"]
    at = _run(at.button(key=f"ungroup-{rid}").click())
    assert _caption_nodes(at) == before


def test_a_run_without_a_full_graph_says_so(explorer_store):
    at = _open("nograph")
    assert any("no full attribution graph" in i.value for i in at.info)


def test_empty_store_says_how_to_make_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "none"))
    at = _run(AppTest.from_file(PAGE, default_timeout=TIMEOUT))
    assert any("workbench attribute --model" in i.value for i in at.info)


def test_intervention_section_builds_the_intervene_command(explorer_store, tiny_llama):
    """The Intervene section turns the inspected feature into `workbench intervene` with the run's own prompt and
    transcoders; the config it builds reruns the graph's prediction exactly in replacement mode."""
    import math

    from circuits.attribution.intervene_analysis import INTERVENE, config_for_graph
    from workbench.errors import ConfigError

    info, result = explorer_store
    rid = info.run_id
    at = _open(rid)
    node = at.selectbox(key=f"inspect-{rid}").value
    assert any(s.value == "Intervene" for s in at.subheader)
    command = next(c.value for c in at.code if c.value.startswith("workbench intervene"))
    assert f"--zero {node}" in command and "--prompt 't3 t5 t7 t3 t5'" in command and "--transcoder" in command
    params = Store().load("attribution", rid).params
    cfg = config_for_graph(params, [node], "scale", 0.0, "replacement")
    assert cfg.prompt == params["prompt"] and cfg.transcoder == params["transcoder"] and cfg.scale == [f"{node}=0"]
    targets = INTERVENE.run(tiny_llama, cfg).tables["targets"]
    for measured, predicted in zip(targets.measured_change, targets.predicted_change, strict=True):
        assert math.isclose(measured, predicted, rel_tol=1e-3, abs_tol=1e-4)
    with pytest.raises(ConfigError, match="err:"):
        config_for_graph(params, ["err:tc0@1"], "zero")
    with pytest.raises(ConfigError, match="at least one"):
        config_for_graph(params, [], "zero")
