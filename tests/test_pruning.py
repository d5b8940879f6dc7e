"""Greedy pruning by faithfulness: batched (speculative) pruning against a one-at-a-time loop written here."""

from __future__ import annotations

import random

import pytest

from circuits import cdt
from circuits.patching import (
    discover,
    faithfulness,
    faithfulness_many,
    path_patching_scores,
    prune_greedy,
    references,
)
from workbench.data import make_task


@pytest.fixture(scope="module")
def llama(tiny_llama):
    task = make_task("induction", tiny_llama.tokenizer, n=4, seed=1, half_len=5)
    return tiny_llama, task


def _nodes(task):
    heads = [f"L{layer}.H{h}@{p}" for layer in range(2) for h in range(4) for p in range(task.seq_len)]
    return heads + [f"mlp{layer}@{p}" for layer in range(2) for p in range(task.seq_len)]


def _sequential(model, task, nodes, order, bound, refs):
    """The plain greedy: one circuit scored per candidate, removal kept when F stays >= bound."""
    kept = list(nodes)
    for node in order:
        trial = [n for n in kept if n != node]
        (f,), _, _ = faithfulness_many(model, task, [trial], refs=refs)
        if float(f) >= bound:
            kept = trial
    return kept


def test_batched_pruning_matches_one_at_a_time(llama):
    model, task = llama
    nodes = _nodes(task)
    order = nodes[:]
    random.Random(0).shuffle(order)
    order = order[:24]
    bound = 0.9
    refs = references(model, task, "mean")
    expected = _sequential(model, task, nodes, order, bound, refs)
    removed = set(nodes) - set(expected)
    assert removed and set(order) - removed, "the bound should both remove and keep some candidates"
    for batch in (1, 5, 64):
        kept, f, scored = prune_greedy(model, task, nodes, order, bound=bound, refs=refs, batch=batch)
        assert kept == expected, f"batch {batch}"
        assert f == pytest.approx(faithfulness(model, task, kept), abs=1e-5) and f >= bound
        assert scored >= len(order) + 1
    # the coarse first cut: still within the bound, never removes a node outside the order
    kept, f, _ = prune_greedy(model, task, nodes, order, bound=bound, refs=refs, coarse=4, batch=4)
    assert set(nodes) - set(order) <= set(kept)
    assert f >= bound and f == pytest.approx(faithfulness(model, task, kept), abs=1e-5)


def test_known_empty_metric_and_bad_arguments(llama):
    model, task = llama
    refs = references(model, task, "mean")
    circuits = [["L1.H0", "mlp1"], ["L0.H2", "L1.H3", "mlp0"]]
    f, m_full, m_empty = faithfulness_many(model, task, circuits, refs=refs)
    again, _, _ = faithfulness_many(model, task, circuits, refs=refs, metric_empty=m_empty)
    assert again.tolist() == pytest.approx(f.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        prune_greedy(model, task, ["L0.H0"], ["L0.H0"], bound=0.8, batch=0)
    with pytest.raises(ValueError, match="not in the circuit"):
        prune_greedy(model, task, ["L0.H0"], ["L1.H0"], bound=0.8)


def test_discoveries_prune_the_same_batched_or_not(llama):
    model, task = llama
    kw = {"top_k": 2, "include_mlps": True, "min_faithfulness": 0.8}
    one = discover(model, task, **kw)
    many = discover(model, task, prune_batch=5, **kw)
    assert sorted(one.graph.nodes) == sorted(many.graph.nodes)
    assert one.metadata["faithfulness"] == pytest.approx(many.metadata["faithfulness"], abs=1e-6)
    assert one.metadata["prune_scored"] >= len(one.graph.nodes) - 1
    a = cdt.discover(model, task, top_k=2, per_position=False, include_mlps=True)
    b = cdt.discover(model, task, top_k=2, per_position=False, include_mlps=True, prune_batch=6)
    assert sorted(a.graph.nodes) == sorted(b.graph.nodes)
    assert a.metadata["faithfulness"] == pytest.approx(b.metadata["faithfulness"], abs=1e-6)
    assert a.metadata["faithfulness"] >= 0.8


def test_path_discovery_scores_do_not_depend_on_the_batching(llama):
    """One sender per forward must score like both senders in one forward from layer 0: a forward holding only
    L1.H2 (which reaches mlp1, not mlp0) must still record the receiver mlp0 from the clean run."""
    model, task = llama
    senders, receivers = ["L0.H1", "L1.H2"], ["mlp0", "mlp1"]
    together = path_patching_scores(model, task, senders, receivers, ablation="mean")
    alone = path_patching_scores(model, task, senders, receivers, ablation="mean", max_rows=task.batch_size)
    assert alone.tolist() == pytest.approx(together.tolist(), abs=1e-6)
    assert float(together.abs().min()) > 1e-5
    assert float(path_patching_scores(model, task, ["L1.H2"], receivers, ablation="mean")[0]) == pytest.approx(
        float(together[1]), abs=1e-6)
