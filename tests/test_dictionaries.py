"""Dictionaries: model paths, SAELens-format files, evaluation metrics and feature views against direct computations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from circuits.dictionaries import Dictionary, DictionaryConfigError
from circuits.dictionaries.buffer import random_source
from circuits.dictionaries.evaluate import evaluate_dictionaries, next_token_loss
from circuits.dictionaries.features import de_embeddings, logit_effects, top_contexts
from circuits.dictionaries.fused import relu_code
from circuits.dictionaries.saelens_io import (
    DictionaryFileError,
    DictionaryMismatchError,
    check_fits,
    load_dictionary,
    save_dictionary,
)

COMBOS = [(k, a) for k in ("sae", "transcoder", "skip_transcoder") for a in ("relu", "topk")]


def make(kind: str, act: str, d_in: int = 12, d_sae: int = 40, d_out: int = 9, seed: int = 0) -> Dictionary:
    d = Dictionary.create(kind, d_in, d_sae, activation=act, k=5 if act == "topk" else None, hook_in="blocks.0.hook_in",
                          hook_out=None if kind == "sae" else "blocks.0.hook_mlp_out",
                          d_out=None if kind == "sae" else d_out, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return d


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparse_topk_path_matches_dense_in_value_and_gradient(kind):
    d = make(kind, "topk").double()
    x = torch.randn(7, 12, dtype=torch.float64)
    out_dense, z = d(x)
    assert ((z > 0).sum(-1) <= 5).all()
    loss_dense = (out_dense.sin()).sum()
    grads_dense = torch.autograd.grad(loss_dense, list(d.parameters()))
    vals, idx = d.encode_sparse(x)
    out_sparse = d.decode_sparse(vals, idx, x)
    torch.testing.assert_close(out_sparse, out_dense, rtol=0, atol=1e-12)
    grads_sparse = torch.autograd.grad(out_sparse.sin().sum(), list(d.parameters()))
    for g_s, g_d in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(g_s, g_d, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_fused_relu_step_matches_autograd_of_the_formula(kind):
    d = make(kind, "relu").double()
    x = torch.randn(9, 12, dtype=torch.float64)
    y = torch.randn(9, d.d_out, dtype=torch.float64)
    l1 = 0.3

    def plain():  # the training loss written out, differentiated by autograd
        z = d.encode(x)
        penalty = (z * d.W_dec.norm(dim=1)).sum(-1).mean()
        return (d.decode(z, x) - y).pow(2).sum(-1).mean() + l1 * penalty, z

    def fused():
        recon, penalty, z_sum, z = relu_code(x, d.b_dec if d.apply_b_dec_to_input else None, d.W_enc, d.b_enc, d.W_dec)
        return (d._add_skip(recon + d.b_dec, x) - y).pow(2).sum(-1).mean() + l1 * penalty, z, z_sum

    params = list(d.parameters())
    loss_p, z_p = plain()
    loss_f, z_f, z_sum = fused()
    assert 0 < int((z_f > 0).sum()) < z_f.numel()  # the ReLU mask matters
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-12, atol=0)
    torch.testing.assert_close(z_f, z_p, rtol=0, atol=1e-14)
    torch.testing.assert_close(z_sum, z_p.sum(0), rtol=1e-12, atol=0)
    for g_f, g_p in zip(torch.autograd.grad(loss_f, params), torch.autograd.grad(loss_p, params), strict=True):
        torch.testing.assert_close(g_f, g_p, rtol=1e-10, atol=1e-12)


def test_encode_decode_follow_the_formulas():
    d = make("sae", "relu").double()
    x = torch.randn(4, 12, dtype=torch.float64)
    z = torch.relu((x - d.b_dec) @ d.W_enc + d.b_enc)
    torch.testing.assert_close(d.encode(x), z)
    torch.testing.assert_close(d.decode(z), z @ d.W_dec + d.b_dec)
    t = make("skip_transcoder", "relu").double()
    zt = torch.relu(x @ t.W_enc + t.b_enc)
    torch.testing.assert_close(t(x)[0], zt @ t.W_dec + x @ t.W_skip + t.b_dec)
    with pytest.raises(ValueError, match="needs the input x"):
        t.decode(zt)


def test_normalize_decoder_keeps_the_relu_function():
    d = make("transcoder", "relu").double()
    x = torch.randn(6, 12, dtype=torch.float64)
    before = d(x)[0]
    d.normalize_decoder()
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(40, dtype=torch.float64))
    torch.testing.assert_close(d(x)[0], before)


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(DictionaryConfigError, match="accepted: sae, transcoder, skip_transcoder"):
        Dictionary.create("crosscoder", 4, 8, hook_in="a")
    with pytest.raises(DictionaryConfigError, match="TopK needs"):
        Dictionary.create("sae", 4, 8, activation="topk", k=9, hook_in="a")
    with pytest.raises(DictionaryConfigError, match="needs hook_out"):
        Dictionary.create("transcoder", 4, 8, hook_in="a")
    with pytest.raises(ValueError, match="d_in 12"):
        make("sae", "relu").encode(torch.zeros(2, 5))


@pytest.mark.parametrize("kind,act", COMBOS)
def test_files_reload_bit_exactly(tmp_path, kind, act):
    d = make(kind, act)
    save_dictionary(d, tmp_path / "d", model_name="toy")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == d.hook_in and cfg["d_sae"] == 40
    back = load_dictionary(tmp_path / "d")
    assert back.config() == d.config() and back.model_name == "toy"
    for (n, p), (m, q) in zip(d.named_parameters(), back.named_parameters(), strict=True):
        assert n == m and torch.equal(p, q)
    x = torch.randn(3, 12)
    assert torch.equal(back(x)[0], d(x)[0])


def test_skip_weights_are_stored_as_saelens_stores_them(tmp_path):
    from safetensors.torch import load_file

    d = make("skip_transcoder", "relu")
    save_dictionary(d, tmp_path / "s")
    on_disk = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert set(on_disk) == {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"}
    assert torch.equal(on_disk["W_skip"], d.W_skip.detach().t())  # SAELens: [d_out, d_in], applied as x @ W_skip.T


def _hand_made(folder, cfg, tensors):
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def test_hand_made_saelens_files_load(tmp_path):
    gen = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(8, 20, generator=gen), "b_enc": torch.randn(20, generator=gen),
         "W_dec": torch.randn(20, 8, generator=gen), "b_dec": torch.randn(8, generator=gen)}
    # SAELens 6 layout, standard (ReLU) SAE
    v6 = {"architecture": "standard", "d_in": 8, "d_sae": 20, "dtype": "float32", "device": "cpu",
          "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
          "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "hook_layer": 3,
                       "sae_lens_version": "6.5.0"}}
    _hand_made(tmp_path / "v6", v6, t)
    d = load_dictionary(tmp_path / "v6")
    x = torch.randn(5, 8, generator=gen)
    want = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    torch.testing.assert_close(d(x)[0], want)
    assert (d.kind, d.activation, d.hook_in, d.model_name) == ("sae", "relu", "blocks.3.hook_resid_pre", "gpt2")
    # pre-6 layout: hook_name at the top level, TopK as activation_fn_str + activation_fn_kwargs
    old = {"d_in": 8, "d_sae": 20, "hook_name": "blocks.1.hook_resid_post", "hook_layer": 1, "model_name": "gpt2",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": False,
           "dtype": "float32", "device": "cpu", "context_size": 128}
    _hand_made(tmp_path / "old", old, t)
    d = load_dictionary(tmp_path / "old")
    assert (d.activation, d.k, d.apply_b_dec_to_input) == ("topk", 3, False)
    pre = x @ t["W_enc"] + t["b_enc"]
    top = pre.topk(3, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(d(x)[0], z @ t["W_dec"] + t["b_dec"])


def test_broken_files_name_what_is_wrong(tmp_path):
    t = {"W_enc": torch.zeros(8, 20), "b_enc": torch.zeros(20), "W_dec": torch.zeros(20, 8), "b_dec": torch.zeros(8)}
    base = {"d_in": 8, "d_sae": 20, "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    _hand_made(tmp_path / "arch", {**base, "architecture": "gated"}, t)
    with pytest.raises(DictionaryFileError, match="architecture 'gated' is not supported"):
        load_dictionary(tmp_path / "arch")
    _hand_made(tmp_path / "shape", {**base, "d_sae": 21}, t)
    with pytest.raises(DictionaryFileError, match="W_enc has shape"):
        load_dictionary(tmp_path / "shape")
    _hand_made(tmp_path / "miss", base, {k: v for k, v in t.items() if k != "b_enc"})
    with pytest.raises(DictionaryFileError, match=r"missing weights \['b_enc'\]"):
        load_dictionary(tmp_path / "miss")
    with pytest.raises(DictionaryFileError, match="cfg.json: missing"):
        load_dictionary(tmp_path / "nowhere")


def test_check_fits_rejects_wrong_width_and_hook(tiny_llama):
    good = Dictionary.create("transcoder", 32, 64, hook_in="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out")
    check_fits(good, tiny_llama)
    wide = Dictionary.create("sae", 576, 64, hook_in="blocks.1.hook_resid_post")
    with pytest.raises(DictionaryMismatchError, match="d_in is 576 but the model's blocks.1.hook_resid_post is 32"):
        check_fits(wide, tiny_llama)
    with pytest.raises(DictionaryMismatchError, match="do not exist"):
        check_fits(Dictionary.create("sae", 32, 64, hook_in="blocks.7.hook_resid_post"), tiny_llama)


def identity_sae(hook: str, d: int) -> Dictionary:
    """relu(x) - relu(-x) = x: a dictionary that reconstructs its input exactly."""
    s = Dictionary.create("sae", d, 2 * d, hook_in=hook)
    with torch.no_grad():
        eye = torch.eye(d)
        s.W_enc.copy_(torch.cat([eye, -eye], 1))
        s.W_dec.copy_(torch.cat([eye, -eye], 0))
    return s


def test_evaluation_metrics_against_direct_computation(tiny_llama):
    hook = "blocks.1.hook_mlp_out"
    src = random_source(65, seq_len=16, batch_size=8, n_batches=2, seed=5, bos_id=64)
    exact = identity_sae(hook, 32)
    noisy = make("sae", "relu", d_in=32, seed=4)
    noisy.hook_in = noisy.hook_out = hook
    res = evaluate_dictionaries(tiny_llama, {"exact": exact, "noisy": noisy}, src, progress=False)
    m = res.metrics["exact"]
    assert m["fvu"] < 1e-10 and abs(m["ce_spliced"] - m["ce_clean"]) < 1e-5 and m["kl"] < 1e-8
    assert abs(m["ce_recovered_zero"] - 1) < 1e-3
    # brute force over the same batches
    xs, losses, zero, spliced = [], [], [], []
    for tokens in src():
        logits, cache = tiny_llama.run_with_cache(tokens, names_filter=[hook])
        xs.append(cache[hook].reshape(-1, 32).double())
        losses.append(next_token_loss(logits, tokens, torch.ones_like(tokens)))
        z = tiny_llama.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook=None: torch.zeros_like(a))])
        zero.append(next_token_loss(z, tokens, torch.ones_like(tokens)))
        with torch.no_grad():  # the whole forward with the MLP output replaced by the noisy reconstruction
            s = tiny_llama.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook=None: noisy(a)[0])])
        spliced.append(next_token_loss(s, tokens, torch.ones_like(tokens)))
    x = torch.cat(xs)
    with torch.no_grad():
        out, z = noisy.double()(x)
    fvu = float((x - out).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    n = sum(c for _, c in losses)
    assert res.metrics["noisy"]["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert m["l0"] == pytest.approx(float((x != 0).sum(-1).double().mean()), rel=1e-9)
    assert res.metrics["noisy"]["l0"] == pytest.approx(float((z > 0).sum(-1).double().mean()), rel=1e-9)
    assert m["ce_clean"] == pytest.approx(float(sum(s for s, _ in losses)) / n, rel=1e-9)
    assert m["ce_zero_ablated"] == pytest.approx(float(sum(s for s, _ in zero)) / n, rel=1e-6)
    assert res.metrics["noisy"]["ce_spliced"] == pytest.approx(float(sum(s for s, _ in spliced)) / n, rel=1e-6)
    torch.testing.assert_close(res.frequencies["noisy"].double(), (z > 0).double().mean(0), rtol=0, atol=1e-6)


def test_top_contexts_and_logit_views_against_brute_force(tiny_llama):
    d = make("sae", "relu", d_in=32, d_sae=24, seed=7)
    d.hook_in = d.hook_out = "blocks.0.hook_resid_post"
    src = random_source(65, seq_len=12, batch_size=4, n_batches=3, seed=2, bos_id=64)
    ctx = top_contexts(tiny_llama, d, src, k=3, before=4, after=2, progress=False)
    toks = torch.cat(list(src()))
    _, cache = tiny_llama.run_with_cache(toks, names_filter=[d.hook_in])
    z = d.encode(cache[d.hook_in]).reshape(-1, 24)
    top = z.topk(3, dim=0)
    torch.testing.assert_close(ctx.values, top.values.clamp_min(0), rtol=1e-5, atol=1e-6)
    flat = toks.reshape(-1)
    for lat in range(24):
        if ctx.values[0, lat] > 0:
            assert ctx.windows[0, lat, 4] == flat[top.indices[0, lat]]
    assert int(ctx.hist.sum()) == int((z > 0).sum())
    tv, ti, bv, bi = logit_effects(tiny_llama, d, k=4)
    eff = d.W_dec.detach() @ tiny_llama.W_U.detach()
    torch.testing.assert_close(tv, eff.topk(4, -1).values)
    assert (bv <= tv[:, -1:]).all()
    dv, _ = de_embeddings(tiny_llama, d, k=4)
    torch.testing.assert_close(dv, (tiny_llama.W_E.detach() @ d.W_enc.detach()).t().topk(4, -1).values)


def test_cli_eval_dict_stores_a_run_and_rejects_misfits(tiny_llama, tmp_path, monkeypatch, capsys):
    from workbench.store import Store
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    spec = tiny_llama.workbench_spec
    good = Dictionary.create("transcoder", 32, 48, activation="topk", k=4, hook_in="blocks.0.ln2.hook_normalized",
                             hook_out="blocks.0.hook_mlp_out")
    save_dictionary(good, tmp_path / "good")
    code = main(["eval-dict", str(tmp_path / "good"), "--model", spec, "--device", "cpu", "--json", "--seq-len", "16",
                 "--eval-tokens", "64"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = Store().load("dictionary", payload["run"]["run_id"])
    (label,) = [k for k in payload["summary"] if k not in ("eval_tokens", "warnings")]
    assert run.table("metrics")["l0"].iloc[0] == pytest.approx(payload["summary"][label]["l0"])
    save_dictionary(Dictionary.create("sae", 40, 48, hook_in="blocks.0.hook_resid_post"), tmp_path / "wide")
    assert main(["eval-dict", str(tmp_path / "wide"), "--model", spec, "--device", "cpu"]) == 2
    assert "d_in is 40 but the model's blocks.0.hook_resid_post is 32" in capsys.readouterr().err
    assert main(["train-dict", "--model", spec, "--layer", "0", "--activation", "topk"]) == 2
    assert "needs --k" in capsys.readouterr().err
    code = main(["train-dict", "--model", spec, "--device", "cpu", "--layer", "1", "--kind", "transcoder",
                 "--activation", "topk", "--k", "2", "6", "--expansion", "2", "--tokens", "1024", "--batch-size", "128",
                 "--warmup", "2", "--seq-len", "16", "--eval-tokens", "64", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = Store().load("dictionary", payload["run"]["run_id"]).table("metrics")
    assert list(metrics["k"]) == [2, 6] and set(metrics["hook_out"]) == {"blocks.1.hook_mlp_out"}
    assert (metrics["l0"] <= metrics["k"]).all()
