"""Transcoder sets in circuit-tracer's layout: files, keys and shapes, circuit-tracer's formulas written out on the
exported tensors (float64) against the workbench's own transcoders, the round trip through the reader, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from circuits.dictionaries.circuit_tracer_io import (
    CircuitTracerSetError,
    export_transcoder_set,
    hf_norm_weights,
    layer_file,
    read_transcoder_set,
)
from circuits.dictionaries.model import Dictionary

D, N, L, K = 8, 24, 3, 3


def _set(kind: str = "transcoder", activation: str = "topk") -> dict[int, Dictionary]:
    out = {}
    for layer in range(L):
        tc = Dictionary.create(kind, D, N, activation=activation, k=K if activation == "topk" else None, seed=layer,
                               hook_in=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out")
        gen = torch.Generator().manual_seed(100 + layer)
        with torch.no_grad():
            tc.b_enc.copy_(torch.randn(N, generator=gen) * 0.1)
            tc.b_dec.copy_(torch.randn(D, generator=gen))
            if tc.W_skip is not None:
                tc.W_skip.copy_(torch.randn(D, D, generator=gen) * 0.1)
        out[layer] = tc.double()
    return out


def _norms() -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {layer: torch.rand(D, generator=gen, dtype=torch.float64) + 0.5 for layer in range(L)}


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder"])
def test_layout_and_circuit_tracer_formulas(tmp_path, kind):
    tcs, g = _set(kind), _norms()
    folder = export_transcoder_set(tcs, tmp_path / "set", scan="test-set", norm_weights=g)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"] + sorted(layer_file(i) for i in range(L))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["scan"] == "test-set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("mlp.hook_in", "mlp.hook_out")
    assert (config["activation_function"], config["k"]) == ("topk", K)
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for layer, tc in tcs.items():
        t = load_file(str(folder / layer_file(layer)))
        want = {"W_enc": (N, D), "b_enc": (N,), "W_dec": (N, D), "b_dec": (D,)} | (
            {"W_skip": (D, D)} if kind == "skip_transcoder" else {})
        assert {k: tuple(v.shape) for k, v in t.items()} == want
        assert all(v.dtype == torch.float32 for v in t.values())
        t = {k: v.double() for k, v in t.items()}
        x_ct = x * g[layer]  # circuit-tracer reads the norm's output with its weight
        pre_ct = F.linear(x_ct, t["W_enc"], t["b_enc"])  # SingleLayerTranscoder.encode
        torch.testing.assert_close(pre_ct, x @ tc.W_enc.detach() + tc.b_enc.detach(), rtol=1e-6, atol=1e-6)
        out_ct = _topk_relu(pre_ct, K) @ t["W_dec"] + t["b_dec"]  # SingleLayerTranscoder.decode
        if "W_skip" in t:
            out_ct = out_ct + x_ct @ t["W_skip"].T
        torch.testing.assert_close(out_ct, tc(x)[0].detach(), rtol=1e-5, atol=1e-5)


def test_round_trip_through_the_reader(tmp_path):
    tcs, g = _set("skip_transcoder"), _norms()
    config, back = read_transcoder_set(export_transcoder_set(tcs, tmp_path / "set", scan="s", norm_weights=g))
    assert config["model_kind"] == "transcoder_set" and sorted(back) == list(range(L))
    x = torch.randn(6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for layer, tc in tcs.items():
        b = back[layer].double()
        assert (b.kind, b.activation, b.k, b.d_sae) == ("skip_transcoder", "topk", K, N)
        assert (b.hook_in, b.hook_out) == (tc.hook_in, tc.hook_out)
        torch.testing.assert_close(b.encode(x * g[layer]), tc.encode(x).detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b(x * g[layer])[0], tc(x)[0].detach(), rtol=1e-5, atol=1e-5)
    relu = _set(activation="relu")
    config, back = read_transcoder_set(export_transcoder_set(relu, tmp_path / "relu", scan="r"))
    assert "k" not in config and back[0].activation == "relu"
    torch.testing.assert_close(back[1].double().encode(x), relu[1].encode(x).detach(), rtol=1e-5, atol=1e-5)


def test_bad_sets_and_folders(tmp_path):
    tcs = _set()
    with pytest.raises(CircuitTracerSetError, match="every layer"):
        export_transcoder_set({0: tcs[0], 2: tcs[2]}, tmp_path / "gap", scan="s")
    sae = {0: Dictionary.create("sae", D, N, hook_in="blocks.0.hook_resid_pre")}
    with pytest.raises(CircuitTracerSetError, match="per-layer transcoders"):
        export_transcoder_set(sae, tmp_path / "sae", scan="s")
    g = _norms()
    g[1][2] = 0.0
    with pytest.raises(CircuitTracerSetError, match="no zero entry"):
        export_transcoder_set(tcs, tmp_path / "zero", scan="s", norm_weights=g)
    assert not (tmp_path / "zero").exists()
    folder = export_transcoder_set(tcs, tmp_path / "ok", scan="s")
    t = load_file(str(folder / layer_file(1)))
    del t["b_dec"]
    save_file(t, str(folder / layer_file(1)))
    with pytest.raises(CircuitTracerSetError, match="missing"):
        read_transcoder_set(folder)
    (folder / layer_file(2)).unlink()
    (folder / layer_file(1)).unlink()
    (folder / "layer_5.safetensors").write_bytes(b"")
    with pytest.raises(CircuitTracerSetError, match="expected layer_0"):
        read_transcoder_set(folder)
    with pytest.raises(CircuitTracerSetError, match="config.yaml"):
        read_transcoder_set(tmp_path / "nowhere")


def test_norm_weights_from_a_hf_folder(tmp_path):
    w = {f"model.layers.{i}.post_attention_layernorm.weight": torch.full((D,), float(i + 1)) for i in range(L)}
    save_file(w | {"model.norm.weight": torch.ones(D)}, str(tmp_path / "model.safetensors"))
    got = hf_norm_weights(tmp_path, L)
    assert sorted(got) == list(range(L)) and all(bool((got[i] == i + 1).all()) for i in range(L))
    with pytest.raises(CircuitTracerSetError, match="layers"):
        hf_norm_weights(tmp_path, L + 1)
