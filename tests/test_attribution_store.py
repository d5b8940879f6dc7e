"""The full attribution graph in the store (bit-exact round trip, re-pruning), feature cards against a brute-force
recomputation, circuit-tracer's feature files, and the explorer's layout, re-pruning and supernodes."""

from __future__ import annotations

import json

import pytest
import torch
from test_attribution import PROMPT, _folders, _sets

from circuits.attribution.attribute import attribute, token_logits
from circuits.attribution.export import feature_file
from circuits.attribution.features import card_index, feature_cards, grouped_top
from circuits.attribution.prune import prune
from circuits.attribution.replacement import ReplacementModel
from circuits.attribution.storage import load_graph
from circuits.dictionaries.buffer import random_source


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.fixture(scope="module")
def stored(tiny_llama, tmp_path_factory):
    """An attribute run of the tiny Llama with feature cards, in its own store: (store, RunInfo, Result)."""
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from workbench.store import Store

    tmp = tmp_path_factory.mktemp("attribution-store")
    cfg = AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=_folders(tiny_llama, tmp), feature_tokens=256,
                          max_feature_files=12)
    store = Store(tmp / "runs")
    info, result = ATTRIBUTE.launch(tiny_llama, cfg, store=store)
    return store, info, result


def test_full_graph_round_trips_bit_exactly(stored):
    store, info, result = stored
    graph = result.objects["graph"]
    loaded = load_graph(store.load("attribution", info.run_id))
    assert loaded.adjacency.dtype == graph.adjacency.dtype
    assert torch.equal(_bits(loaded.adjacency), _bits(graph.adjacency))
    for name in ("tokens", "features", "activations", "inputs", "bias", "logit_probabilities"):
        a, b = getattr(loaded, name), getattr(graph, name)
        assert a.dtype == b.dtype and torch.equal(_bits(a) if a.is_floating_point() else a,
                                                  _bits(b) if b.is_floating_point() else b), name
    assert loaded.token_strings == graph.token_strings and loaded.logit_labels == graph.logit_labels
    assert loaded.logit_tokens == graph.logit_tokens and loaded.names == graph.names
    assert loaded.n_active == graph.n_active and loaded.metadata == graph.metadata
    assert loaded.node_ids() == graph.node_ids()
    # re-pruning the loaded graph equals pruning the original, at other thresholds too
    for node_t, edge_t in ((0.8, 0.98), (0.5, 0.9), (0.95, 0.999)):
        a, b = prune(loaded, node_t, edge_t), prune(graph, node_t, edge_t)
        assert torch.equal(a.node_mask, b.node_mask) and torch.equal(a.edge_mask, b.edge_mask)
        assert torch.equal(a.influence, b.influence)


def test_signed_zero_and_storage_layout(rm, tmp_path):
    from circuits.attribution.storage import GRAPH_JSON, GRAPH_TENSORS, MissingGraphError, graph_artifacts
    from workbench.store import Store

    graph = attribute(rm, token_logits(rm, [3, 5]))
    graph.adjacency[-1, 0] = -0.0
    tensors, doc = graph_artifacts(graph)
    assert tensors["values"].numel() == int((graph.adjacency != 0).sum()) + 1  # the -0.0 entry is kept
    assert tensors["indptr"][-1] == tensors["values"].numel() and tensors["indices"].dtype == torch.int32
    store = Store(tmp_path)
    with store.create("attribution", model="m") as w:
        w.save_tensors(GRAPH_TENSORS, tensors)
        w.save_json(GRAPH_JSON, doc)
    run = store.load("attribution", w.info.run_id)
    loaded = load_graph(run)
    assert torch.equal(_bits(loaded.adjacency), _bits(graph.adjacency))
    assert str(loaded.adjacency[-1, 0].item()) == "-0.0"
    bad = {**tensors, "indptr": tensors["indptr"][:-1]}
    with store.create("attribution", model="m") as w:
        w.save_tensors(GRAPH_TENSORS, bad)
        w.save_json(GRAPH_JSON, doc)
    with pytest.raises(ValueError, match="not the rows"):
        load_graph(store.load("attribution", w.info.run_id))
    with store.create("attribution", model="m") as w:
        w.summary["x"] = 1
    with pytest.raises(MissingGraphError, match="workbench attribute"):
        load_graph(store.load("attribution", w.info.run_id))


@pytest.fixture
def rm(tiny_gpt2) -> ReplacementModel:
    return ReplacementModel(tiny_gpt2, torch.tensor(PROMPT), _sets(tiny_gpt2), dtype=torch.float64)


def _brute(model, rm, source, layer: int, feat: int, bos: int):
    """Every activation of (layer, feat) on every batch of ``source()`` [n_batches, B, S], tokens, and the mask of
    the scanned positions (not BOS) — from the model's cache, each batch whole."""
    acts, toks = [], []
    s = rm.sets[layer]
    for tokens in source():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ln2.hook_normalized"])
        x = cache[f"blocks.{layer}.ln2.hook_normalized"].double() + rm.w.ln2_b[layer]
        acts.append(s.encode(x @ s.W_enc + s.b_enc)[..., feat])
        toks.append(tokens)
    tokens = torch.stack(toks)
    return torch.stack(acts) * (tokens != bos), tokens


def test_feature_cards_against_brute_force(tiny_gpt2, rm):
    model, bos = tiny_gpt2, 64
    source = random_source(64, seq_len=12, batch_size=4, n_batches=5, seed=3, bos_id=bos)
    feats = [(0, int(rm.active[rm.active[:, 0] == 0][0, 2])), (1, int(rm.active[rm.active[:, 0] == 1][0, 2]))]
    bias = {la: rm.w.ln2_b[la] for la in rm.sets}
    m, Q, bins = 4, 3, 8
    cards = feature_cards(model, rm.sets, feats, source, examples=m, intervals=Q, bins=bins, before=3, after=2,
                          exclude_tokens=[bos], input_bias=bias, n_logits=5)
    decode = {i: model.tokenizer.decode([i]) for i in range(65)}
    for (layer, feat), card in zip(feats, cards, strict=True):
        a, tokens = _brute(model, rm, source, layer, feat, bos)
        pos = a[a > 0]
        n_tokens = int((tokens != bos).sum())
        assert card["index"] == card_index(layer, feat) and card["n_tokens"] == n_tokens
        assert card["activation_frequency"] == pytest.approx(pos.numel() / n_tokens, abs=0)
        assert sum(card["histogram"]) == pos.numel() == card["n_positive"] > 0
        assert card["act_max"] == pytest.approx(float(pos.max()), rel=1e-9)
        want_hist = torch.bincount(((pos / pos.max()) * bins).ceil().long().clamp(1, bins) - 1, minlength=bins)
        assert card["histogram"] == want_hist.tolist()
        top = card["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations"
        got = [ex["tokens_acts_list"][ex["train_token_ind"]] for ex in top["examples"]]
        assert got == pytest.approx(pos.sort(descending=True).values[:m].tolist(), rel=1e-9)
        # the best example's window is the brute force's context around the argmax
        flat = int(a.reshape(-1).argmax())
        batch, row, col = flat // (a.shape[1] * a.shape[2]), flat // a.shape[2] % a.shape[1], flat % a.shape[2]
        lo = max(0, col - 3)
        window = tokens[batch, row, lo:col + 3].tolist()
        best = top["examples"][0]
        assert best["tokens"] == [decode[t] for t in window] and best["train_token_ind"] == col - lo
        assert best["tokens_acts_list"] == pytest.approx(a[batch, row, lo:col + 3].tolist(), rel=1e-9, abs=1e-12)
        # interval groups: every example in its interval, as many as the interval holds (at most m)
        edges = [q / Q * float(pos.max()) for q in range(Q + 1)]
        for slot, group in enumerate(card["examples_quantiles"][1:]):
            q = Q - 1 - slot
            inside = int(((pos > edges[q] * (1 + 1e-12)) & (pos <= edges[q + 1] * (1 + 1e-12))).sum())
            values = [ex["tokens_acts_list"][ex["train_token_ind"]] for ex in group["examples"]]
            assert len(values) == min(m, inside), (slot, inside)
            assert all(edges[q] * (1 - 1e-9) <= v <= edges[q + 1] * (1 + 1e-9) for v in values)
            assert values == sorted(values, reverse=True)
        # quantiles are non-decreasing and end at the maximum; logits through W_U
        qv = card["quantile_values"]
        assert len(qv) == 100 and qv == sorted(qv) and qv[-1] == pytest.approx(card["act_max"])
        eff = rm.sets[layer].decoders[layer][feat] @ model.W_U.double()
        assert card["top_logits"] == [model.tokenizer.decode([i]) for i in eff.topk(5).indices.tolist()]
        assert card["bottom_logits"] == [model.tokenizer.decode([i]) for i in
                                         eff.topk(5, largest=False).indices.tolist()]


def test_cards_read_the_activations_of_the_graph(tiny_gpt2, rm):
    """Harvesting the prompt itself gives each feature the maximum of its activations in the replacement model."""
    bias = {la: rm.w.ln2_b[la] for la in rm.sets}
    feats = sorted({(int(la), int(f)) for la, _, f in rm.active.tolist()})[:20]
    cards = feature_cards(tiny_gpt2, rm.sets, feats, lambda: [torch.tensor([PROMPT])], input_bias=bias)
    for (layer, feat), card in zip(feats, cards, strict=True):
        mine = (rm.active[:, 0] == layer) & (rm.active[:, 2] == feat)
        assert card["act_max"] == pytest.approx(float(rm.activations[mine].max()), rel=1e-6)
        assert card["n_positive"] == int(mine.sum())


def test_grouped_top():
    keys = torch.tensor([2, 0, 2, 2, 0, 1])
    pri = torch.tensor([0.5, 0.1, 0.9, 0.7, 0.3, 0.2])
    idx, rank = grouped_top(keys, pri, 2)
    got = {(int(keys[i]), int(r)): float(pri[i]) for i, r in zip(idx, rank, strict=True)}
    assert got == {(0, 0): pytest.approx(0.3), (0, 1): pytest.approx(0.1), (1, 0): pytest.approx(0.2),
                   (2, 0): pytest.approx(0.9), (2, 1): pytest.approx(0.7)}


def test_the_run_holds_cards_and_circuit_tracer_files(stored):
    store, info, result = stored
    run = store.load("attribution", info.run_id)
    cards = run.json("features")["features"]
    assert len(cards) == result.summary["feature_cards"] == 12
    assert run.params["feature_tokens"] == 256
    folder = run.subpath("graph_files")
    graph_json = json.loads((folder / "attribution.json").read_text())
    scan = graph_json["metadata"]["scan"]
    for card in cards:
        assert json.loads(feature_file(folder, scan, card["index"]).read_text()) == card
        assert sum(card["histogram"]) == card["n_positive"]
    listing = json.loads((folder / "graph-metadata.json").read_text())
    assert listing["graphs"] == [graph_json["metadata"]]


def test_layout_supernodes_and_selection(stored):
    from circuits.attribution.explore import graph_figure, group, layout, reprune, selected_ids
    from circuits.attribution.export import kept

    _, _, result = stored
    graph = result.objects["graph"]
    pruned = reprune(graph, 0.9, 0.99)
    view = layout(graph, pruned)
    ids = graph.node_ids()
    nodes_kept, edges = kept(graph, pruned)
    assert list(view.nodes["id"]) == [ids[i] for i in nodes_kept] and len(view.edges) == len(edges)
    by_kind = view.nodes.groupby("kind")["y"].agg(["min", "max"])
    assert by_kind.loc["emb"].tolist() == [0, 0] and by_kind.loc["logit"].tolist() == [3, 3]
    feats = view.nodes[view.nodes["kind"] == "feature"]
    assert (feats["y"] == feats["layer"] + 1).all() and ((feats["x"] - feats["position"]).abs() < 0.4).all()
    assert len(set(zip(view.nodes["x"], view.nodes["y"], strict=True))) == len(view.nodes)  # no two nodes overlap
    # two pinned features as one supernode: the edge weight between the group and the rest is kept
    members = list(feats.sort_values("influence")["id"][-2:])
    grouped = group(view, {"pair": members})
    assert len(grouped.nodes) == len(view.nodes) - 1 and "super:pair" in set(grouped.nodes["id"])
    sup = grouped.nodes.set_index("id").loc["super:pair"]
    assert sup["influence"] == pytest.approx(feats.set_index("id").loc[members, "influence"].sum())
    e = view.edges
    inside = e["source"].isin(members) & e["target"].isin(members)
    for end in ("source", "target"):
        want = e[e[end].isin(members) & ~inside]["weight"].sum()
        assert grouped.edges[grouped.edges[end] == "super:pair"]["weight"].sum() == pytest.approx(want)
    assert grouped.edges.groupby(["source", "target"]).size().max() == 1
    with pytest.raises(ValueError, match="two supernodes"):
        group(view, {"a": members, "b": members[:1]})
    fig = graph_figure(grouped, pinned=members[:1], selected="super:pair")
    assert list(fig.layout.xaxis.ticktext) == [repr(t) for t in graph.token_strings]
    curve = next(j for j, t in enumerate(fig.data) if t.meta and t.customdata is not None
                 and "super:pair" in t.customdata)
    event = {"selection": {"points": [{"curve_number": curve, "point_index": 0}, {"curve_number": 0}]}}
    assert selected_ids(event, fig) == ["super:pair"] and selected_ids(None, fig) == []
