"""workbench.circuit.Circuit: id parsing, JSON and GraphML round trips, pruning, tables, the plotly figure."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from workbench.circuit import ATTRS, KINDS, Circuit, parse_node_id


def _ioi_like() -> Circuit:
    c = Circuit("toy", metadata={"model": "zoo-attn2", "tokens": ["A", "B", "A"], "nested": {"k": [1, 2]}})
    c.add_node("emb@0", token="A")
    c.add_node("emb@2", token="A", activation=1.0)
    c.add_node("L0.H1@2", score=0.9, activation=np.float32(0.25))
    c.add_node("L1.H0@2", score=-0.4)
    c.add_node("L1.H3", score=0.01)  # weak, position-free
    c.add_node("mlp1@2", score=0.3)
    c.add_node("tc1.f123@2", score=0.2, activation=3.5)
    c.add_node("err:tc1@2", score=None)
    c.add_node("logit: B", score=1.0)
    c.add_edge("emb@0", "L0.H1@2", 0.7)
    c.add_edge("emb@2", "L0.H1@2", -0.05)
    c.add_edge("L0.H1@2", "L1.H0@2", 1.2)
    c.add_edge("L1.H0@2", "logit: B", -0.8)
    c.add_edge("L1.H3", "logit: B", 0.02)
    c.add_edge("mlp1@2", "tc1.f123@2", 0.5)
    c.add_edge("tc1.f123@2", "logit: B", 0.6)
    c.add_edge("err:tc1@2", "logit: B", 0.001)
    return c


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        ("emb@3", {"kind": "emb", "position": 3, "layer": None}),
        ("L2.H5@7", {"kind": "head", "layer": 2, "head": 5, "position": 7}),
        ("L2.H5", {"kind": "head", "layer": 2, "head": 5, "position": None}),
        ("L12.H15@120", {"kind": "head", "layer": 12, "head": 15, "position": 120}),
        ("mlp4@7", {"kind": "mlp", "layer": 4, "position": 7, "head": None}),
        ("mlp4", {"kind": "mlp", "layer": 4, "position": None}),
        ("tc4.f123@7", {"kind": "feature", "layer": 4, "feature": 123, "position": 7}),
        ("sae0.f5", {"kind": "feature", "layer": 0, "feature": 5, "position": None}),
        ("err:tc4@7", {"kind": "error", "layer": 4, "position": 7, "feature": None}),
        ("logit", {"kind": "logit", "token": None, "position": None, "layer": None}),
        ("logit: Paris", {"kind": "logit", "token": " Paris"}),
        ("logit:x@5", {"kind": "logit", "token": "x", "position": 5}),
        ("bias", {"kind": "bias"}),
        ("bias:L3.attn", {"kind": "bias"}),
    ],
)
def test_parse_node_id(node_id, expected):
    got = parse_node_id(node_id)
    assert set(got) == {"kind", "layer", "head", "feature", "position", "token"}
    for key, value in expected.items():
        assert got[key] == value, key


@pytest.mark.parametrize(
    "bad", ["", "L2H5", "L2.H5@", "L2.H5@x", "head3", "mlp@3", "emb3", "tc4.123", "err:4", "L-1.H2", 7, None]
)
def test_parse_node_id_errors(bad):
    with pytest.raises(ValueError, match="node id"):
        parse_node_id(bad)



def test_head_ids_with_a_source_position(tmp_path):
    """``L<l>.H<h>@<t>:<s>``: a head at destination t reading source s; the source is part of the id (so two sources
    are two nodes) and a node attribute; every id without a source parses as before."""
    got = parse_node_id("L2.H5@7:3")
    assert (got["kind"], got["layer"], got["head"], got["position"], got["source_position"]) == ("head", 2, 5, 7, 3)
    assert set(got) == {"kind", "layer", "head", "feature", "position", "token", "source_position"}
    assert parse_node_id("L12.H15@120:0")["source_position"] == 0
    for old in ("L2.H5@7", "L2.H5", "emb@3", "mlp4@7", "tc4.f123@7", "err:tc4@7", "logit:x@5", "bias:L3.attn"):
        assert "source_position" not in parse_node_id(old), old
    for bad in ("L2.H5:3", "L2.H5@7:", "L2.H5@7:x", "L2.H5@:3", "emb@3:1", "mlp4@7:2", "L2.H5@7:3:1"):
        with pytest.raises(ValueError, match="node id"):
            parse_node_id(bad)
    c = Circuit()
    c.add_edge("emb@3", "L0.H1@7:3", 0.5)
    c.add_edge("emb@5", "L0.H1@7:5", -0.25)
    c.add_edge("L0.H1@7:3", "logit", 0.5)
    c.add_edge("L0.H1@7:5", "logit", -0.25)
    assert len(c) == 5 and c.heads() == [(0, 1)]
    for s in (3, 5):
        d = c.graph.nodes[f"L0.H1@7:{s}"]
        assert (d["kind"], d["layer"], d["head"], d["position"], d["source_position"]) == ("head", 0, 1, 7, s)
    assert "source_position" not in c.graph.nodes["emb@3"]
    assert Circuit.from_json(json.loads(json.dumps(c.to_json()))) == c
    c.to_graphml(tmp_path / "c.graphml")
    assert nx.read_graphml(tmp_path / "c.graphml").nodes["L0.H1@7:5"]["source_position"] == 5
    nodes, _ = c.to_frames()
    assert nodes.set_index("id").loc["L0.H1@7:3", "source_position"] == 3
    c.figure()  # two heads in one cell are drawn side by side

def test_add_node_attributes_and_free_ids():
    c = Circuit()
    c.add_node("L2.H5@7", score=np.float64(0.5), token=" the")
    d = c.graph.nodes["L2.H5@7"]
    assert set(ATTRS) <= set(d)
    assert (d["kind"], d["layer"], d["head"], d["position"], d["feature"]) == ("head", 2, 5, 7, None)
    assert (
        d["score"] == 0.5 and type(d["score"]) is float and d["token"] == " the" and d["activation"] is None
    )
    # an update keeps earlier attributes
    c.add_node("L2.H5@7", activation=2)
    assert c.graph.nodes["L2.H5@7"]["score"] == 0.5 and c.graph.nodes["L2.H5@7"]["activation"] == 2.0
    # free-form id with explicit kind; explicit attributes win over parsed ones
    c.add_node("resid3@2", kind="other", layer=3, position=2)
    assert c.graph.nodes["resid3@2"]["kind"] == "other"
    with pytest.raises(ValueError, match="node id"):
        c.add_node("resid3@2x")
    with pytest.raises(ValueError, match="kind"):
        c.add_node("thing", kind="neuron")
    # add_edge adds unknown endpoints from their ids
    c.add_edge("emb@0", "logit", weight=-1)
    assert c.graph.nodes["emb@0"]["kind"] == "emb" and c.graph.edges["emb@0", "logit"]["weight"] == -1.0
    assert len(c) == 4 and "logit" in c and "nope" not in c
    assert set(KINDS) == {"emb", "head", "mlp", "feature", "error", "logit", "bias", "other"}


def test_json_round_trip_exact(tmp_path):
    c = _ioi_like()
    c.graph.edges["emb@0", "L0.H1@2"]["note"] = "extra"
    data = c.to_json()
    text = json.dumps(data)
    back = Circuit.from_json(json.loads(text))
    assert back.to_json() == data
    assert json.dumps(back.to_json()) == text  # same order too
    assert back == c
    assert back.name == "toy" and back.metadata == c.metadata
    assert list(back.graph.nodes) == list(c.graph.nodes) and list(back.graph.edges) == list(c.graph.edges)
    for n in c.graph.nodes:
        assert back.graph.nodes[n] == c.graph.nodes[n]
    # networkx reads the node-link form as well
    g = nx.node_link_graph(data, edges="edges")
    assert set(g.nodes) == set(c.graph.nodes) and g.edges["L0.H1@2", "L1.H0@2"]["weight"] == 1.2

    path = tmp_path / "sub" / "c.json"
    c.save_json(path)
    assert Circuit.load_json(path) == c
    assert not [p for p in path.parent.iterdir() if p.name != "c.json"]  # no temp leftovers
    with pytest.raises(ValueError):
        Circuit.from_json({"edges": []})


def test_graphml_round_trip(tmp_path):
    c = _ioi_like()
    c.add_node("bias", extra=[1, 2])  # non-scalar attribute
    c.add_node("mlp0@1", kind="mlp", flag=1)
    c.add_node("mlp0@0", kind="mlp", flag=1.5)  # mixed int/float on one key
    path = tmp_path / "c.graphml"
    c.to_graphml(path)
    g = nx.read_graphml(path)
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == set(c.graph.nodes)
    assert set(g.edges) == set(c.graph.edges)
    for u, v, w in c.graph.edges(data="weight"):
        assert g.edges[u, v]["weight"] == pytest.approx(w)
    assert g.nodes["L0.H1@2"]["layer"] == 0 and g.nodes["L0.H1@2"]["head"] == 1
    assert g.nodes["L0.H1@2"]["score"] == pytest.approx(0.9)
    assert "score" not in g.nodes["err:tc1@2"]  # None dropped
    assert json.loads(g.nodes["bias"]["extra"]) == [1, 2]
    assert g.nodes["mlp0@1"]["flag"] == 1.0
    assert g.graph["name"] == "toy" and json.loads(g.graph["metadata"]) == c.metadata


def test_prune_semantics():
    c = _ioi_like()
    p = c.prune(node_threshold=0.1, edge_threshold=0.1)
    assert p is not c and len(c) == 9  # original untouched
    # L1.H3 (score 0.01) goes; err node (score None) stays by score but loses its only edge (0.001) -> goes;
    # emb@2's only edge (-0.05) is weak -> emb@2 goes; logit stays
    assert set(p.graph.nodes) == {"emb@0", "L0.H1@2", "L1.H0@2", "mlp1@2", "tc1.f123@2", "logit: B"}
    assert set(p.graph.edges) == {
        ("emb@0", "L0.H1@2"),
        ("L0.H1@2", "L1.H0@2"),
        ("L1.H0@2", "logit: B"),
        ("mlp1@2", "tc1.f123@2"),
        ("tc1.f123@2", "logit: B"),
    }
    assert p.name == c.name and p.metadata == c.metadata
    # |score| equal to the threshold is kept; negative scores count by magnitude
    assert "L1.H0@2" in c.prune(node_threshold=0.4)
    assert "L1.H0@2" not in c.prune(node_threshold=0.41)
    # keep protects from both the score and the disconnection rules
    k = c.prune(node_threshold=0.1, edge_threshold=0.1, keep={"L1.H3", "emb@2"})
    assert "L1.H3" in k and "emb@2" in k
    # logit nodes survive even when everything else goes
    everything = c.prune(node_threshold=10, edge_threshold=10)
    # (emb and err nodes have no score, but they lose all their edges)
    assert set(everything.graph.nodes) == {"logit: B"}
    # zero thresholds change nothing
    assert c.prune() == c


def test_prune_keeps_edgeless_scored_nodes():
    c = Circuit("heads")
    for (layer, head), s in {(0, 1): 0.5, (1, 0): 0.05, (1, 2): -0.3}.items():
        c.add_node(f"L{layer}.H{head}", score=s)
    assert c.prune(node_threshold=0.1).heads() == [(0, 1), (1, 2)]
    assert c.heads() == [(0, 1), (1, 0), (1, 2)]


def test_heads_and_frames():
    c = _ioi_like()
    assert c.heads() == [(0, 1), (1, 0), (1, 3)]
    nodes, edges = c.to_frames()
    assert list(nodes.columns[: len(ATTRS) + 1]) == ["id", *ATTRS]
    assert len(nodes) == len(c) and len(edges) == c.graph.number_of_edges()
    assert list(edges.columns[:3]) == ["source", "target", "weight"]
    row = nodes.set_index("id").loc["tc1.f123@2"]
    assert row["kind"] == "feature" and row["feature"] == 123 and row["activation"] == 3.5
    assert edges["weight"].tolist() == [e["weight"] for e in c.edges]
    empty_nodes, empty_edges = Circuit().to_frames()
    assert len(empty_nodes) == 0 and list(empty_edges.columns) == ["source", "target", "weight"]


def test_figure_traces():
    c = _ioi_like()
    fig = c.figure(title="IOI")
    assert fig.layout.title.text == "IOI"
    assert fig.layout.xaxis.ticktext == ("0: 'A'", "1: 'B'", "2: 'A'")  # tokens from emb nodes and metadata
    assert fig.layout.yaxis.ticktext == ("emb", "L0 attn", "L1 attn", "L1 mlp", "logits")
    edge_traces = [t for t in fig.data if t.meta and t.meta["role"] == "edges"]
    node_traces = [t for t in fig.data if t.meta and t.meta["role"] == "nodes"]
    hover = [t for t in fig.data if t.meta and t.meta["role"] == "edge-hover"]
    assert len(fig.data) == len(edge_traces) + len(node_traces) + len(hover)
    # every edge drawn once: 3 points (x0, x1, None) per edge, grouped by sign and width
    assert sum(len(t.x) for t in edge_traces) == 3 * c.graph.number_of_edges()
    assert sum(t.meta["count"] for t in edge_traces) == c.graph.number_of_edges()
    n_neg = sum(1 for e in c.edges if e["weight"] < 0)
    assert sum(t.meta["count"] for t in edge_traces if t.meta["sign"] == "negative") == n_neg
    colours = {t.meta["sign"]: t.line.color for t in edge_traces}
    assert colours["positive"] != colours["negative"]
    widths = {t.meta["bin"]: t.line.width for t in edge_traces}
    assert widths[max(widths)] > widths[min(widths)]
    # the strongest edge (1.2) alone in the widest positive bin; -0.8 in the third negative bin
    by_group = {(t.meta["sign"], t.meta["bin"]): t.meta["count"] for t in edge_traces}
    assert by_group[("positive", 3)] == 1 and by_group[("negative", 2)] == 1
    assert len(hover) == 1 and len(hover[0].x) == c.graph.number_of_edges()
    # one node trace per kind, with the right number of points and full hover text
    kinds = {t.meta["kind"]: t for t in node_traces}
    assert set(kinds) == {"emb", "head", "mlp", "feature", "error", "logit"}
    assert {k: len(t.x) for k, t in kinds.items()} == {
        "emb": 2,
        "head": 3,
        "mlp": 1,
        "feature": 1,
        "error": 1,
        "logit": 1,
    }
    assert len({t.marker.color for t in node_traces}) == len(node_traces)
    text = kinds["feature"].hovertext[0]
    for word in (
        "tc1.f123@2",
        "kind: feature",
        "layer: 1",
        "position: 2",
        "activation: 3.5",
        "score: 0.2",
        "head: None",
    ):
        assert word in text


def test_figure_layout_rows_and_offsets():
    c = _ioi_like()
    xy = c.layout()
    y = {n: xy[n][1] for n in xy}
    x = {n: xy[n][0] for n in xy}
    assert y["emb@0"] < y["L0.H1@2"] < y["L1.H0@2"] < y["mlp1@2"] < y["logit: B"]  # emb bottom, logits top
    assert y["logit: B"] == max(y.values())
    assert x["emb@0"] == 0 and x["emb@2"] == 2 and x["L0.H1@2"] == 2
    # mlp1@2, tc1.f123@2 and err:tc1@2 share the (L1 mlp, position 2) cell: they are spread apart
    shared = [xy[n] for n in ("mlp1@2", "tc1.f123@2", "err:tc1@2")]
    assert len(set(shared)) == 3 and all(abs(px - 2) < 0.5 for px, _ in shared)
    # the position-free head sits in its layer's row, away from the positioned head
    assert y["L1.H3"] == y["L1.H0@2"] and xy["L1.H3"] != xy["L1.H0@2"]


def test_figure_many_nodes_in_one_cell_do_not_overlap():
    c = Circuit()
    for i in range(30):
        c.add_node(f"tc3.f{i}@4", score=float(i))
    xy = c.layout()
    assert len(set(xy.values())) == 30
    fig = c.figure()
    assert len(fig.data) == 1 and len(fig.data[0].x) == 30
    assert fig.layout.title.text is None
    Circuit().figure()  # empty circuit draws without error
