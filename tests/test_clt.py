"""Cross-layer transcoders: shapes and the decode formula against explicit loops, a CLT with zero cross-layer
decoders equals its per-layer transcoders, the JumpReLU threshold pseudo-gradient against finite differences of
the kernel-smoothed step, training lowers FVU and resumes bit-exactly, splicing identities of the evaluation,
circuit-tracer files (exact keys and shapes, bit-equal round trips), refusals, and the verb through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuits.dictionaries.buffer import random_source
from circuits.dictionaries.clt import CrossLayerTranscoder, jumprelu
from circuits.dictionaries.clt_eval import evaluate_clt
from circuits.dictionaries.clt_io import (
    check_clt_fits,
    load_circuit_tracer,
    load_clt,
    load_transcoder_set,
    save_clt,
    save_transcoder_set,
)
from circuits.dictionaries.clt_train import CltSpec, train_clt
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.saelens_io import DictionaryFileError, DictionaryMismatchError
from circuits.dictionaries.train import TrainDictConfig


def _random_clt(L: int = 3, d: int = 8, n: int = 12, activation: str = "relu", seed: int = 0,
                dtype=torch.float64) -> CrossLayerTranscoder:
    k = 4 if activation == "topk" else None
    clt = CrossLayerTranscoder.create(L, d, n, activation=activation, k=k, seed=seed).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        clt.b_enc.copy_(0.1 * torch.randn(L, n, generator=gen))
        clt.b_dec.copy_(0.2 * torch.randn(L, d, generator=gen))
        for W in clt.W_dec:
            W.add_(0.3 * torch.randn(W.shape, generator=gen, dtype=dtype))
        if clt.log_threshold is not None:
            clt.log_threshold.copy_(torch.log(0.05 + 0.2 * torch.rand(L, n, generator=gen)))
    return clt


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_forward_shapes_and_decode_formula(activation):
    clt = _random_clt(activation=activation)
    x = torch.randn(5, 7, 3, 8, dtype=torch.float64)
    out, acts = clt(x)
    assert out.shape == (5, 7, 3, 8) and acts.shape == (5, 7, 3, 12)
    # y_m = sum_{l <= m} a_l @ W_dec[l -> m] + b_dec[m], written as plain loops over features
    for m in range(3):
        want = clt.b_dec[m].expand(5, 7, 8).clone()
        for layer in range(m + 1):
            for i in range(12):
                want += acts[..., layer, i, None] * clt.W_dec[layer][i, m - layer]
        assert torch.allclose(out[..., m, :], want, atol=1e-12)
    pre = torch.stack([x[..., layer, :] @ clt.W_enc[layer] + clt.b_enc[layer] for layer in range(3)], -2)
    if activation == "topk":
        assert bool(((acts > 0).sum(-1) <= 4).all()) and bool((acts > 0).any())
    elif activation == "relu":
        assert torch.equal(acts, pre.clamp_min(0))
    else:
        assert torch.equal(acts, torch.where(pre > clt.threshold, pre, torch.zeros_like(pre)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 8\]"):
        clt(torch.zeros(2, 2, 8))


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_zero_cross_layer_decoders_equal_the_per_layer_transcoders(activation):
    d, n = 8, 12
    tcs = {}
    for layer in range(3):
        tc = Dictionary.create("transcoder", d, n, activation=activation, k=4 if activation == "topk" else None,
                               hook_in=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out",
                               seed=layer).double()
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1)
            tc.b_dec.normal_(0, 0.2)
        tcs[layer] = tc
    clt = CrossLayerTranscoder.from_transcoders(tcs)
    assert all(float(W.detach()[:, 1:].abs().sum()) == 0 for W in clt.W_dec)
    x = torch.randn(6, 3, d, dtype=torch.float64)
    out, acts = clt(x)
    for layer, tc in tcs.items():
        y, z = tc(x[:, layer])
        assert torch.allclose(out[:, layer], y, atol=1e-12) and torch.allclose(acts[:, layer], z, atol=1e-12)


def test_jumprelu_threshold_gradient_is_the_documented_pseudo_gradient():
    gen = torch.Generator().manual_seed(0)
    eps = 0.3
    pre = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    theta = (0.2 + torch.rand(6, generator=gen, dtype=torch.float64)).requires_grad_()
    g = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    p = pre.clone().requires_grad_()
    (jumprelu(p, theta, eps) * g).sum().backward()
    assert torch.equal(p.grad, g * (pre > theta.detach()))
    # -(theta / eps) K((pre - theta) / eps) is theta times the exact derivative of the kernel-smoothed step
    # S(theta) = sum_b g_b * clamp((pre_b - theta) / eps + 1/2, 0, 1): checked by central differences
    h = 1e-7

    def smoothed(t: torch.Tensor) -> torch.Tensor:
        return (g * ((pre - t) / eps + 0.5).clamp(0, 1)).sum(0)

    th = theta.detach()
    fd = (smoothed(th + h) - smoothed(th - h)) / (2 * h)
    assert torch.isfinite(theta.grad).all() and float(theta.grad.abs().sum()) > 0
    assert torch.allclose(theta.grad, th * fd, rtol=1e-6, atol=1e-6)
    # a CLT learns log thresholds: the chain rule multiplies by theta once more
    clt = _random_clt(activation="jumprelu")
    x = torch.randn(50, 3, 8, dtype=torch.float64)
    clt.encode(x).sum().backward()
    pre_c = clt.pre_activation(x).detach()
    th_c = clt.threshold.detach()
    want = (-(th_c / clt.bandwidth) * ((pre_c - th_c).abs() < clt.bandwidth / 2)).sum(0) * th_c
    assert torch.allclose(clt.log_threshold.grad, want, atol=1e-12)


def _fvu(model, clt, tokens) -> torch.Tensor:
    """FVU per layer of ``clt`` on ``tokens``, from the clean run's activations (float64)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=clt.hooks())
        x = torch.stack([cache[clt.hook_in(i)].reshape(-1, clt.d_model) for i in range(clt.n_layers)], 1)
        y = torch.stack([cache[clt.hook_out(i)].reshape(-1, clt.d_model) for i in range(clt.n_layers)], 1).double()
        out = clt(x)[0].double()
    return (y - out).pow(2).sum((0, 2)) / (y - y.mean(0)).pow(2).sum((0, 2))


@pytest.mark.slow
def test_training_lowers_fvu_and_resumes_bit_exactly(tiny_gpt2, tmp_path):
    source = random_source(64, seq_len=16, batch_size=8, n_batches=40, bos_id=64)
    cfg = TrainDictConfig(tokens=128 * 40, batch_size=128, lr=3e-3, warmup_steps=2, block_batches=8,
                          checkpoint_every=7, checkpoint_seconds=None)
    spec = CltSpec(activation="topk", k=4, expansion=2.0)
    start = train_clt(tiny_gpt2, source, spec, cfg, progress=False, stop_after=0).dictionaries["clt"]
    full = train_clt(tiny_gpt2, source, spec, cfg, progress=False)
    clt = full.dictionaries["clt"]
    held = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(9))
    before, after = _fvu(tiny_gpt2, start, held), _fvu(tiny_gpt2, clt, held)
    assert bool((after < 0.8 * before).all()), (before, after)
    assert full.steps == 40 and full.history[-1]["clt"]["l0"] <= 2 * 4 + 1e-9
    # the same recipe with the cross-layer decoders held at zero: a per-layer transcoder set
    short = TrainDictConfig(tokens=128 * 4, batch_size=128, lr=3e-3, warmup_steps=1, block_batches=8)
    plt = train_clt(tiny_gpt2, source, CltSpec(activation="topk", k=4, expansion=2.0, cross_layer=False), short,
                    progress=False).dictionaries["clt"]
    assert float(plt.W_dec[0][:, 1:].abs().max()) == 0 and float(plt.W_dec[0][:, 0].abs().max()) > 0
    train_clt(tiny_gpt2, source, spec, cfg, progress=False, workdir=tmp_path, stop_after=17)
    resumed = train_clt(tiny_gpt2, source, spec, cfg, progress=False, workdir=tmp_path).dictionaries["clt"]
    for (name, a), (_, b) in zip(clt.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_splicing_identities(tiny_llama):
    """A CLT that writes only b_dec = 0 splices in the zero ablation (CE recovered 0 against it); one writing the
    mean splices in the mean ablation; FVU per layer is 1 for the mean (the variance's own definition)."""
    source = random_source(64, seq_len=12, batch_size=4, n_batches=2, bos_id=64)
    clt = CrossLayerTranscoder(2, 32, 8)
    zero = evaluate_clt(tiny_llama, clt, source, progress=False)
    assert zero.metrics["ce_spliced"] == pytest.approx(zero.metrics["ce_zero_ablated"], abs=1e-9)
    assert zero.metrics["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-9)
    assert zero.layers[0]["l0"] == 0 and any("all dead" in w for w in zero.warnings)
    with torch.no_grad():
        tokens = torch.cat(list(source()))
        _, cache = tiny_llama.run_with_cache(tokens, names_filter=clt.hooks())
        for i in range(2):
            clt.b_dec[i].copy_(cache[clt.hook_out(i)].reshape(-1, 32).double().mean(0).float())
    mean = evaluate_clt(tiny_llama, clt, source, progress=False)
    assert mean.metrics["ce_spliced"] == pytest.approx(mean.metrics["ce_mean_ablated"], abs=1e-5)
    assert [r["fvu"] for r in mean.layers] == pytest.approx([1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_circuit_tracer_clt_files_round_trip(tmp_path, activation):
    clt = _random_clt(activation=activation, dtype=torch.float32)
    save_clt(clt, tmp_path / "clt", model_name="toy")
    files = sorted(p.name for p in (tmp_path / "clt").iterdir())
    assert files == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_dec_2.safetensors", "W_enc_0.safetensors",
                     "W_enc_1.safetensors", "W_enc_2.safetensors", "config.yaml"]
    import yaml

    cfg = yaml.safe_load((tmp_path / "clt" / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    for i in range(3):
        enc = load_file(str(tmp_path / "clt" / f"W_enc_{i}.safetensors"))
        want = {f"W_enc_{i}": (12, 8), f"b_enc_{i}": (12,), f"b_dec_{i}": (8,)}
        if activation == "jumprelu":
            want[f"threshold_{i}"] = (12,)
        assert {k: tuple(v.shape) for k, v in enc.items()} == want
        dec = load_file(str(tmp_path / "clt" / f"W_dec_{i}.safetensors"))
        assert {k: tuple(v.shape) for k, v in dec.items()} == {f"W_dec_{i}": (12, 3 - i, 8)}
        assert torch.equal(enc[f"W_enc_{i}"], clt.W_enc[i].t())
    back = load_circuit_tracer(tmp_path / "clt")
    assert isinstance(back, CrossLayerTranscoder) and back.config() == clt.config() and back.model_name == "toy"
    for (name, a), (_, b) in zip(clt.named_parameters(), back.named_parameters(), strict=True):
        if name == "log_threshold":  # stored as the threshold itself: exp then log
            assert torch.allclose(a, b, rtol=0, atol=1e-6)
        else:
            assert torch.equal(a, b), name


def test_transcoder_set_export_round_trip(tmp_path):
    tcs = {layer: Dictionary.create(kind, 8, 12, activation="topk", k=3, seed=layer,
                                    hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                    hook_out=f"blocks.{layer}.hook_mlp_out")
           for layer, kind in enumerate(["transcoder", "skip_transcoder"])}
    with torch.no_grad():
        tcs[1].W_skip.normal_()
    save_transcoder_set(tcs, tmp_path / "set", model_name="toy")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["config.yaml", "layer_0.safetensors",
                                                                     "layer_1.safetensors"]
    t1 = load_file(str(tmp_path / "set" / "layer_1.safetensors"))
    assert {k: tuple(v.shape) for k, v in t1.items()} == {"W_enc": (12, 8), "W_dec": (12, 8), "b_enc": (12,),
                                                          "b_dec": (8,), "W_skip": (8, 8), "k": ()}
    assert torch.equal(t1["W_skip"], tcs[1].W_skip.t()) and int(t1["k"]) == 3
    back = load_transcoder_set(tmp_path / "set")
    for layer, tc in tcs.items():
        assert back[layer].config() == tc.config()
        for (name, a), (_, b) in zip(tc.named_parameters(), back[layer].named_parameters(), strict=True):
            assert torch.equal(a, b), name


def test_loading_refuses_other_models_hooks_and_corrupt_folders(tmp_path, tiny_gpt2):
    clt = _random_clt(dtype=torch.float32)
    folder = save_clt(clt, tmp_path / "clt")
    with pytest.raises(DictionaryMismatchError, match="3 layers of width 8.*2 layers of width 32"):
        check_clt_fits(load_clt(folder), tiny_gpt2)
    cfg_path = folder / "config.yaml"
    good = cfg_path.read_text()
    cfg_path.write_text(good.replace("hook_mlp_out", "hook_resid_post"))
    with pytest.raises(DictionaryMismatchError, match="hook_resid_post.*accepted"):
        load_clt(folder)
    cfg_path.write_text("model_kind: [unclosed")
    with pytest.raises(DictionaryFileError, match="invalid YAML"):
        load_clt(folder)
    cfg_path.write_text("- a list")
    with pytest.raises(DictionaryFileError, match="not a YAML mapping"):
        load_clt(folder)
    cfg_path.write_text(good)
    enc = load_file(str(folder / "W_enc_1.safetensors"))
    save_file({k: v for k, v in enc.items() if k != "b_dec_1"}, str(folder / "W_enc_1.safetensors"))
    with pytest.raises(DictionaryFileError, match=r"W_enc_1.safetensors: missing tensors \['b_dec_1'\]"):
        load_clt(folder)
    save_file(enc, str(folder / "W_enc_1.safetensors"))
    save_file({"W_dec_2": torch.zeros(12, 2, 8)}, str(folder / "W_dec_2.safetensors"))
    with pytest.raises(DictionaryFileError, match=r"W_dec_2 has shape \(12, 2, 8\), expected \(12, 1, 8\)"):
        load_clt(folder)
    (folder / "config.yaml").unlink()
    with pytest.raises(DictionaryFileError, match="config.yaml: missing"):
        load_clt(folder)


def test_train_clt_verb_json(tiny_gpt2, tmp_path, capsys, monkeypatch):
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["train-clt", "--model", tiny_gpt2.workbench_spec, "--device", "cpu", "--corpus", "news", "--seq-len", "16",
            "--tokens", "2048", "--batch-size", "128", "--eval-tokens", "64", "--k", "4", "--expansion", "2",
            "--json", "--quiet"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    s = out["summary"]
    assert len(s["fvu"]) == len(s["l0"]) == len(s["dead_fraction"]) == 2
    assert all(0 < v <= 4 + 1e-9 for v in s["l0"])
    assert s["ce_spliced"] > 0 and "ce_recovered_zero" in s
    assert any("optimisation steps" in w for w in s["warnings"])  # 16 steps: the budget warning is loud
    clt = load_clt(f"{out['run']['path']}/clt")
    assert clt.n_layers == 2 and clt.k == 4 and clt.model_name == tiny_gpt2.workbench_spec


@pytest.mark.slow
def test_stored_clt_run_and_the_dictionaries_page(tiny_llama, tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from circuits.dictionaries.clt_analysis import TRAIN_CLT, TrainCltConfig, clt_result, run_clt
    from workbench.store import Store

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    clt = _random_clt(L=2, d=32, n=16, activation="topk", dtype=torch.float32)
    ev = evaluate_clt(tiny_llama, clt, random_source(64, seq_len=12, batch_size=4, n_batches=2, bos_id=64),
                      progress=False)
    info = TRAIN_CLT.save(Store(tmp_path / "runs"), clt_result(tiny_llama, clt, ev), "toy/tiny", TrainCltConfig())
    run = Store(tmp_path / "runs").load("clt", info.run_id)
    back = run_clt(run)
    assert all(torch.equal(p, q) for p, q in zip(clt.parameters(), back.parameters(), strict=True))
    norms = run.tensors("decoder_norms")["source_target"]
    assert norms.shape == (2, 2) and float(norms[1, 0]) == 0 and float(norms[0, 1]) > 0
    assert set(TRAIN_CLT.figures(run)) == {"layers", "decoder_norms", "frequencies"}
    page = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "4_Dictionaries.py")
    at = AppTest.from_file(page, default_timeout=60).run()
    assert not at.exception
    assert any(m.label == "CE, every MLP replaced" for m in at.metric)
    assert any("No dictionary runs" in i.value for i in at.info)


def test_verb_activation_choices_mirror_the_library():
    from circuits.dictionaries.clt import CLT_ACTIVATIONS
    from circuits.dictionaries.clt_analysis import TrainCltConfig
    from workbench.analysis import describe_fields

    assert next(i.choices for i in describe_fields(TrainCltConfig) if i.name == "activation") == CLT_ACTIVATIONS


def test_spliced_run_reads_the_spliced_inputs(tiny_llama):
    """Every MLP replaced at once: layer 1's codes come from layer 1's MLP input of the run where MLP 0 is already
    replaced. Built here in two plain passes (the first gives that input, the second writes both outputs)."""
    from circuits.dictionaries.clt_eval import spliced_logits

    clt = _random_clt(L=2, d=32, n=16, activation="topk", dtype=torch.float32)
    tokens = torch.tensor([PROMPT_TOKENS])
    with torch.no_grad():
        _, clean = tiny_llama.run_with_cache(tokens, names_filter=[clt.hook_in(0)])
        a0 = clt.encode_layer(clean[clt.hook_in(0)], 0)
        out0 = clt.decode_layer([a0], 0)
        first = [(clt.hook_out(0), lambda act, hook=None: out0)]
        with tiny_llama.hooks(fwd_hooks=first):
            _, mid = tiny_llama.run_with_cache(tokens, names_filter=[clt.hook_in(1)])
        a1 = clt.encode_layer(mid[clt.hook_in(1)], 1)
        out1 = clt.decode_layer([a0, a1], 1)
        want = tiny_llama.run_with_hooks(tokens, fwd_hooks=first + [(clt.hook_out(1), lambda act, hook=None: out1)],
                                         return_type="logits")
        got = spliced_logits(tiny_llama, clt, tokens)
        clean_x1 = tiny_llama.run_with_cache(tokens, names_filter=[clt.hook_in(1)])[1][clt.hook_in(1)]
    assert not torch.allclose(mid[clt.hook_in(1)], clean_x1, atol=1e-3)  # splicing MLP 0 moved layer 1's input
    assert torch.allclose(got, want, atol=1e-5)


PROMPT_TOKENS = [64, 3, 5, 7, 9, 11, 3, 5, 7]
