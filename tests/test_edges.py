"""Edge-level circuits: the edge graph, the edge-masked forward against the model, EAP against finite differences,
EAP-IG with one step against EAP, ACDC on the induction toy, faithfulness, bad input."""

from __future__ import annotations

import pytest
import torch

from circuits.edges.forward import ablated_outputs, edge_forward
from circuits.edges.graph import EdgeGraph, EdgeIdError
from circuits.edges.methods import (
    EdgeScores,
    acdc,
    eap,
    eap_ig,
    edge_faithfulness,
    edge_faithfulness_many,
    score_edges,
)
from circuits.edges.metrics import task_metric
from circuits.frozen.clean import capture
from circuits.frozen.weights import model_weights
from workbench.circuit import Circuit
from workbench.data import make_task
from workbench.nodes import parse


def _task(model, n=3, half_len=5):
    return make_task("induction", model.tokenizer, n=n, seed=1, half_len=half_len)


def test_graph_edges_and_ids():
    g = EdgeGraph(2, 3, True)
    assert g.senders == ("emb", "L0.H0", "L0.H1", "L0.H2", "mlp0", "L1.H0", "L1.H1", "L1.H2", "mlp1")
    assert g.receivers[-1] == "logit" and len(g.receivers) == 9
    # emb -> all 9 receivers; layer-0 heads -> mlp0, 3 heads, mlp1, logit; mlp0 -> 5; layer-1 heads -> mlp1, logit; mlp1
    assert g.n_edges == 9 + 3 * 6 + 5 + 3 * 2 + 1
    assert {"emb->L0.H1", "L0.H1->mlp0", "L0.H1->L1.H0", "mlp0->L1.H2", "L1.H0->logit", "emb->logit"} <= set(g.edges)
    assert "L0.H0->L0.H1" not in g.edges and "mlp0->mlp0" not in g.edges and "L1.H0->L0.H0" not in g.edges
    for edge in g.edges:
        sender, receiver = edge.split("->")
        assert parse(sender).id == sender and parse(receiver).id == receiver
    split = EdgeGraph(2, 3, True, qkv=True)
    assert split.senders == g.senders and len(split.receivers) == 3 * 6 + 3
    assert split.n_edges == g.n_edges + 2 * (3 * 1 + 3 * 5)  # two more inputs per edge into a head (18 of them)
    assert {"emb->L0.H1.q", "L0.H2->L1.H0.k", "mlp0->L1.H2.v"} <= set(split.edges) and "emb->L0.H1" not in split.edges
    assert EdgeGraph.component("L1.H0.k") == "L1.H0" and EdgeGraph.component("mlp1") == "mlp1"
    attn_only = EdgeGraph(2, 2, False)
    assert attn_only.n_edges == 5 + 2 * 3 + 2 and "mlp0" not in attn_only.senders
    mask = g.mask(["emb->logit", "L0.H1->mlp0"])
    assert mask.sum() == 2 and mask[g.index("emb->logit")] == 1
    dense = g.dense(mask[None])
    assert dense[0, g.senders.index("L0.H1"), g.receivers.index("mlp0")] == 1 and dense.sum() == 2


@pytest.mark.parametrize(("fixture", "qkv"), [("tiny_gpt2", False), ("tiny_llama", False), ("tiny_llama", True)])
def test_no_edge_ablated_is_clean_every_edge_ablated_is_corrupted(fixture, qkv, request):
    model = request.getfixturevalue(fixture)
    task = _task(model)
    g = EdgeGraph.of(model, qkv=qkv)
    with torch.no_grad():
        bridge_clean, bridge_corrupted = model(task.clean_tokens), model(task.corrupted_tokens)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        w = model_weights(model, dtype)
        ablated = ablated_outputs(w, g, task.corrupted_tokens)
        ones = edge_forward(w, g, task.clean_tokens, g.mask(dtype=dtype), ablated).logits[0]
        zeros = edge_forward(w, g, task.clean_tokens, g.mask([], dtype=dtype), ablated).logits[0]
        assert ones.dtype == dtype
        if dtype == torch.float64:  # tight against the float64 frozen run
            ref_clean = capture(model, task.clean_tokens, dtype).logits
            ref_corrupted = capture(model, task.corrupted_tokens, dtype).logits
        else:  # against the bridge itself
            ref_clean, ref_corrupted = bridge_clean, bridge_corrupted
        scale = ref_clean.abs().max()
        assert float((ones - ref_clean).abs().max() / scale) < tol
        assert float((zeros - ref_corrupted).abs().max() / scale) < tol
        assert float((ones - zeros).abs().max() / scale) > 1e-3  # the two runs differ
    # float32 bridge vs float64 forward: within float32 rounding
    w64 = model_weights(model, torch.float64)
    ones64 = edge_forward(w64, g, task.clean_tokens).logits[0]
    assert float((ones64.float() - bridge_clean).abs().max() / bridge_clean.abs().max()) < 1e-4


def test_mean_ablation_of_every_edge_is_the_run_on_mean_outputs(tiny_llama):
    task = _task(tiny_llama, n=4)
    g = EdgeGraph.of(tiny_llama)
    w = model_weights(tiny_llama, torch.float64)
    ablated = ablated_outputs(w, g, task.corrupted_tokens, "mean")
    assert ablated.shape[1] == 1
    zeros = edge_forward(w, g, task.clean_tokens, g.mask([], dtype=torch.float64), ablated).logits[0]
    # every receiver reads the sum of the mean outputs: the same at every row
    assert float((zeros - zeros[:1]).abs().max()) < 1e-10


def test_task_metric_matches_the_tasks_own(tiny_gpt2):
    task = _task(tiny_gpt2)
    with torch.no_grad():
        logits = tiny_gpt2(task.clean_tokens)
    assert float(task_metric(task, logits[None])[0]) == pytest.approx(float(task.metric(logits)), abs=1e-5)


@pytest.mark.parametrize(("fixture", "qkv"), [("tiny_gpt2", False), ("tiny_llama", False), ("tiny_llama", True)])
def test_eap_is_the_first_order_taylor_term(fixture, qkv, request):
    """score(e) = -d m / d mask[e] at the all-ones mask: central and one-sided finite differences in float64."""
    model = request.getfixturevalue(fixture)
    task = _task(model)
    scores = eap(model, task, dtype=torch.float64, qkv=qkv)
    g = EdgeGraph.of(model, qkv=qkv)
    w = model_weights(model, torch.float64)
    ablated = ablated_outputs(w, g, task.corrupted_tokens)
    eps = 1e-5

    def metric_at(index, value):
        mask = g.mask(dtype=torch.float64)
        mask[index] = value
        return float(task_metric(task, edge_forward(w, g, task.clean_tokens, mask, ablated).logits)[0])

    clean = metric_at(0, 1.0)
    values = torch.tensor(list(scores.edges.values()))
    assert values.abs().max() > 1e-3
    for i, edge in enumerate(g.edges):
        central = (metric_at(i, 1 - eps) - metric_at(i, 1 + eps)) / (2 * eps)
        one_sided = (metric_at(i, 1 - eps) - clean) / eps
        assert scores.edges[edge] == pytest.approx(central, abs=1e-7, rel=1e-6), edge
        assert scores.edges[edge] == pytest.approx(one_sided, abs=1e-4), edge


def test_eap_ig_with_one_step_is_eap(tiny_llama):
    task = _task(tiny_llama)
    plain = eap(tiny_llama, task, dtype=torch.float64)
    one = eap_ig(tiny_llama, task, steps=1, dtype=torch.float64)
    five = eap_ig(tiny_llama, task, steps=5, dtype=torch.float64)
    assert one.method == "eap-ig" and list(one.edges) == list(plain.edges)
    for edge, score in plain.edges.items():
        assert one.edges[edge] == pytest.approx(score, abs=1e-12, rel=1e-10)
    assert max(abs(five.edges[e] - plain.edges[e]) for e in plain.edges) > 1e-6  # more steps: other scores
    mean_one = eap_ig(tiny_llama, task, steps=1, ablation="mean", dtype=torch.float64)
    mean_plain = eap(tiny_llama, task, ablation="mean", dtype=torch.float64)
    assert max(abs(mean_one.edges[e] - mean_plain.edges[e]) for e in plain.edges) < 1e-10


def test_acdc_keeps_the_induction_circuit(induction_2l):
    """The true edges of toy/induction-2l, its heads read from attention patterns: the previous-token head reads the
    embedding (emb -> prev), the induction head's key reads it (prev -> ind), its query and value read the tokens
    (emb -> ind) and it writes the prediction (ind -> logit). The task's corrupted prompts (BOS + A + B) share the
    first half with the clean ones, where the previous-token head writes the keys, so only mean ablation can see
    that head: the check ablates with the mean."""
    from workbench.induction_toy import induction_head_scores, previous_token_scores

    task = make_task("induction", induction_2l.tokenizer, n=8, seed=0)
    run = capture(induction_2l, task.clean_tokens)
    half = task.info["half_len"]
    prev = int(previous_token_scores(run.layers[0].pattern).argmax())
    ind = int(induction_head_scores(run.layers[1].pattern, half).argmax())
    true = {f"emb->L0.H{prev}", f"L0.H{prev}->L1.H{ind}", f"emb->L1.H{ind}", f"L1.H{ind}->logit"}
    g = EdgeGraph.of(induction_2l)
    assert edge_faithfulness(induction_2l, task, set(g.edges) - true, ablation="mean") < 0.5  # each matters jointly
    found = acdc(induction_2l, task, threshold=0.1, ablation="mean")
    assert true <= found.kept, sorted(true - found.kept)
    assert len(found.kept) < g.n_edges / 2  # it pruned most of the graph
    assert edge_faithfulness(induction_2l, task, found.kept, ablation="mean") > 0.9
    assert set(found.edges) == set(g.edges) and found.method == "acdc"
    assert all(found.edges[e] >= 0.1 for e in found.kept)  # kept: the KL rose by at least the threshold


def test_faithfulness_many_and_circuit(tiny_gpt2):
    task = _task(tiny_gpt2)
    g = EdgeGraph.of(tiny_gpt2)
    scores = eap(tiny_gpt2, task, dtype=torch.float64)
    circuits = [scores.top(k) for k in (0, 3, 10)] + [list(g.edges)]
    many, m_clean, m_empty = edge_faithfulness_many(tiny_gpt2, task, circuits, dtype=torch.float64, chunk=2)
    assert many.shape == (4,)
    assert float(many[0]) == pytest.approx(0.0, abs=1e-9) and float(many[-1]) == pytest.approx(1.0, abs=1e-9)
    assert m_clean == pytest.approx(float(task.metric(tiny_gpt2(task.clean_tokens).detach())), abs=1e-4)
    assert m_empty == pytest.approx(float(task.metric(tiny_gpt2(task.corrupted_tokens).detach())), abs=1e-4)
    single = edge_faithfulness(tiny_gpt2, task, circuits[2], dtype=torch.float64)
    assert single == pytest.approx(float(many[2]), abs=1e-9)
    circuit = scores.to_circuit(k=3)
    assert isinstance(circuit, Circuit) and len(circuit.edges) == 3
    nodes = scores.node_scores()
    assert nodes["logit"] == pytest.approx(sum(abs(v) for e, v in scores.edges.items() if e.endswith("->logit")))
    split = eap(tiny_gpt2, task, dtype=torch.float64, qkv=True)
    into = [e for e in split.edges if e.startswith("emb->L1.H2.")]
    assert len(into) == 3
    merged = split.to_circuit(k=len(split.edges))
    edge = merged.graph.edges["emb", "L1.H2"]
    assert edge["weight"] == pytest.approx(sum(split.edges[e] for e in into)) and edge["inputs"] == "q,k,v"
    assert split.node_scores()["L1.H2"] >= sum(abs(split.edges[e]) for e in into)


def test_bad_input(tiny_gpt2):
    task = _task(tiny_gpt2)
    g = EdgeGraph.of(tiny_gpt2)
    with pytest.raises(ValueError, match="unknown edge method 'eapp'; edge methods: eap, eap-ig, acdc"):
        score_edges(tiny_gpt2, task, "eapp")
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        acdc(tiny_gpt2, task, threshold=-0.1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        eap_ig(tiny_gpt2, task, steps=0)
    with pytest.raises(ValueError, match="unknown ablation 'zero'; edge ablations: corrupted, mean"):
        eap(tiny_gpt2, task, ablation="zero")
    with pytest.raises(ValueError, match="unknown metric 'kll'"):
        acdc(tiny_gpt2, task, threshold=0.1, metric="kll")
    with pytest.raises(EdgeIdError, match="does not come before"):
        g.index("L1.H0->L0.H1")
    with pytest.raises(EdgeIdError, match="unknown sender 'L9.H0'"):
        edge_faithfulness(tiny_gpt2, task, ["L9.H0->logit"])
    with pytest.raises(EdgeIdError, match="unknown receiver 'emb'"):
        g.index("L0.H0->emb")
    with pytest.raises(EdgeIdError, match="malformed edge id 'emb-logit'"):
        g.mask(["emb-logit"])
    assert isinstance(EdgeScores({}, None, "eap", 0.0).node_scores(), dict)


@pytest.mark.parametrize(("method", "qkv"), [("eap-ig", False), ("acdc", False), ("eap", True)])
def test_edges_analysis_runs_saves_loads_and_draws(method, qkv, tiny_gpt2, tmp_path):
    import dataclasses
    import json

    import plotly.graph_objects as go

    from circuits.edges.analysis import EDGES
    from workbench.store import Store

    config = dataclasses.replace(EDGES.demo, n=2, half_len=4, method=method, top_k=3, threshold=1e-4,
                                 qkv=qkv)
    store = Store(tmp_path / "runs")
    info, result = EDGES.launch(tiny_gpt2, config, store=store)
    run = store.load("edges", info.run_id)
    assert run.kind == "edges" and EDGES.load(run) == config
    assert json.dumps(run.summary) and result.text().strip()
    table = run.table("edges")
    assert len(table) == EdgeGraph.of(tiny_gpt2, qkv=qkv).n_edges == run.summary["n_edges"]
    assert int(table["in_circuit"].sum()) == run.summary["n_circuit_edges"]
    if method != "acdc":
        assert run.summary["n_circuit_edges"] == 3
    assert run.summary["n_circuit_edges"] > 0
    figures = EDGES.figures(run)
    assert set(figures) == {"edge_scores", "circuit"}
    for fig in figures.values():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1
        fig.to_json()


@pytest.mark.parametrize(("changes", "message"), [
    ({"method": "edge-pruning"}, "--method must be one of eap, eap-ig, acdc"),
    ({"threshold": -0.5}, "--threshold must be >= 0"),
    ({"steps": 0}, "--steps must be >= 1"),
    ({"ablation": "zero"}, "--ablation must be one of corrupted, mean"),
])
def test_edges_config_refuses_bad_values(changes, message):
    import dataclasses

    from circuits.edges.analysis import EDGES
    from workbench.analysis import ConfigError

    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(EDGES.demo, **changes).check()
