"""The one greedy discovery loop driven by a synthetic scorer over a hand-made linear DAG whose circuit is known; the
one node grammar (parse / id round trip)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch

from circuits import discovery as loop
from workbench.nodes import Node, NodeIdError, parse

# three layers of four heads; x_v = a_v + sum_u w(u -> v) x_u for a kept node (0 for an ablated one);
# the metric is m = sum_v w(v -> logit) x_v, so F(C) = m(C) / m(all) (m(empty) = 0) exactly
LAYERS, HEADS = 3, 4
TRUE = {"L0.H1", "L1.H2", "L2.H0", "L1.H0"}  # L0.H1 -> L1.H2 -> L2.H0 -> logit, and L1.H0 -> logit directly
STRONG = {("L0.H1", "L1.H2"): 2.0, ("L1.H2", "L2.H0"): 1.5, ("L2.H0", "logit"): 2.0, ("L1.H0", "logit"): 3.0}
# a decoy acting on the output directly (second by that ranking in its round, not by relevance to the found nodes)
# but too weakly to be needed: found, then pruned
DECOY = "L0.H3"


def _dag() -> tuple[list[str], dict[str, float], dict[tuple[str, str], float]]:
    gen = torch.Generator().manual_seed(0)
    nodes = [f"L{layer}.H{h}" for layer in range(LAYERS) for h in range(HEADS)]
    act = {n: 1.0 if n in TRUE else 0.3 if n == DECOY else 0.05 for n in nodes}
    weights: dict[tuple[str, str], float] = {}
    for u in nodes:
        lu = parse(u).layer
        for v in [*[n for n in nodes if parse(n).layer == lu + 1], "logit"]:
            weights[(u, v)] = STRONG.get((u, v), 0.01 * float(torch.rand((), generator=gen)))
            if u == DECOY:
                weights[(u, v)] = 0.2 if v == "logit" else 0.0
    return nodes, act, weights


def _forward(nodes, act, weights, keep: set[str]) -> tuple[dict[str, float], float]:
    x: dict[str, float] = {}
    for v in nodes:  # layer-major: every parent comes first
        x[v] = act[v] + sum(w * x[u] for (u, t), w in weights.items() if t == v) if v in keep else 0.0
    return x, sum(weights[(v, "logit")] * x[v] for v in nodes)


class DagScorer:
    """Round r scores layer ``LAYERS - 1 - r``: its ablation effect on the output and on the nodes kept so far."""

    def __init__(self) -> None:
        self.nodes, self.act, self.weights = _dag()
        self.x_all, self.m_all = _forward(self.nodes, self.act, self.weights, set(self.nodes))
        self.calls = 0

    def candidates(self, round_: int, kept: Sequence[Sequence[Node]]) -> list[Node]:
        layer = LAYERS - 1 - round_
        return [parse(n) for n in self.nodes if parse(n).layer == layer] if layer >= 0 else []

    def score(self, candidates: Sequence[Node], kept: Sequence[Sequence[Node]]) -> loop.Round:
        found = [n.id for nodes in kept for n in nodes]
        to_output, to_found, effects = [], [], []
        for c in candidates:
            x, m = _forward(self.nodes, self.act, self.weights, set(self.nodes) - {c.id})
            to_output.append(self.m_all - m)
            effects.append({t: self.x_all[t] - x[t] for t in found})
            to_found.append(sum(abs(e) for e in effects[-1].values()))
        out, rel = torch.tensor(to_output, dtype=torch.float64), torch.tensor(to_found, dtype=torch.float64)

        def found_record(i: int) -> loop.Found:
            edges = [("logit", to_output[i])] + [(t, e) for t, e in effects[i].items() if abs(e) > 0.5]
            return loop.Found({"score": to_output[i]}, edges, abs(to_output[i]) + to_found[i])

        return loop.Round([out.abs(), *([rel] if found else [])], found_record)

    def faithfulness(self, circuits: Sequence[Sequence[str]]) -> list[float]:
        self.calls += 1
        return [_forward(self.nodes, self.act, self.weights, set(c))[1] / self.m_all for c in circuits]


def _smallest_faithful(scorer: DagScorer, bound: float) -> list[set[str]]:
    """Brute force over every subset of the 12 nodes: the smallest ones with F >= bound."""
    for size in range(len(scorer.nodes) + 1):
        hits = [set(s) for s in itertools.combinations(scorer.nodes, size)
                if scorer.faithfulness([list(s)])[0] >= bound]
        if hits:
            return hits
    return []


@pytest.mark.parametrize("prune_batch", [1, 4])
def test_the_loop_recovers_the_known_circuit(prune_batch):
    scorer = DagScorer()
    assert _smallest_faithful(scorer, 0.9) == [TRUE]  # the circuit is the unique smallest with F >= 0.9
    c = loop.discover(scorer, top_k=2, faithfulness_bound=0.9, prune_batch=prune_batch, name="dag",
                      metadata={"method": "synthetic"})
    found = {n for n, d in c.graph.nodes(data=True) if d["kind"] == "head"}
    assert found == TRUE
    meta = c.metadata
    # round 0 has one ranking (nothing found yet); in layer 0 the two rankings' top 2 differ by the decoy
    assert meta["method"] == "synthetic" and meta["round_sizes"][0] == 2 and meta["round_sizes"][2] == 3
    assert meta["n_found"] == sum(meta["round_sizes"]) and meta["n_nodes"] == 4
    assert meta["faithfulness"] == pytest.approx(scorer.faithfulness([list(TRUE)])[0], abs=1e-12)
    assert meta["faithfulness"] >= 0.9 and meta["bound_met"] is True
    assert meta["faithfulness_unpruned"] > meta["faithfulness"]
    # every kept node is needed: without any one of them F falls below the bound
    for n in TRUE:
        assert scorer.faithfulness([list(TRUE - {n})])[0] < 0.9
    # the scorer's edges survive among the kept nodes; rounds count from the output down
    assert c.graph.has_edge("L0.H1", "L1.H2") and c.graph.has_edge("L1.H2", "L2.H0")
    assert c.graph.has_edge("L1.H0", "logit")
    assert {n: c.graph.nodes[n]["round"] for n in TRUE} == {"L2.H0": 0, "L1.H2": 1, "L1.H0": 1, "L0.H1": 2}


def test_an_unreachable_bound_is_reported_and_nothing_is_pruned():
    scorer = DagScorer()
    # one round finds only the top layer: without L1.H0 and the chain's inputs F stays far below 0.99
    c = loop.discover(scorer, top_k=2, faithfulness_bound=0.99, max_rounds=1)
    meta = c.metadata
    assert meta["round_sizes"] == [2] and meta["max_rounds"] == 1
    assert meta["faithfulness"] < 0.99 and meta["bound_met"] is False
    assert meta["n_nodes"] == meta["n_found"] == 2  # no removal keeps a bound the whole set misses
    # the whole DAG is F = 1, but a bound above it is rejected, not silently unmet
    with pytest.raises(ValueError, match="faithfulness_bound must be in"):
        loop.discover(scorer, top_k=2, faithfulness_bound=1.5)
    # without pruning the union is returned as found, and bound_met still compares it with the bound
    found = loop.discover(DagScorer(), top_k=2, faithfulness_bound=0.9, prune=False)
    assert DECOY in found and set(found) >= TRUE | {"logit"} and found.metadata["bound_met"] is True
    whole = loop.discover(DagScorer(), top_k=HEADS, faithfulness_bound=0.999, prune=False)
    assert whole.metadata["n_nodes"] == LAYERS * HEADS and "prune_scored" not in whole.metadata
    assert whole.metadata["faithfulness"] == pytest.approx(1.0) and whole.metadata["bound_met"] is True


def test_bad_options_name_the_option():
    scorer = DagScorer()
    for kw, name in [({"top_k": 0}, "top_k"), ({"top_k": 2, "max_rounds": 0}, "max_rounds"),
                     ({"top_k": 2, "prune_batch": 0}, "prune_batch"), ({"top_k": 2, "prune_coarse": -1}, "prune_coarse")]:
        with pytest.raises(ValueError, match=name):
            loop.discover(scorer, **kw)


def test_greedy_prune_batched_matches_one_at_a_time():
    scorer = DagScorer()
    order = sorted(scorer.nodes, key=lambda n: abs(scorer.faithfulness([[n]])[0]))
    one = loop.greedy_prune(scorer.faithfulness, ["logit", *scorer.nodes], order, bound=0.9)
    many = loop.greedy_prune(scorer.faithfulness, ["logit", *scorer.nodes], order, bound=0.9, batch=8)
    assert one[0] == many[0] and one[1] == pytest.approx(many[1], abs=1e-12)
    assert set(one[0]) == {"logit"} | TRUE


@pytest.mark.parametrize("node_id", ["emb", "emb@3", "emb@2-4", "L2.H5", "L2.H5@7", "L2.H5@7:3", "L2.H5@7-9",
                                     "mlp4", "mlp4@7", "mlp0@4-6", "tc4.f123@7", "sae0.f5", "err:tc4@7",
                                     "logit", "logit: Paris", "logit:x@5", "logit@7", "bias", "bias:L3.attn"])
def test_ids_round_trip(node_id):
    node = parse(node_id)
    assert node.id == node_id and parse(node.id) == node and str(node) == node_id


def test_node_fields_and_spans():
    head = parse("L2.H5@7:3")
    assert (head.kind, head.layer, head.head, head.position, head.source_position) == ("head", 2, 5, 7, 3)
    span = parse("emb@2-4")
    assert span.positions == (2, 3, 4) and span.end_position == 4 and span.order == 0
    assert parse("emb@3-3") == parse("emb@3") and parse("emb@3-3").id == "emb@3"
    assert parse("L1.H0").positions is None and parse("mlp1@2").order == 4 and parse("L1.H0").order == 3
    assert parse("logit").order == float("inf")
    feature = parse("tc4.f123@7")
    assert (feature.dictionary, feature.layer, feature.feature) == ("tc", 4, 123)
    assert Node("head", 0, 1, position=2) == parse("L0.H1@2")
    assert parse("mlp0").with_positions((4, 5, 6)).id == "mlp0@4-6"
    assert parse("L1.H0@5:2").with_positions(None).id == "L1.H0"
    with pytest.raises(ValueError, match="consecutive"):
        parse("emb").with_positions((1, 3))
    assert parse("L1.H0@9").out_of_range(n_layers=2, n_heads=4, seq_len=9) == (
        "position 9 out of range in 'L1.H0@9': the task's rows have positions 0..8")
    assert parse("L1.H0@8:2").out_of_range(n_layers=2, n_heads=4, seq_len=9) is None


@pytest.mark.parametrize("bad", ["", "L2H5", "L2.H5@", "emb@4-2", "L2.H5@3-5:1", "mlp4@7:2", "tc4.f1@2-3", "x", None])
def test_bad_ids_are_node_id_errors(bad):
    with pytest.raises(NodeIdError, match="node id"):
        parse(bad)


def test_the_families_share_the_loop_options_and_report_bound_met(tiny_llama):
    """CD-T and path patching through the one loop: the same option names, ``bound_met`` in both results, patching's
    old ``min_faithfulness`` still read."""
    from circuits import cdt
    from circuits.patching import PatchingInputError
    from circuits.patching import discover as patch_discover
    from workbench.data import make_task

    task = make_task("induction", tiny_llama.tokenizer, n=4, seed=1, half_len=5)
    common = {"top_k": 2, "per_position": False, "include_mlps": True, "ablation": "mean", "prune_batch": 3}
    for found in (cdt.discover(tiny_llama, task, faithfulness_bound=0.8, max_rounds=2, **common),
                  patch_discover(tiny_llama, task, faithfulness_bound=0.8, max_rounds=2, **common)):
        meta = found.metadata
        assert meta["bound_met"] == (meta["faithfulness"] >= 0.8) and meta["faithfulness_bound"] == 0.8
        assert len(meta["round_sizes"]) <= 2 and meta["n_found"] == sum(meta["round_sizes"])
    old = patch_discover(tiny_llama, task, min_faithfulness=0.8, max_rounds=2, **common)
    assert old == found
    with pytest.raises(PatchingInputError, match="disagree"):
        patch_discover(tiny_llama, task, faithfulness_bound=0.8, min_faithfulness=0.7)
    with pytest.raises(cdt.CDTInputError, match="max_rounds"):
        cdt.discover(tiny_llama, task, max_rounds=0)
