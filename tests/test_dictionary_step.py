"""The dictionary training step against float64 references written out with plain autograd: TopK with AuxK (the
sparse products, the dead-column ranking), the transposed sparse product, reused buffers, the decoder-parallel
projection and a whole loop step (fused Adam, renormalisation); autocast keeps float32 master weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from circuits.dictionaries.buffer import TensorBuffer
from circuits.dictionaries.model import Dictionary, _sparse_t_matmul, csr_plan
from circuits.dictionaries.precision import make_adam
from circuits.dictionaries.train import DictSpec, TrainDictConfig, _step_losses, train_dictionaries

KINDS = ["sae", "transcoder", "skip_transcoder"]


def make(kind: str, act: str = "topk", k: int = 5, d_in: int = 12, d_sae: int = 40, seed: int = 0) -> Dictionary:
    d = Dictionary.create(kind, d_in, d_sae, activation=act, k=k if act == "topk" else None, hook_in="h.in",
                          hook_out=None if kind == "sae" else "h.out", d_out=None if kind == "sae" else 9, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return d.double()


def reference_topk_loss(d: Dictionary, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor,
                        coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The TopK + AuxK loss written out densely (METHODS.md): (loss, fired [d_sae])."""
    xin = x - d.b_dec if d.apply_b_dec_to_input else x
    pre = xin @ d.W_enc + d.b_enc
    v, i = pre.topk(d.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
    out = z @ d.W_dec + d.b_dec + (x @ d.W_skip if d.W_skip is not None else 0)
    loss = (out - y).pow(2).sum(-1).mean()
    n_dead = int(dead.sum())
    if n_dead:
        k_aux = min(d.d_in // 2, n_dead)
        av, ai = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, ai, F.relu(av))
        resid = (y - out).detach()
        aux = (z_aux @ d.W_dec - resid).pow(2).sum(-1).mean() / (resid - resid.mean(0)).pow(2).sum(-1).mean()
        loss = loss + coef * aux
    return loss, (z > 0).any(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_dead", [0, 3, 17, 30, 40], ids=lambda n: f"dead{n}")
@pytest.mark.parametrize("route", ["sparse", "auto", "dense"])
def test_topk_step_loss_gradients_and_firing_match_the_dense_formula(kind: str, n_dead: int, route: str,
                                                                     monkeypatch) -> None:
    """AuxK ranks only the dead columns (fewer than d_in // 2, more, and all of them), through the sparse route, the
    dense-over-dead-columns route or the one chosen by size: same loss, same gradients of every parameter, same
    fired latents as the masked dense formula in float64."""
    from circuits.dictionaries import auxk

    monkeypatch.setattr(auxk, "DENSE_RATIO", {"sparse": 0, "auto": auxk.DENSE_RATIO, "dense": 10**6}[route])
    d = make(kind)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(33, 12, dtype=torch.float64, generator=gen)
    y = x if kind == "sae" else torch.randn(33, 9, dtype=torch.float64, generator=gen)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=gen)[:n_dead]] = True
    spec = DictSpec("h.in", kind=kind, hook_out=None if kind == "sae" else "h.out", activation="topk", k=5)
    params = list(d.parameters())
    loss, logs, fired = _step_losses(d, x, y, spec, dead, 0.25, log=True)
    want, want_fired = reference_topk_loss(d, x, y, dead, 0.25)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    assert torch.equal(fired, want_fired) and fired.device == x.device
    assert ("auxk" in logs) == (n_dead > 0)
    for g, r in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_transposed_sparse_product_equals_the_dense_one_with_empty_latents() -> None:
    """G^T @ D through the latent-sorted embedding_bag, latents without entries included, against a dense G."""
    gen = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(29, generator=gen)[:4] for _ in range(9)])  # latent 29 (and maybe others) empty
    vals = torch.randn(9, 4, dtype=torch.float64, generator=gen)
    dense = torch.randn(9, 5, dtype=torch.float64, generator=gen)
    G = torch.zeros(9, 30, dtype=torch.float64).scatter_add(1, idx, vals)
    got = _sparse_t_matmul(idx, vals, dense, 30, csr_plan(idx, 30))
    torch.testing.assert_close(got, G.t() @ dense, rtol=1e-12, atol=1e-14)
    assert torch.equal(got[29], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("act", ["topk", "relu"])
def test_two_graphs_alive_at_once_keep_their_own_gradients(act: str) -> None:
    """The step reuses buffers between calls: two losses made before either backward still differentiate exactly."""
    d1, d2 = make("sae", act, seed=1), make("sae", act, seed=2)
    spec = DictSpec("h.in", activation=act, k=5 if act == "topk" else None, l1=0.3)
    gen = torch.Generator().manual_seed(5)
    x1, x2 = (torch.randn(21, 12, dtype=torch.float64, generator=gen) for _ in range(2))
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:6] = True
    losses = [_step_losses(d, x, x, spec, dead, 0.25)[0] for d, x in ((d1, x1), (d2, x2))]
    for d, x, loss in ((d1, x1, losses[0]), (d2, x2, losses[1])):
        if act == "topk":
            want = reference_topk_loss(d, x, x, dead, 0.25)[0]
        else:
            z = d.encode(x)
            want = (d.decode(z) - x).pow(2).sum(-1).mean() + 0.3 * (z * d.W_dec.norm(dim=1)).sum(-1).mean()
        got_g = torch.autograd.grad(loss, list(d.parameters()))
        for g, r in zip(got_g, torch.autograd.grad(want, list(d.parameters())), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_decoder_parallel_gradient_is_projected_out() -> None:
    d = make("transcoder")
    g = torch.randn(d.W_dec.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    d.W_dec.grad = g.clone()
    d.remove_parallel_gradient()
    w = d.W_dec.detach() / d.W_dec.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(d.W_dec.grad, g - (g * w).sum(1, keepdim=True) * w, rtol=1e-12, atol=1e-14)
    assert float((d.W_dec.grad * w).sum(1).abs().max()) < 1e-12


def test_a_loop_step_matches_adam_written_out_in_float64() -> None:
    """Three TopK steps as the trainer makes them (loss with AuxK, backward, parallel component removed, fused
    Adam, rows renormalised) against the same steps with a hand-written Adam and dense autograd."""
    d, ref = make("sae"), make("sae")
    spec = DictSpec("h.in", activation="topk", k=5)
    opt = make_adam(d.parameters(), 1e-2, (0.9, 0.999))
    assert opt.defaults["fused"] is True
    gen = torch.Generator().manual_seed(9)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref.parameters()]
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    for t in range(1, 4):
        x = torch.randn(25, 12, dtype=torch.float64, generator=gen)
        opt.zero_grad(set_to_none=True)
        _step_losses(d, x, x, spec, dead, 0.25)[0].backward()
        d.remove_parallel_gradient()
        opt.step()
        with torch.no_grad():
            d.W_dec.div_(d.W_dec.norm(dim=1, keepdim=True))
        grads = torch.autograd.grad(reference_topk_loss(ref, x, x, dead, 0.25)[0], list(ref.parameters()))
        with torch.no_grad():
            w = ref.W_dec / ref.W_dec.norm(dim=1, keepdim=True)
            grads = [g - (g * w).sum(1, keepdim=True) * w if p is ref.W_dec else g
                     for p, g in zip(ref.parameters(), grads, strict=True)]
            for p, g, (m, v) in zip(ref.parameters(), grads, moments, strict=True):
                m.mul_(0.9).add_(0.1 * g)
                v.mul_(0.999).add_(0.001 * g * g)
                p.sub_(1e-2 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8))
            ref.W_dec.div_(ref.W_dec.norm(dim=1, keepdim=True))
    for p, r in zip(d.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-9, atol=1e-12)


def _rows(n: int = 1024, d: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(48, d, generator=g)
    code = torch.rand(n, 48, generator=g).pow(6)
    return {"h.in": code @ basis + 0.01 * torch.randn(n, d, generator=g)}


@pytest.fixture(scope="module")
def fp32_runs() -> dict[str, object]:
    cfg = TrainDictConfig(tokens=1024 * 6, batch_size=128, lr=3e-3, warmup_steps=4, log_every=1)
    return {act: train_dictionaries(None, None, [DictSpec("h.in", activation=act, k=4, l1=1e-3, expansion=4)], cfg,
                                    buffer=TensorBuffer(_rows(), batch_size=128, epochs=6), progress=False)
            for act in ("topk", "relu")}


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
@pytest.mark.parametrize("act", ["topk", "relu"])
def test_autocast_keeps_float32_weights_and_the_float32_loss(fp32_runs, act: str, autocast: str) -> None:
    """A bf16 / fp16 (loss-scaled) run: float32 weights, and a final reconstruction loss within a few percent of the
    float32 run's (the low precision is in the products only; fp16's scaler skips the few first steps whose scaled
    gradients overflow, so it trails a little)."""
    cfg = TrainDictConfig(tokens=1024 * 6, batch_size=128, lr=3e-3, warmup_steps=4, log_every=1, autocast=autocast)
    spec = DictSpec("h.in", activation=act, k=4, l1=1e-3, expansion=4)
    res = train_dictionaries(None, None, [spec], cfg, buffer=TensorBuffer(_rows(), batch_size=128, epochs=6),
                             progress=False)
    (d,) = res.dictionaries.values()
    assert {p.dtype for p in d.parameters()} == {torch.float32}
    base = fp32_runs[act]
    mse = [row[spec.label()]["mse"] for row in res.history]
    want = [row[spec.label()]["mse"] for row in base.history]
    assert mse[-1] < 0.5 * mse[0]  # it trains
    assert mse != want  # the products did run in the low precision
    assert abs(sum(mse[-5:]) - sum(want[-5:])) <= (0.03 if autocast == "bf16" else 0.1) * sum(want[-5:])
    (d32,) = base.dictionaries.values()
    assert float((d.W_dec - d32.W_dec).norm() / d32.W_dec.norm()) < (0.05 if autocast == "bf16" else 0.3)


def test_an_fp16_run_resumes_with_its_loss_scale(tmp_path) -> None:
    """A killed fp16 run continues with the checkpointed scale and ends with the uninterrupted run's weights."""
    cfg = TrainDictConfig(tokens=1024 * 2, batch_size=128, lr=3e-3, warmup_steps=2, autocast="fp16",
                          checkpoint_every=5)
    spec = DictSpec("h.in", l1=1e-3, expansion=4)

    def run(**kw):  # noqa: ANN003, ANN202
        return train_dictionaries(None, None, [spec], cfg, buffer=TensorBuffer(_rows(), batch_size=128, epochs=2),
                                  progress=False, **kw)

    whole = run()
    assert run(workdir=tmp_path, stop_after=7).steps == 7
    saved = load_file(str(next((tmp_path / "resume").glob("step-*")) / "o0.safetensors"))
    assert float(saved["scaler.scale"][0]) < 65536.0  # the scale dropped on early overflows and was saved
    rest = run(workdir=tmp_path)
    for a, b in zip(whole.dictionaries[spec.label()].parameters(), rest.dictionaries[spec.label()].parameters(),
                    strict=True):
        assert torch.equal(a, b)


def test_a_run_frees_its_reused_buffers(monkeypatch) -> None:
    from circuits.dictionaries import model, train_step

    made = []
    monkeypatch.setattr(train_step, "scratch", lambda *a: made.append(a) or model.scratch(*a))
    cfg = TrainDictConfig(tokens=256, batch_size=128, warmup_steps=1)
    train_dictionaries(None, None, [DictSpec("h.in", activation="topk", k=4, expansion=4)], cfg,
                       buffer=TensorBuffer(_rows(256), batch_size=128), progress=False)
    assert len(made) == 2 and not getattr(model._scratch, "buffers", {})
