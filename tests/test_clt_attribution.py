"""Attribution graphs over a cross-layer transcoder (float64, GPT- and Llama-style): the replacement reproduces the
clean logits, completeness at every node, edges from CLT features equal to brute force in the linearised model
(zeroing the feature moves the target by exactly the edge weight), the cross-layer decoders carry part of those
edges, and the attribute verb reads a CLT folder in circuit-tracer's layout."""

from __future__ import annotations

import pytest
import torch

from circuits.attribution.attribute import attribute, salient_logits
from circuits.attribution.replacement import ReplacementModel, Sources, feature_sets_from_clt
from circuits.dictionaries.clt import CrossLayerTranscoder
from circuits.frozen.facts import ModelFacts

PROMPT = [64, 3, 5, 7, 9, 11, 3, 5, 7]


def _clt(d: int, activation: str = "relu", seed: int = 0, cross: float = 1.0) -> CrossLayerTranscoder:
    """A random 2-layer CLT with nonzero biases and cross-layer decoders (scaled by ``cross``)."""
    clt = CrossLayerTranscoder.create(2, d, 4 * d, activation=activation, k=12 if activation == "topk" else None,
                                      seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        clt.b_enc.copy_(0.1 * torch.randn(2, 4 * d, generator=gen))
        clt.b_dec.copy_(0.2 * torch.randn(2, d, generator=gen))
        clt.W_dec[0][:, 1].copy_(cross * torch.randn(4 * d, d, generator=gen) / d ** 0.5)
        if clt.log_threshold is not None:
            clt.log_threshold.fill_(float(torch.log(torch.tensor(0.05))))
    return clt


@pytest.fixture(params=[("tiny_gpt2", "jumprelu"), ("tiny_llama", "relu"), ("tiny_llama", "topk")], ids=lambda p: "-".join(p))
def model_rm(request) -> tuple[object, ReplacementModel]:
    """A tiny model and the float64 replacement model of a random CLT on it (GPT-style and Llama-style)."""
    name, activation = request.param
    model = request.getfixturevalue(name)
    sets = feature_sets_from_clt(_clt(model.cfg.d_model, activation), ModelFacts.of(model))
    return model, ReplacementModel(model, torch.tensor(PROMPT), sets, dtype=torch.float64)


def _input_of(rm: ReplacementModel, graph, row: int, src: Sources) -> float:
    mlp_in, final = rm.run(src)
    if row < graph.n_features:
        layer, pos, feat = graph.features[row].tolist()
        s = rm.sets[layer]
        return float(mlp_in[0, layer, pos] @ s.W_enc[:, feat] + s.b_enc[feat])
    k = row - graph.logit_start
    return float(final[0, -1] @ rm._targets.vectors[k] + rm._targets.constants[k])


def test_replacement_logits_and_completeness(model_rm):
    model, rm = model_rm
    with torch.no_grad():
        bridge = model(torch.tensor([PROMPT]), return_type="logits")[0].double()
    assert torch.allclose(rm.replacement_logits(), rm.logits, atol=1e-10, rtol=0)
    assert torch.allclose(rm.replacement_logits(), bridge, atol=1e-4, rtol=1e-4)
    assert rm.errors.abs().max() > 1e-2 and rm.n_features > 20
    # the CLT's outputs are the decode formula at the clean codes
    assert set(rm.sets[0].decoders) == {0, 1} and set(rm.sets[1].decoders) == {1}
    graph = attribute(rm, batch_size=64)
    rows = list(range(graph.n_features)) + list(range(graph.logit_start, graph.n_nodes))
    total = graph.adjacency.sum(1) + graph.bias
    assert torch.allclose(total[rows], graph.inputs[rows], atol=1e-10 * graph.inputs.abs().max(), rtol=0)
    assert graph.node_ids()[0].startswith("clt0.f")


def test_clt_edges_equal_brute_force(model_rm):
    _, rm = model_rm
    targets = salient_logits(rm, max_n_logits=3)
    rm._targets = targets
    graph = attribute(rm, targets, batch_size=16)
    t_idx, s_idx, weights = graph.edges()
    layer0 = graph.features[:, 0] == 0
    # edges from layer-0 features: into layer-1 features (through attention and the residual) and into logits
    # (also through the layer-0 -> layer-1 decoders, the cross-layer part)
    picks = []
    for into_logit in (False, True):
        ok = layer0[s_idx.clamp(max=graph.n_features - 1)] & (s_idx < graph.n_features)
        ok &= (t_idx >= graph.logit_start) if into_logit else (t_idx < graph.n_features)
        picks += ok.nonzero().reshape(-1)[:8].tolist()
    assert len(picks) == 16
    full = {}
    for e in picks:
        t, s, w = int(t_idx[e]), int(s_idx[e]), float(weights[e])
        full.setdefault(t, _input_of(rm, graph, t, rm.sources))
        src = Sources(rm.sources.acts.clone(), rm.sources.errors.clone(), rm.sources.embed.clone())
        layer, pos, feat = graph.features[s].tolist()
        match = (rm.active[:, 0] == layer) & (rm.active[:, 1] == pos) & (rm.active[:, 2] == feat)
        src.acts[0, match] = 0
        moved = full[t] - _input_of(rm, graph, t, src)
        assert abs(moved - w) <= 1e-9 * max(1.0, abs(w)), (t, s, moved, w)


def test_cross_layer_decoders_carry_logit_edges(tiny_llama):
    """The same features with the layer-0 -> layer-1 decoders zeroed give other edges into the logits; the
    difference is exactly the cross-layer write read through the frozen later layers."""
    facts = ModelFacts.of(tiny_llama)
    with_cross = ReplacementModel(tiny_llama, torch.tensor(PROMPT), feature_sets_from_clt(_clt(32), facts),
                                  dtype=torch.float64)
    without = ReplacementModel(tiny_llama, torch.tensor(PROMPT), feature_sets_from_clt(_clt(32, cross=0.0), facts),
                               dtype=torch.float64)
    assert torch.equal(with_cross.active, without.active)
    target = salient_logits(with_cross, max_n_logits=1)
    a = attribute(with_cross, target, batch_size=64)
    b = attribute(without, salient_logits(without, max_n_logits=1), batch_size=64)
    n0 = int((a.features[:, 0] == 0).sum())
    diff = (a.adjacency[-1, :n0] - b.adjacency[-1, :n0]).abs().max()
    assert diff > 1e-3


def test_attribute_verb_reads_a_clt_folder(tiny_llama, tmp_path):
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from circuits.dictionaries.clt_io import save_clt
    from workbench.errors import ConfigError

    folder = save_clt(_clt(32, "jumprelu"), tmp_path / "clt")
    result = ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=[str(folder)],
                                                       precision="float64"))
    s = result.summary
    assert s["transcoder_kind"] == "cross_layer_transcoder" and s["transcoder_layers"] == [0, 1]
    assert s["completeness_max_abs_error"] < 1e-9 and 0 <= s["replacement_score"] <= 1
    with pytest.raises(ConfigError, match="clt0.f"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5", transcoder=[str(folder)], target="clt0.f99999@1"))
    other = save_clt(CrossLayerTranscoder.create(3, 32, 8), tmp_path / "other")
    from circuits.dictionaries.saelens_io import DictionaryMismatchError

    with pytest.raises(DictionaryMismatchError, match="3 layers"):
        ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5", transcoder=[str(other)]))


def test_attribute_reads_a_transcoder_set_folder_like_saelens_folders(tiny_llama, tmp_path):
    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    from circuits.dictionaries.clt_io import save_transcoder_set
    from circuits.dictionaries.model import Dictionary
    from circuits.dictionaries.saelens_io import save_dictionary

    tcs = {layer: Dictionary.create("transcoder", 32, 64, activation="topk", k=6, seed=layer,
                                    hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                    hook_out=f"blocks.{layer}.hook_mlp_out") for layer in (0, 1)}
    folders = [str(save_dictionary(tc, tmp_path / f"tc{layer}")) for layer, tc in tcs.items()]
    ct = str(save_transcoder_set(tcs, tmp_path / "set"))
    runs = [ATTRIBUTE.run(tiny_llama, AttributeConfig(prompt="t3 t5 t7 t3 t5", transcoder=t, precision="float64"))
            for t in (folders, [ct])]
    assert runs[1].summary["transcoder_kind"] == "transcoder_set"
    for key in ("replacement_score", "completeness_score", "active_features", "graph_edges"):
        assert runs[0].summary[key] == runs[1].summary[key], key
