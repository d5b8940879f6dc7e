"""Transcoder paths and attribution graphs as benchmark methods, on the MLP ground truth gt-mlp-lookup.

Checked against independent computations: the per-component sums against a direct sum over one prompt's graph
(component read off the node id by a regular expression, not by the method's own mapping); the attribution graph's
split into a residual part and one part per head against the full adjacency (exact with one attention layer); the
MLP's node score against the summed influence of its feature and error nodes. Bad input: a model without MLPs is
refused (NotApplicableError) and reported as a row of None by the benchmark.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pytest
import torch

from circuits.benchmark import transcoder_methods as tm
from circuits.benchmark.run import METHODS, benchmark, score_method
from circuits.edges.graph import EdgeGraph
from workbench import ground_truth
from workbench.ground_truth.designs import DESIGNS


@pytest.fixture(scope="module")
def setup():
    from workbench.models import load_model

    gt = ground_truth.get("gt-mlp-lookup")
    model = load_model(gt.spec, device="cpu")
    task = gt.make_task(model, n=4, seed=3)
    transcoders, _ = tm.train_task_transcoders(model, DESIGNS["gt-mlp-lookup"]().batch, tokens=16_384)
    return gt, model, task, transcoders, EdgeGraph.of(model)


def _component(node: str) -> str | None:
    if m := re.fullmatch(r"(?:err:)?tc(\d+)(?:\.f\d+)?@\d+", node):
        return f"mlp{m[1]}"
    if m := re.fullmatch(r"(L\d+\.H\d+)@\d+:\d+", node):
        return m[1]
    if re.fullmatch(r"emb@\d+", node):
        return "emb"
    return "logit" if node.startswith("logit") else None


@pytest.mark.parametrize("method", ["transcoder-paths", "attribution"])
def test_scores_cover_the_graph_and_rank_the_designed_edges_first(setup, method):
    gt, model, task, transcoders, graph = setup
    found = score_method(model, task, method, graph, transcoders=transcoders)
    assert set(found.edges) == set(graph.edges) and set(found.nodes) == set(graph.senders) - {"emb"}
    assert all(math.isfinite(v) and v >= 0 for v in [*found.edges.values(), *found.nodes.values()])
    top = sorted(found.edges, key=lambda e: -found.edges[e])[:len(gt.edges)]
    assert set(top) == gt.edges  # emb->L0.H1, L0.H1->mlp0, mlp0->logit
    assert max(found.nodes, key=found.nodes.get) == "mlp0" and found.nodes["L0.H1"] > found.nodes["L0.H0"]


def test_transcoder_path_sums_equal_a_direct_sum_over_the_circuit(setup):
    from circuits.transcoder_paths.circuit import tc_circuit

    _, model, task, transcoders, graph = setup
    nodes, edges = tm.transcoder_path_scores(model, task.select([0]), transcoders, set(graph.senders) - {"emb"},
                                             set(graph.edges))
    circuit = tc_circuit(model, task.clean_tokens[0], transcoders, "logit", correct=int(task.correct[0]),
                         incorrect=int(task.incorrect[0])).circuit.graph
    want_nodes, want_edges = defaultdict(float), defaultdict(float)
    for node, attrs in circuit.nodes(data=True):
        if _component(node) not in (None, "emb", "logit"):
            want_nodes[_component(node)] += abs(attrs["score"])
    for a, b, attrs in circuit.edges(data=True):
        key = f"{_component(a)}->{_component(b)}"
        if key in graph.edges:
            want_edges[key] += abs(attrs["weight"])
    assert nodes == pytest.approx(dict(want_nodes), rel=1e-6) and edges == pytest.approx(dict(want_edges), rel=1e-6)
    assert edges  # the circuit reaches the logits through something


def test_attribution_head_parts_sum_to_the_graph_and_mlp_scores_are_influence(setup):
    from circuits.attribution.attribute import logit_difference
    from circuits.attribution.prune import node_influence
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
    from circuits.frozen.facts import ModelFacts

    _, model, task, transcoders, graph = setup
    sets = feature_sets_from_transcoders(transcoders, ModelFacts.of(model))
    tokens = task.clean_tokens[0]
    rm = ReplacementModel(model, tokens, sets, dtype=torch.float64)
    full, residual, parts = tm.head_parts(rm, logit_difference(rm, int(task.correct[0]), int(task.incorrect[0])))
    assert set(parts) == {(0, 0), (0, 1)} and rm.head_mask is None
    # one attention layer: the residual part and the parts through each head add up to the graph exactly
    assert torch.allclose(residual + sum(parts.values()), full.adjacency, atol=1e-9)
    t, s = torch.nonzero(residual, as_tuple=True)
    ids = full.node_ids()
    last = str(tokens.numel() - 1)  # where the logit node reads
    pos = [n.rsplit("@", 1)[1] if "@" in n else last for n in ids]
    assert t.numel() and all(pos[a] == pos[b] for a, b in zip(t.tolist(), s.tolist(), strict=True))  # same position
    nodes, _ = tm.attribution_scores(model, task.select([0]), transcoders, set(graph.senders), set(graph.edges))
    influence = node_influence(full.adjacency, full.logit_weights())
    mlp = sum(float(influence[i]) for i, n in enumerate(ids) if re.match(r"(err:)?tc0[.@]", n))
    assert nodes["mlp0"] == pytest.approx(mlp, rel=1e-4)


def test_models_without_mlps_are_not_applicable():
    from workbench.models import load_model

    model = load_model("toy/gt-prev-token", device="cpu")
    assert tm.mlp_layers(model) == []
    task = ground_truth.get("gt-prev-token").make_task(model, n=2)
    with pytest.raises(tm.NotApplicableError, match="attribution.*no.*MLP|attribution.*attention-only"):
        score_method(model, task, "attribution", EdgeGraph.of(model), transcoders={})
    out = benchmark(["gt-prev-token"], ["eap", "transcoder-paths", "attribution"], n=4, progress=False)
    rows = out["scores"].set_index("method")
    assert rows.loc["eap", "edge_auroc"] == 1.0
    for method in ("transcoder-paths", "attribution"):
        assert math.isnan(rows.loc[method, "edge_auroc"]) and "not applicable" in rows.loc[method, "not_applicable"]
    assert set(out["curves"]["method"]) == {"eap"}
    assert {"transcoder-paths", "attribution"} <= set(METHODS)


def test_the_verb_lists_the_transcoder_methods():
    from circuits.benchmark.analysis import BenchmarkConfig
    from workbench.analysis import ConfigError

    cfg = BenchmarkConfig(methods=["transcoder-paths", "attribution"], models=["gt-mlp-lookup"])
    cfg.check()
    assert "transcoder-paths" in BenchmarkConfig().methods and "attribution" in BenchmarkConfig().methods
    with pytest.raises(ConfigError, match="--methods.*'tracer'.*transcoder-paths, attribution"):
        BenchmarkConfig(methods=["tracer"]).check()
