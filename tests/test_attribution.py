"""Attribution graphs: the replacement reproduces the clean logits, completeness at every node, edges against
brute force in the linearised model, the feature cap, pruning on a hand-built graph, the scores, the exports."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.attribution.attribute import (
    TargetError,
    attribute,
    custom_target,
    feature_target,
    logit_difference,
    salient_logits,
    token_logits,
)
from circuits.attribution.replacement import (
    FeatureSet,
    FeatureSetError,
    ReplacementModel,
    Sources,
    feature_sets_from_transcoders,
)
from circuits.dictionaries.model import Dictionary
from circuits.frozen.facts import ModelFacts

PROMPT = [64, 3, 5, 7, 9, 11, 3, 5, 7]


def _transcoder(d: int, layer: int, kind: str = "transcoder", activation: str = "relu", seed: int = 0) -> Dictionary:
    """A random transcoder with nonzero biases (and a nonzero skip matrix for a skip transcoder)."""
    k = 12 if activation == "topk" else None
    tc = Dictionary.create(kind, d, 4 * d, activation=activation, k=k, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                           hook_out=f"blocks.{layer}.hook_mlp_out", seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        tc.b_enc.copy_(0.1 * torch.randn(tc.d_sae, generator=gen))
        tc.b_dec.copy_(0.2 * torch.randn(d, generator=gen))
        if tc.W_skip is not None:
            tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen))
    return tc


def _sets(model) -> list[FeatureSet]:
    d = model.cfg.d_model
    tcs = {0: _transcoder(d, 0, "skip_transcoder", seed=1), 1: _transcoder(d, 1, activation="topk", seed=2)}
    return feature_sets_from_transcoders(tcs, ModelFacts.of(model))


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def rm(model) -> ReplacementModel:
    return ReplacementModel(model, torch.tensor(PROMPT), _sets(model), dtype=torch.float64)


def _input_of(rm: ReplacementModel, graph, row: int, src: Sources) -> float:
    """The input of node ``row`` (feature pre-activation or logit value) in the linearised model at ``src``."""
    mlp_in, final = rm.run(src)
    if row < graph.n_features:
        layer, pos, feat = graph.features[row].tolist()
        s = rm.sets[layer]
        return float(mlp_in[0, layer, pos] @ s.W_enc[:, feat] + s.b_enc[feat])
    k = row - graph.logit_start
    return float(final[0, -1] @ rm._targets.vectors[k] + rm._targets.constants[k])


def test_replacement_reproduces_clean_logits(model, rm):
    with torch.no_grad():
        bridge = model(torch.tensor([PROMPT]), return_type="logits")[0].double()
    assert torch.allclose(rm.replacement_logits(), rm.logits, atol=1e-10, rtol=0)
    assert torch.allclose(rm.replacement_logits(), bridge, atol=1e-4, rtol=1e-4)
    # the transcoders alone do not: the error nodes carry what they miss
    assert rm.errors.abs().max() > 1e-2
    assert rm.n_features > 20


def test_completeness_at_every_node(rm):
    graph = attribute(rm, batch_size=96)
    rows = list(range(graph.n_features)) + list(range(graph.logit_start, graph.n_nodes))
    total = graph.adjacency.sum(1) + graph.bias
    scale = graph.inputs.abs().max()
    assert torch.allclose(total[rows], graph.inputs[rows], atol=1e-10 * scale, rtol=0)
    # the inputs themselves are the clean run's: pre-activations from the dictionaries, demeaned logits
    for i, (layer, pos, feat) in enumerate(graph.features.tolist()):
        assert abs(float(graph.inputs[i]) - float(rm.pre[layer][pos, feat])) < 1e-10
    logits = rm.logits[-1]
    demeaned = (logits - logits.mean())[torch.tensor(graph.logit_tokens)]
    assert torch.allclose(graph.inputs[graph.logit_start:], demeaned.cpu(), atol=1e-9, rtol=0)
    assert graph.logit_probabilities.sum() >= 0.95 or graph.n_logits == 10
    # error and token rows are empty, no edge runs backwards in the forward pass
    assert not graph.adjacency[graph.error_start:graph.logit_start].any()
    feat = graph.features
    later = feat[:, 0][None, :] >= feat[:, 0][:, None]  # source layer >= target layer
    assert not graph.adjacency[:graph.n_features, :graph.n_features][later].any()


def test_edges_equal_brute_force(rm):
    targets = salient_logits(rm, max_n_logits=3)
    rm._targets = targets
    graph = attribute(rm, targets, batch_size=16)
    gen = torch.Generator().manual_seed(0)
    t_idx, s_idx, weights = graph.edges()
    assert t_idx.numel() > 100
    sample = torch.randperm(t_idx.numel(), generator=gen)[:40].tolist()
    # make sure every source kind is in the sample
    for start, stop in ((0, graph.error_start), (graph.error_start, graph.token_start),
                        (graph.token_start, graph.logit_start)):
        hit = ((s_idx >= start) & (s_idx < stop)).nonzero().reshape(-1)
        sample += hit[:3].tolist()
    full = {}
    for e in sample:
        t, s, w = int(t_idx[e]), int(s_idx[e]), float(weights[e])
        if t not in full:
            full[t] = _input_of(rm, graph, t, rm.sources)
        src = Sources(rm.sources.acts.clone(), rm.sources.errors.clone(), rm.sources.embed.clone())
        if s < graph.error_start:
            layer, pos, feat = graph.features[s].tolist()
            match = ((rm.active[:, 0] == layer) & (rm.active[:, 1] == pos) & (rm.active[:, 2] == feat))
            src.acts[0, match] = 0
        elif s < graph.token_start:
            layer, pos = divmod(s - graph.error_start, graph.n_pos)
            src.errors[0, layer, pos] = 0
        else:
            src.embed[0, s - graph.token_start] = 0
        moved = full[t] - _input_of(rm, graph, t, src)
        assert abs(moved - w) <= 1e-9 * max(1.0, abs(w)), (t, s, moved, w)


def test_logit_difference_target_and_feature_cap(model, rm):
    target = logit_difference(rm, 3, 5)
    graph = attribute(rm, target, batch_size=5)
    assert graph.n_logits == 1 and graph.logit_tokens == [-1]
    logits = rm.logits[-1]
    assert abs(float(graph.inputs[-1]) - float(logits[3] - logits[5])) < 1e-9
    assert abs(float(graph.adjacency[-1].sum() + graph.bias[-1] - graph.inputs[-1])) < 1e-9
    capped = attribute(rm, target, batch_size=5, max_feature_nodes=10, update_interval=1)
    assert capped.n_features == 10 and capped.n_active == rm.n_features
    # the kept features' rows are the full graph's rows restricted to the kept columns
    full_ids, capped_ids = graph.node_ids(), capped.node_ids()
    col = torch.tensor([full_ids.index(i) for i in capped_ids])
    row = col[:10]
    assert torch.allclose(capped.adjacency[:10], graph.adjacency[row][:, col], atol=1e-12)
    assert torch.allclose(capped.adjacency[-1], graph.adjacency[-1, col], atol=1e-12)
    # the first ranking is by the logit row alone: a cap of one batch keeps the features with the largest |edge|
    # to the logit
    direct = graph.adjacency[-1, :graph.n_features].abs()
    five = attribute(rm, target, batch_size=5, max_feature_nodes=5)
    top = {full_ids[i] for i in direct.argsort(descending=True)[:5].tolist()}
    assert set(five.node_ids()[:5]) == top


def test_feature_target(rm):
    layer, pos, feat = rm.active[-1].tolist()
    graph = attribute(rm, feature_target(rm, layer, pos, feat))
    assert graph.logit_labels == [f"tc{layer}.f{feat}@{pos}"]
    assert abs(float(graph.inputs[-1]) - float(rm.pre[layer][pos, feat])) < 1e-10
    assert abs(float(graph.adjacency[-1].sum() + graph.bias[-1] - graph.inputs[-1])) < 1e-10
    # only earlier layers' features, at positions up to the target's, reach it
    src = graph.adjacency[-1, :graph.n_features].nonzero().reshape(-1)
    assert src.numel() > 0
    assert bool((graph.features[src, 0] < layer).all()) and bool((graph.features[src, 1] <= pos).all())
    with pytest.raises(TargetError, match="out of range"):
        feature_target(rm, 1, 0, rm.sets[1].n_features)
    with pytest.raises(TargetError, match="out of range"):
        feature_target(rm, 1, rm.n_pos, 0)
    with pytest.raises(TargetError, match="no feature set"):
        feature_target(rm, 7, 0, 0)


def test_node_ids_follow_the_grammar(rm):
    from workbench.nodes import parse

    graph = attribute(rm, token_logits(rm, [3, 4]))
    ids = graph.node_ids()
    assert len(set(ids)) == len(ids) == graph.n_nodes
    kinds = [parse(i).kind for i in ids]
    assert kinds[0] == "feature" and kinds[graph.error_start] == "error" and kinds[graph.token_start] == "emb"
    assert kinds[-1] == "logit"
    layer, pos, feat = graph.features[0].tolist()
    assert ids[0] == f"tc{layer}.f{feat}@{pos}"
    assert ids[graph.error_start + graph.n_pos + 2] == "err:tc1@2"


def test_bad_input(model, tiny_llama, tiny_gpt2):
    d = model.cfg.d_model
    facts = ModelFacts.of(model)
    wrong_width = Dictionary.create("transcoder", d + 8, 16, hook_in="blocks.0.ln2.hook_normalized",
                                    hook_out="blocks.0.hook_mlp_out", d_out=d + 8)
    with pytest.raises(FeatureSetError, match="d_model"):
        feature_sets_from_transcoders({0: wrong_width}, facts)
    wrong_hook = Dictionary.create("transcoder", d, 16, hook_in="blocks.0.hook_resid_pre",
                                   hook_out="blocks.0.hook_mlp_out")
    with pytest.raises(FeatureSetError, match="ln2.hook_normalized"):
        feature_sets_from_transcoders({0: wrong_hook}, facts)
    with pytest.raises(FeatureSetError, match="not a layer"):
        feature_sets_from_transcoders({5: _transcoder(d, 1)}, facts)
    sae = Dictionary.create("sae", d, 16, hook_in="blocks.0.ln2.hook_normalized")
    with pytest.raises(FeatureSetError, match="transcoder"):
        feature_sets_from_transcoders({0: sae}, facts)
    bad_set = _sets(model)[0]
    bad_set.decoders = {0: torch.zeros(bad_set.n_features, d + 1)}
    with pytest.raises(FeatureSetError, match="shapes"):
        ReplacementModel(model, torch.tensor(PROMPT), [bad_set])
    with pytest.raises(ValueError, match="context length"):
        ReplacementModel(model, torch.zeros(65, dtype=torch.long), _sets(model))
    with pytest.raises(ValueError, match="token ids"):
        ReplacementModel(model, torch.tensor([64, 99]), _sets(model))
    rm = ReplacementModel(model, torch.tensor(PROMPT), _sets(model))
    with pytest.raises(TargetError, match="vocabulary"):
        logit_difference(rm, 3, 65)
    with pytest.raises(TargetError, match="shape"):
        custom_target(rm, "x", torch.zeros(d + 1))
    with pytest.raises(TargetError, match="token ids"):
        token_logits(rm, [70])


def test_float32_matches_float64(model, rm):
    graph64 = attribute(rm, token_logits(rm, [3]))
    rm32 = ReplacementModel(model, torch.tensor(PROMPT), _sets(model), dtype=torch.float32)
    graph32 = attribute(rm32, token_logits(rm32, [3]))
    assert graph32.adjacency.dtype == torch.float32
    assert torch.equal(graph32.features, graph64.features)
    scale = graph64.adjacency.abs().max()
    assert torch.allclose(graph32.adjacency.double(), graph64.adjacency, atol=1e-4 * float(scale), rtol=0)


def _hand_graph() -> torch.Tensor:
    """circuit-tracer's test graph: 5 features (0-4), 4 error nodes (5-8), 2 tokens (9, 10), one logit (11)."""
    adjacency = torch.zeros(12, 12, dtype=torch.float64)
    adjacency[11, [1, 3, 6, 8]] = 10
    adjacency[3, [0, 1, 6]] = 10
    adjacency[1, [9, 10]] = 10
    adjacency[0, 9] = 10
    return adjacency


def test_influence_on_a_hand_built_graph():
    from circuits.attribution.prune import edge_influence, node_influence, normalize

    adjacency = _hand_graph()
    w = torch.zeros(12, dtype=torch.float64)
    w[11] = 1
    infl = node_influence(adjacency, w)
    want = torch.tensor([1 / 12, 1 / 3, 0, 1 / 4, 0, 0, 1 / 3, 0, 1 / 4, 1 / 4, 1 / 6, 0], dtype=torch.float64)
    assert torch.allclose(infl, want, atol=1e-15)
    # the power series is w^T ((I - A)^-1 - I)
    A = normalize(adjacency)
    closed = torch.linalg.solve((torch.eye(12, dtype=A.dtype) - A).T, w) - w
    assert torch.allclose(infl, closed, atol=1e-14)
    pruned = adjacency.clone()
    pruned[3, 0] = pruned[0, 9] = 0  # node 0 falls to the node threshold
    edges = edge_influence(pruned, w)
    want_edges = torch.zeros(12, 12, dtype=torch.float64)
    want_edges[11, [1, 3, 6, 8]] = 1 / 4
    want_edges[3, [1, 6]] = 1 / 8
    want_edges[1, [9, 10]] = 3 / 16
    assert torch.allclose(edges, want_edges, atol=1e-15)


def test_pruning_keeps_the_stated_fractions():
    from circuits.attribution.prune import prune_adjacency, scores

    adjacency = _hand_graph()
    w = torch.zeros(12, dtype=torch.float64)
    w[11] = 1
    kw = {"n_features": 5, "n_tokens": 2, "n_logits": 1}
    # influences 1/3, 1/3, 1/4, 1/4, 1/4, 1/6, 1/12 (total 5/3): 0.8 of it is first reached with the third 1/4
    # (cumulative 0.85), so the nodes of influence >= 1/4 stay (1, 3, 6, 8, token 9), node 0 (1/12) goes,
    # token 10 (1/6) stays as every token does; edge influences then 4 x 1/4, 2 x 3/16, 2 x 1/8 (total 1.625):
    # 0.98 keeps all eight
    res = prune_adjacency(adjacency, w, **kw)
    assert res.node_mask.nonzero().reshape(-1).tolist() == [1, 3, 6, 8, 9, 10, 11]
    kept = res.influence[[1, 3, 6, 8, 9]].sum() / res.influence.sum()
    assert abs(float(kept) - 0.85) < 1e-12  # the nodes kept for their influence; with token 10: 0.95
    assert abs(float(res.influence[res.node_mask].sum() / res.influence.sum()) - 0.95) < 1e-12
    assert int(res.edge_mask.sum()) == 8
    # 0.7 of edge influence is first reached with the first 3/16 (cumulative 0.731); both 3/16 edges are equal so
    # both stay (6 edges, 0.846 of it); feature 3 then has no incoming edge and goes, and with it the edge 3 -> 11
    res = prune_adjacency(adjacency, w, **kw, edge_threshold=0.7)
    assert res.node_mask.nonzero().reshape(-1).tolist() == [1, 6, 8, 9, 10, 11]
    kept_edges = sorted(map(tuple, res.edge_mask.nonzero().tolist()))
    assert kept_edges == [(1, 9), (1, 10), (11, 1), (11, 6), (11, 8)]
    # thresholds 1.0 keep every node of nonzero influence and every edge
    res = prune_adjacency(adjacency, w, **kw, node_threshold=1.0, edge_threshold=1.0)
    assert bool(res.node_mask[[0, 1, 3, 6, 8, 9, 10, 11]].all())
    assert int(res.edge_mask.sum()) == int((adjacency != 0).sum())
    with pytest.raises(ValueError, match="node_threshold"):
        prune_adjacency(adjacency, w, **kw, node_threshold=1.5)
    # replacement: tokens 5/12 of (tokens + errors) 1; completeness: rows 11 (half from errors) and 3 (a third)
    replacement, completeness = scores(adjacency, w, n_features=5, n_errors=4, n_tokens=2)
    assert abs(replacement - 5 / 12) < 1e-12
    num = 1 / 12 + 1 / 3 + 1 / 4 * 2 / 3 + 1 / 3 + 1 / 4 + 1 / 4 + 1 / 6 + 1 / 2
    den = 1 / 12 + 1 / 3 + 1 / 4 + 1 / 3 + 1 / 4 + 1 / 4 + 1 / 6 + 1
    assert abs(completeness - num / den) < 1e-12


def test_scores_and_pruning_on_a_real_graph(rm):
    from circuits.attribution.prune import graph_scores, normalize, prune

    graph = attribute(rm)
    w = graph.logit_weights()
    A = normalize(graph.adjacency)
    res = prune(graph)
    closed = torch.linalg.solve((torch.eye(graph.n_nodes, dtype=A.dtype) - A).T, w) - w
    assert torch.allclose(res.influence, closed, atol=1e-10)
    kept = res.influence[res.node_mask].sum() / res.influence.sum()
    assert kept >= 0.8 - 1e-9 or bool(res.node_mask[:graph.token_start].all())
    assert res.node_mask[graph.token_start:].all()
    replacement, completeness = graph_scores(graph)
    assert 0 <= replacement <= 1 and 0 <= completeness <= 1
    # random transcoders explain little: the error nodes carry most of the influence
    assert replacement < 0.9


# circuit-tracer's frontend/graph_models.py (pydantic models Metadata, QParams, Node, Link, Model) as a JSON Schema
_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
GRAPH_SCHEMA = {
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object", "required": ["slug", "scan", "transcoder_list", "prompt_tokens", "prompt"],
            "properties": {"slug": _STR, "scan": _STR, "transcoder_list": {"type": "array", "items": _STR},
                           "prompt_tokens": {"type": "array", "items": _STR}, "prompt": _STR,
                           "node_threshold": {"type": ["number", "null"]},
                           "schema_version": {"type": ["integer", "null"], "const": 1}},
        },
        "qParams": {
            "type": "object", "required": ["pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"],
            "properties": {"pinnedIds": {"type": "array", "items": _STR},
                           "supernodes": {"type": "array", "items": {"type": "array", "items": _STR}},
                           "linkType": _STR, "clickedId": _STR, "sg_pos": _STR},
        },
        "nodes": {"type": "array", "items": {
            "type": "object", "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId"],
            "properties": {"node_id": _STR, "feature": _INT, "layer": _STR, "ctx_idx": _INT, "feature_type": _STR,
                           "token_prob": _NUM, "is_target_logit": _BOOL, "run_idx": _INT, "reverse_ctx_idx": _INT,
                           "jsNodeId": _STR, "clerp": _STR, "influence": {"type": ["number", "null"]},
                           "activation": {"type": ["number", "null"]}},
        }},
        "links": {"type": "array", "items": {
            "type": "object", "required": ["source", "target", "weight"],
            "properties": {"source": _STR, "target": _STR, "weight": _NUM},
        }},
    },
}


def test_exports(rm, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from circuits.attribution.export import to_circuit, to_graph_json, write_graph_json
    from circuits.attribution.prune import prune
    from workbench.circuit import Circuit

    graph = attribute(rm, token_logits(rm, [3, 5]))
    pruned = prune(graph, 0.8, 0.98)
    circuit = to_circuit(graph, pruned)
    ids = graph.node_ids()
    kept = pruned.node_mask.nonzero().reshape(-1).tolist()
    assert set(circuit) <= {ids[i] for i in kept}
    assert {ids[i] for i in range(graph.token_start, graph.n_nodes)} <= set(circuit)
    for u, v, d in circuit.graph.edges(data=True):
        assert d["weight"] == pytest.approx(float(graph.adjacency[ids.index(v), ids.index(u)]), abs=0)
    assert Circuit.from_json(json.loads(json.dumps(circuit.to_json()))) == circuit
    data = to_graph_json(graph, pruned, slug="test", scan="toy", d_vocab=65, node_threshold=0.8)
    jsonschema.validate(data, GRAPH_SCHEMA)
    node_ids = {n["node_id"] for n in data["nodes"]}
    assert len(node_ids) == len(data["nodes"]) == len(circuit)
    assert all(link["source"] in node_ids and link["target"] in node_ids for link in data["links"])
    assert len(data["links"]) == circuit.graph.number_of_edges()
    assert sum(n["feature_type"] == "logit" for n in data["nodes"]) == 2
    path = write_graph_json(tmp_path / "graph.json", data)
    assert json.loads(path.read_text()) == data
    data["links"][0]["weight"] = float("nan")
    with pytest.raises(ValueError):
        write_graph_json(tmp_path / "graph.json", data)
    assert json.loads(path.read_text())["links"][0]["weight"] != data["links"][0]["weight"]  # the old file stands


def _folders(model, tmp_path) -> list[str]:
    from circuits.dictionaries.saelens_io import save_dictionary

    d = model.cfg.d_model
    tcs = {0: _transcoder(d, 0, seed=1), 1: _transcoder(d, 1, activation="topk", seed=2)}
    return [str(save_dictionary(tc, tmp_path / f"tc{layer}")) for layer, tc in tcs.items()]


def test_attribute_verb_stores_a_run(tiny_llama, tmp_path):
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from workbench.store import Store

    store = Store(tmp_path / "runs")
    cfg = AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=_folders(tiny_llama, tmp_path), precision="float64",
                          batch_size=16)
    info, result = ATTRIBUTE.launch(tiny_llama, cfg, store=store)
    s = result.summary
    assert s["completeness_max_abs_error"] < 1e-9 and 0 <= s["replacement_score"] <= 1
    assert s["kept_influence"] >= 0.8 and s["nodes"] == len(result.graphs["circuit"])
    run = store.load("attribution", info.run_id)
    assert run.json("graph")["metadata"]["schema_version"] == 1
    assert len(run.table("edges")) == s["edges"]
    fig = ATTRIBUTE.figures(run)["graph"]
    ticks = list(fig.layout.xaxis.ticktext)
    assert all(repr(t) in tick for t, tick in zip(result.objects["graph"].token_strings, ticks, strict=True))
    # a logit difference and a feature target
    diff = ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=cfg.transcoder,
                                                     correct="t7", incorrect="t9"))
    assert diff.summary["targets"] == [f"{tiny_llama.tokenizer.decode([_id(tiny_llama, 't7')])}-"
                                       f"{tiny_llama.tokenizer.decode([_id(tiny_llama, 't9')])}"]
    graph = result.objects["graph"]
    layer, pos, feat = graph.features[-1].tolist()
    feat_run = ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=cfg.transcoder,
                                                         target=f"tc{layer}.f{feat}@{pos}", precision="float64"))
    assert feat_run.summary["completeness_max_abs_error"] < 1e-9


def _id(model, text: str) -> int:
    from workbench.data.tokens import encode

    (token,) = encode(model.tokenizer, text)
    return token


def test_attribute_verb_bad_input(tiny_llama, tmp_path):
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from circuits.dictionaries.saelens_io import save_dictionary
    from workbench.analysis import ConfigError

    folders = _folders(tiny_llama, tmp_path)
    ok = {"prompt": "t3 t5 t7", "transcoder": folders}
    with pytest.raises(ConfigError, match="single token"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(**ok, correct="t3 t5"))
    with pytest.raises(ConfigError, match="context length"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt=" ".join(["t3"] * 80), transcoder=folders))
    with pytest.raises(ConfigError, match="out of range"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(**ok, target="tc1.f9999@2"))
    with pytest.raises(ConfigError, match="transcoder feature at a position"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(**ok, target="L1.H0@2"))
    with pytest.raises(ConfigError, match="--transcoder"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3"))
    wide = Dictionary.create("transcoder", 48, 64, hook_in="blocks.0.ln2.hook_normalized",
                             hook_out="blocks.0.hook_mlp_out")
    other = str(save_dictionary(wide, tmp_path / "wide"))
    with pytest.raises(ValueError, match="d_in is 48"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5", transcoder=[other]))
    (tmp_path / "tc0" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(**ok))


def test_a_cross_layer_feature_set_slots_in(model):
    """Features of layer 0 decoding into MLP outputs 0 and 1 (a cross-layer transcoder's shape): the replacement is
    exact, completeness holds, and an edge from such a feature sums its writes into both layers."""
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(5)

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=gen, dtype=torch.float64)

    clt0 = FeatureSet(0, rand(d, 48), rand(48), torch.relu, {0: rand(48, d), 1: rand(48, d)}, {0: rand(d), 1: rand(d)},
                      name="clt")
    clt1 = FeatureSet(1, rand(d, 48), rand(48), torch.relu, {1: rand(48, d)}, {1: rand(d)}, name="clt")
    rm = ReplacementModel(model, torch.tensor(PROMPT), [clt0, clt1], dtype=torch.float64)
    assert torch.allclose(rm.replacement_logits(), rm.logits, atol=1e-10, rtol=0)
    targets = token_logits(rm, [3])
    rm._targets = targets
    graph = attribute(rm, targets, batch_size=9)
    rows = list(range(graph.n_features)) + [graph.n_nodes - 1]
    total = graph.adjacency.sum(1) + graph.bias
    assert torch.allclose(total[rows], graph.inputs[rows], atol=1e-10 * float(graph.inputs.abs().max()), rtol=0)
    assert graph.node_ids()[0].startswith("clt0.f")
    # a layer-0 feature's edge to the logit equals zeroing it (both of its writes) in the linearised model
    layer0 = (graph.features[:, 0] == 0).nonzero().reshape(-1)
    i = int(layer0[graph.adjacency[-1, layer0].abs().argmax()])
    src = Sources(rm.sources.acts.clone(), rm.sources.errors, rm.sources.embed)
    src.acts[0, i] = 0
    moved = _input_of(rm, graph, graph.n_nodes - 1, rm.sources) - _input_of(rm, graph, graph.n_nodes - 1, src)
    assert abs(moved - float(graph.adjacency[-1, i])) < 1e-9


def test_demo_trains_transcoders_first(tiny_llama, tmp_path):
    import dataclasses

    from circuits.attribution.analysis import ATTRIBUTE
    from workbench.store import Store

    store = Store(tmp_path)
    cfg = dataclasses.replace(ATTRIBUTE.demo, train_tokens=1024, prompt="t3 t5 t7 t3 t5", precision="float64")
    info, result = ATTRIBUTE.launch(tiny_llama, cfg, store=store)
    run = store.load("attribution", info.run_id)
    assert run.summary["transcoder_layers"] == [0, 1] and run.summary["transcoder_tokens"] >= 1024
    assert run.summary["completeness_max_abs_error"] < 1e-9
    assert 0 < run.summary["replacement_score"] <= 1 and run.summary["edges"] > 0
