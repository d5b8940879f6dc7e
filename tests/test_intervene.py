"""Interventions on attribution graphs: the linearised replacement moves exactly as the graph's edges predict
(against a dense (I - D B)^-1 solve too), direct effects equal single edges, the spliced rerun equals the bridge run
with the transcoders hooked in, sign agreement against a recount, and bad interventions."""

from __future__ import annotations

import pytest
import torch

from circuits.attribution.attribute import attribute, feature_target, salient_logits
from circuits.attribution.intervene import (
    Intervention,
    InterventionError,
    intervene,
    parse_intervention,
    predict_change,
    sign_agreement,
)
from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
from circuits.attribution.rerun import rerun
from circuits.dictionaries.model import Dictionary
from circuits.frozen.facts import ModelFacts

PROMPT = [64, 3, 5, 7, 9, 11, 3, 5, 7]


def _transcoders(model) -> dict[int, Dictionary]:
    d = model.cfg.d_model
    out = {}
    for layer, (kind, act) in enumerate([("skip_transcoder", "relu"), ("transcoder", "topk")]):
        tc = Dictionary.create(kind, d, 4 * d, activation=act, k=12 if act == "topk" else None, seed=layer + 1,
                               hook_in=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out")
        gen = torch.Generator().manual_seed(layer + 100)
        with torch.no_grad():
            tc.b_enc.copy_(0.1 * torch.randn(tc.d_sae, generator=gen))
            tc.b_dec.copy_(0.2 * torch.randn(d, generator=gen))
            if tc.W_skip is not None:
                tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen))
        out[layer] = tc
    return out


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_llama"])
def setup(request):
    model = request.getfixturevalue(request.param)
    sets = feature_sets_from_transcoders(_transcoders(model), ModelFacts.of(model))
    rm = ReplacementModel(model, torch.tensor(PROMPT), sets, dtype=torch.float64)
    targets = salient_logits(rm, max_n_logits=3)
    return model, rm, targets, attribute(rm, targets, batch_size=128)


def _pick(graph, layer: int, k: int = 0) -> Intervention:
    """The k-th graph feature of ``layer`` by |direct effect| on the first target, as a zero intervention."""
    rows = (graph.features[:, 0] == layer).nonzero().reshape(-1)
    i = int(rows[graph.adjacency[graph.logit_start, rows].abs().argsort(descending=True)[k]])
    la, pos, feat = graph.features[i].tolist()
    return Intervention(la, feat, pos, "zero")


def test_both_modes_reproduce_the_clean_run(setup):
    _, rm, _, _ = setup
    for mode in ("replacement", "spliced"):
        for propagate in (True, False):
            run = rerun(rm, mode=mode, propagate=propagate)
            assert torch.allclose(run.logits, rm.logits, atol=1e-10, rtol=0), (mode, propagate)
    assert torch.allclose(rerun(rm, mode="spliced", freeze_attention=True).logits, rm.logits, atol=1e-10, rtol=0)


def test_replacement_change_equals_the_graphs_prediction(setup):
    model, rm, targets, graph = setup
    z0, z1 = _pick(graph, 0), _pick(graph, 1)
    s0 = _pick(graph, 0, 1)
    ivs = [Intervention(s0.layer, s0.feature, s0.position, "set", 2.5), Intervention(z0.layer, z0.feature,
           z0.position, "scale", -1.5), z1, "tc1.f3"]
    res = intervene(model, rm, PROMPT, ivs, mode="replacement", targets=targets, graph=graph)
    scale = float(res.target_change.abs().max())
    assert scale > 1e-3
    assert torch.allclose(res.predicted_change, res.target_change, atol=1e-9 * max(1.0, scale), rtol=0)
    # the prediction itself against a dense solve of (I - D B) delta_a = delta
    F, A, a = graph.n_features, graph.adjacency, graph.activations
    B = A[:, :F] / a
    delta, damp = torch.zeros(F, dtype=A.dtype), torch.ones(F, dtype=A.dtype)
    index = {tuple(r): i for i, r in enumerate(graph.features.tolist())}
    for iv, new, d in [(ivs[0], 2.5, 0.0), (ivs[1], None, -1.5), (z1, 0.0, 0.0)]:
        i = index[(iv.layer, iv.position, iv.feature)]
        delta[i] = (-1.5 * a[i] if new is None else new) - a[i]
        damp[i] = d
    for pos in range(graph.n_pos):
        i = index.get((1, pos, 3))
        if i is not None:
            delta[i], damp[i] = -a[i], 0.0
    dense = torch.linalg.solve(torch.eye(F, dtype=A.dtype) - damp[:, None] * B[:F], delta)
    assert torch.allclose(B[graph.logit_start:] @ dense, res.predicted_change, atol=1e-10, rtol=0)
    # direct effects only: zeroing one feature moves each target by minus its edge
    direct = intervene(model, rm, PROMPT, [z0], mode="replacement", targets=targets, graph=graph, propagate=False)
    i = index[(z0.layer, z0.position, z0.feature)]
    assert torch.allclose(direct.target_change, -A[graph.logit_start:, i], atol=1e-10, rtol=0)
    assert torch.allclose(direct.predicted_change, direct.target_change, atol=1e-10, rtol=0)
    # the top tokens are the largest probability moves, as text
    p0, p1 = (torch.softmax(x[-1], -1) for x in (res.logits_before, res.logits_after))
    assert res.top_tokens[0].token_id == int((p1 - p0).abs().argmax())
    assert res.top_tokens[0].text == model.tokenizer.decode([res.top_tokens[0].token_id])


def test_a_feature_target_moves_as_predicted(setup):
    model, rm, _, _ = setup
    layer, pos, feat = rm.active[-1].tolist()
    target = feature_target(rm, layer, pos, feat)
    graph = attribute(rm, target)
    src = (graph.adjacency[-1, :graph.n_features] != 0).nonzero().reshape(-1)
    la, p, f = graph.features[src[0]].tolist()
    res = intervene(model, rm, PROMPT, [f"tc{la}.f{f}@{p}=1.7"], targets=target, graph=graph)
    moved = res.acts_after[layer][pos, feat] - res.acts_before[layer][pos, feat]
    assert abs(float(res.target_change[0] - moved)) < 1e-10  # an active feature moves with its pre-activation
    assert abs(float(res.predicted_change[0] - res.target_change[0])) < 1e-9


def test_spliced_rerun_equals_the_bridge_with_transcoders_hooked_in(tiny_llama):
    """The spliced mode is the real model: the bridge run with each MLP output replaced by the feature set's output
    (one feature set to 2.0) plus the clean error."""
    model = tiny_llama
    sets = feature_sets_from_transcoders(_transcoders(model), ModelFacts.of(model))
    rm = ReplacementModel(model, torch.tensor(PROMPT), sets, dtype=torch.float32)
    layer, pos, feat = rm.active[0].tolist()
    res = intervene(model, rm, PROMPT, [f"tc{layer}.f{feat}@{pos}=2.0"], mode="spliced", predict=False)
    inputs = {}

    def keep(la):
        def hook(x, hook):
            inputs[la] = x
            return x
        return hook

    def replace(la):
        def hook(out, hook):
            s = rm.sets[la]
            x = inputs[la][0]
            a = s.encode(x @ s.W_enc + s.b_enc)
            if la == layer:
                a[pos, feat] = 2.0
            y = a @ s.decoders[la] + s.b_dec[la] + (x @ s.W_skip if s.W_skip is not None else 0)
            return (y + rm.errors[la])[None]
        return hook

    hooks = [h for la in rm.sets for h in ((f"blocks.{la}.ln2.hook_normalized", keep(la)),
                                           (f"blocks.{la}.hook_mlp_out", replace(la)))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        bridge = model(torch.tensor([PROMPT]), return_type="logits")[0]
    assert (res.logits_after - res.logits_before).abs().max() > 1e-3
    assert torch.allclose(res.logits_after, bridge, atol=1e-4, rtol=1e-4)


def test_sign_agreement_equals_a_recount(setup):
    model, rm, targets, graph = setup
    sa = sign_agreement(rm, graph, targets, n=6, mode="spliced")
    assert len(sa.nodes) == 6
    agree = 0
    for node, pred, meas in zip(sa.nodes, sa.predicted.tolist(), sa.measured.tolist(), strict=True):
        one = intervene(model, rm, PROMPT, [parse_intervention(node, "zero")], mode="spliced", targets=targets,
                        graph=graph)
        assert abs(float(one.predicted_change[0]) - pred) < 1e-10
        assert abs(float(one.target_change[0]) - meas) < 1e-10
        agree += (pred > 0) == (meas > 0)
    assert sa.rate == agree / 6
    # in the linearised replacement every sign holds (the changes are the predictions)
    exact = sign_agreement(rm, graph, targets, n=6, mode="replacement")
    assert exact.rate == 1.0 and torch.allclose(exact.measured, exact.predicted, atol=1e-9)


def test_bad_interventions(setup):
    model, rm, targets, graph = setup
    for text, match in [("tc1.f@3", "malformed node id"), ("L1.H0@2", "not a feature"), ("tc1.f3@2=abc", "number"),
                        ("tc1.f3@2=nan", "finite"), ("tc1.f9999@2", "out of range"), ("tc1.f3@99", "outside the prompt"),
                        ("tc7.f3@1", "no transcoder"), ("sae1.f3@1", "named tc1")]:
        with pytest.raises(InterventionError, match=match):
            intervene(model, rm, PROMPT, [text], targets=targets, graph=graph)
    with pytest.raises(InterventionError, match="needs a value"):
        parse_intervention("tc1.f3@2", "set")
    # a feature off on the prompt and set on: the graph has no node for it, so no prediction
    layer, n = 1, rm.sets[1].n_features
    inactive = next(f for f in range(n) if not bool(((rm.active[:, 0] == 1) & (rm.active[:, 2] == f)).any()))
    res = intervene(model, rm, PROMPT, [f"tc{layer}.f{inactive}@3=1.0"], targets=targets, graph=graph)
    assert res.predicted_change is None and "no prediction" in res.prediction_note
    assert predict_change(graph, [Intervention(layer, inactive, 3, "zero")]) is not None


def test_qk_terms_sum_to_the_models_attention_score(setup):
    from circuits.attribution.attention import qk_attribution, residual_sources
    from workbench.nodes import parse

    model, rm, _, _ = setup
    T = rm.n_pos
    _, cache = model.run_with_cache(torch.tensor([PROMPT]), names_filter=lambda n: n.endswith("hook_attn_scores"))
    for layer, head, q, k in [(1, 3, T - 1, 2), (0, 1, 4, 4), (1, 0, 6, 0)]:
        res = qk_attribution(rm, layer, head, q, k)
        lc = rm.clean.layers[layer]
        kv = head // (rm.w.n_heads // rm.w.n_kv)
        want = float(lc.q[0, q, head] @ lc.k[0, k, kv]) / rm.w.d_head ** 0.5
        assert abs(float(res.terms.sum()) - want) < 1e-9 * max(1.0, abs(want))
        assert abs(res.score - want) < 1e-12
        bridge = float(cache[f"blocks.{layer}.attn.hook_attn_scores"][0, head, q, k])
        assert abs(bridge - want) < 1e-4 * max(1.0, abs(want))
        assert torch.allclose(res.query_totals.sum(), res.key_totals.sum(), atol=1e-10)
        assert res.terms.shape == (len(res.query_sources), len(res.key_sources))
        assert all(parse(i).position in (None, q) for i in res.query_sources)
        kinds = {"bias", "emb"} | ({"feature", "error", "head"} if layer else set())
        assert {parse(i).kind for i in res.key_sources} == kinds
    # the residual's sources sum to the clean residual, layer by layer
    for layer in range(rm.n_layers + 1):
        ids, C = residual_sources(rm, layer, 3)
        want = rm.clean.layers[layer].resid_pre[0, 3] if layer < rm.n_layers else rm.clean.layers[-1].resid_post[0, 3]
        assert torch.allclose(C.sum(0), want, atol=1e-10) and len(ids) == len(set(ids)) == C.shape[0]
    with pytest.raises(ValueError, match="masks it"):
        qk_attribution(rm, 1, 0, 2, 5)
    with pytest.raises(ValueError, match="head 9"):
        qk_attribution(rm, 1, 9, 2, 1)


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory) -> list[str]:
    from circuits.dictionaries.saelens_io import save_dictionary

    root = tmp_path_factory.mktemp("iv-tc")
    return [str(save_dictionary(tc, root / f"tc{la}")) for la, tc in _transcoders(tiny_llama).items()]


def test_intervene_verb_stores_a_run(tiny_llama, folders, tmp_path):
    from circuits.attribution.intervene_analysis import INTERVENE, InterveneConfig
    from workbench.store import Store

    store = Store(tmp_path / "runs")
    base = {"prompt": "t3 t5 t7 t3 t5", "transcoder": folders, "precision": "float64", "sample": 5}
    from circuits.attribution.analysis import prompt_replacement

    rm, _, _ = prompt_replacement(tiny_llama, InterveneConfig(**base), False)
    (l0, p0, f0), (l1, p1, f1), (l2, p2, f2) = rm.active[[0, -1, -2]].tolist()
    cfg = InterveneConfig(**base, mode="replacement", set=[f"tc{l1}.f{f1}@{p1}=2.0"], scale=[f"tc{l0}.f{f0}=0.5"],
                          zero=[f"tc{l2}.f{f2}@{p2}"])
    info, result = INTERVENE.launch(tiny_llama, cfg, store=store)
    s = result.summary
    assert s["interventions"] == [f"tc{l1}.f{f1}@{p1}=2", f"tc{l0}.f{f0}*0.5", f"zero tc{l2}.f{f2}@{p2}"]
    assert max(abs(p - m) for p, m in zip(s["predicted_change"], s["target_change"], strict=True)) < 1e-9
    assert s["sample_sign_agreement"] == 1.0 and s["sample_size"] == 5
    assert abs(s["sample_median_measured_over_predicted"] - 1) < 1e-9
    run = store.load("intervention", info.run_id)
    figs = INTERVENE.figures(run)
    res = result.objects["result"]
    assert list(figs["top_tokens"].data[0].x) == [repr(t.text) for t in res.top_tokens]
    assert {"targets", "ablations"} <= set(figs)
    # a feature off on the prompt set on: no prediction, said in a warning; the run still stores and draws
    off = next(f for f in range(rm.sets[1].n_features) if not bool(((rm.active[:, 0] == 1)
                                                                    & (rm.active[:, 2] == f)).any()))
    info, unpredicted = INTERVENE.launch(tiny_llama, InterveneConfig(**{**base, "sample": 0}, set=[f"tc1.f{off}@3=1"]),
                                         store=store)
    assert unpredicted.summary["predicted_change"] is None and "no prediction" in unpredicted.warnings[0]
    assert unpredicted.summary["sample_sign_agreement"] is None
    figs = INTERVENE.figures(store.load("intervention", info.run_id))
    assert len(figs["targets"].data) == 1 and "ablations" not in figs
    # spliced, no intervention given: the top feature is zeroed, with a warning; sign agreement is the table's
    spliced = INTERVENE.run(tiny_llama, InterveneConfig(**base))
    table = spliced.tables["ablations"]
    assert spliced.summary["interventions"] == [f"zero {table.node[0]}"] and "zeroed" in spliced.warnings[0]
    agree = sum((p > 0) == (m > 0) for p, m in zip(table.predicted_change, table.measured_change, strict=True))
    assert spliced.summary["sample_sign_agreement"] == agree / len(table)


def test_attribute_verb_adds_the_qk_table_and_heatmap(tiny_llama, folders, tmp_path):
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from workbench.store import Store

    store = Store(tmp_path / "runs")
    cfg = AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=folders, precision="float64", attention_head="1.2")
    info, result = ATTRIBUTE.launch(tiny_llama, cfg, store=store)
    s = result.summary
    assert s["attention_head"] == "L1.H2" and s["attention_query_pos"] == 5
    assert s["attention_terms_sum_error"] < 1e-9
    table = result.tables["attention"]
    for side in ("query", "key"):
        assert abs(table[table.side == side].total.sum() - s["attention_score"]) < 1e-9
    run = store.load("attribution", info.run_id)
    fig = ATTRIBUTE.figures(run)["attention"]
    assert "emb@5 't5'" in list(fig.data[0].y)
    plain = ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5", transcoder=folders))
    assert "attention" not in plain.tables
