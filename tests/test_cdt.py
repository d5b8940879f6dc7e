"""CD-T: the model walk reproduces the model, beta + gamma is the clean activation everywhere, scores are right."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuits.cdt import CDTInputError, Rules, decompose_sources, head_scores, prepare
from circuits.cdt.clean import clean_forward
from circuits.cdt.decompose import decompose, reference_means
from circuits.cdt.nodes import parse_nodes
from circuits.cdt.weights import model_weights
from workbench.data import make_task

# every attention rule, both sign-rule settings and both bias splits, in four combinations
# (the published rules less the tolerance of their bias shares, which loses a little of each bias by design:
# tests/test_cdt_published.py holds the whole published rules to a port of the published code)
ALL_RULES = [Rules(), dataclasses.replace(Rules.published(), share_eps=0.0),
             Rules(sign_rule=True, attention="total", bias_split="gamma"),
             Rules(sign_rule=False, attention="own", bias_split="gamma")]


def _task(model, n=3, half_len=5):
    return make_task("induction", model.tokenizer, n=n, seed=1, half_len=half_len)


def _with_random_biases(w):
    """The same weights with random nonzero biases everywhere, so that the bias rules are exercised."""
    gen = torch.Generator().manual_seed(0)
    out = dataclasses.replace(w)
    for name in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", "ln1_b", "ln2_b", "lnf_b"):
        value = getattr(w, name)
        setattr(out, name, 0.1 * torch.randn(value.shape, generator=gen, dtype=value.dtype))
    return out


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_clean_forward_matches_the_bridge(fixture, request):
    model = request.getfixturevalue(fixture)
    task = _task(model)
    w = model_weights(model, torch.float64)
    cache = clean_forward(w, task.clean_tokens)
    logits, ref = model.run_with_cache(task.clean_tokens)
    for layer in range(w.n_layers):
        for name, ours in [("hook_resid_pre", cache.resid_pre), ("attn.hook_z", cache.z),
                           ("hook_resid_mid", cache.resid_mid), ("hook_mlp_out", cache.mlp_out)]:
            torch.testing.assert_close(ours[layer].float(), ref[f"blocks.{layer}.{name}"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache.logits(w).float().log_softmax(-1), logits.log_softmax(-1), atol=1e-4, rtol=1e-4)


def _check_completeness(w, task, sources, rules, targets=()):
    means = reference_means(w, task.corrupted_tokens, task.seq_len, "mean")
    w = rules.weights(w)  # the model the rules decompose: with their norm epsilon
    cache = clean_forward(w, task.clean_tokens)
    clean = {}
    for layer in range(w.n_layers):
        clean[f"blocks.{layer}.hook_resid_pre"] = cache.resid_pre[layer]
        clean[f"blocks.{layer}.attn.hook_z"] = cache.z[layer]
        clean[f"blocks.{layer}.hook_resid_mid"] = cache.resid_mid[layer]
        clean[f"blocks.{layer}.hook_mlp_out"] = cache.mlp_out[layer]
        post = cache.resid_pre[layer + 1] if layer + 1 < w.n_layers else cache.final
        clean[f"blocks.{layer}.hook_resid_post"] = post
    seen, worst = set(), [0.0]

    def probe(name, beta, gamma):
        if name not in clean:
            return
        ref = clean[name]
        total = (beta + gamma).reshape(-1, *ref.shape)
        err = float((total - ref).abs().max() / ref.abs().max())
        worst[0] = max(worst[0], err)
        seen.add(name)

    d = decompose(w, task, cache, means, sources, targets=list(targets), rules=rules, probe=probe)
    assert worst[0] < 1e-5, f"beta + gamma strays from the clean activation by {worst[0]:.2e} ({rules})"
    # the metric parts add up too: m(total) of every source row is the clean metric
    clean_metric = task.metric_per_example(cache.logits(w))
    torch.testing.assert_close(d.metric_total, clean_metric.to(d.metric_total), rtol=1e-5, atol=1e-6)
    return seen, d


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_beta_plus_gamma_is_the_clean_activation_float64(fixture, request):
    model = request.getfixturevalue(fixture)
    task = _task(model)
    w = _with_random_biases(model_weights(model, torch.float64))
    sources = parse_nodes(["emb@3", "L0.H1@2", "mlp0@4-6", "L1.H3", "mlp1@2"], n_layers=2, n_heads=4,
                          seq_len=task.seq_len, what="sources")
    targets = parse_nodes(["L1.H0@5", "mlp1"], n_layers=2, n_heads=4, seq_len=task.seq_len, what="targets")
    for rules in ALL_RULES:
        seen, d = _check_completeness(w, task, sources, rules, targets)
    assert {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"} <= seen
    # the relevance of a source to a target before it is undefined (NaN), after it a fraction in [0, 1]
    rel = d.target_relevance()
    assert torch.isnan(rel[3, 0]) and torch.isnan(rel[4, 1])
    assert 0 < float(rel[0, 0]) < 1 and 0 < float(rel[1, 1]) < 1


def test_completeness_on_smollm2_float64(smollm2):
    task = make_task("induction", smollm2.tokenizer, n=2, seed=0, half_len=3)
    w = model_weights(smollm2, torch.float64)
    sources = parse_nodes(["emb@2", "L3.H4@3", "mlp10@1-4"], n_layers=30, n_heads=9, seq_len=task.seq_len,
                          what="sources")
    # the published rules; the "ablated" attention rule lets gamma grow without bound under frozen norm statistics on
    # this 30-layer model, so that beta + gamma loses float64 precision (a known limit, see circuits.cdt.rules)
    seen, _ = _check_completeness(w, task, sources, Rules.published())
    assert "blocks.29.hook_resid_post" in seen


def test_last_mlp_relevance_is_its_direct_logit_effect(tiny_gpt2):
    """The last MLP reaches the logit difference through the final norm and W_U only: its beta part is that linear
    map (norm scale frozen from the clean run) applied to its output minus its mean, computable by hand."""
    model = tiny_gpt2
    base = _task(model, n=4)
    task = dataclasses.replace(base, metric_name="logit_diff", score_positions=None)
    ctx = prepare(model, task, dtype=torch.float64)
    w, cache = ctx.weights, ctx.cache
    scores = decompose_sources(ctx, sources=["mlp1"], sign_rule=False, bias_split="gamma")
    out = cache.mlp_out[1] - ctx.means.mlp_out[1]  # [B, T, d]
    rows = torch.arange(task.batch_size)
    pos = task.answer_positions
    final = cache.final[rows, pos]
    centred = final - final.mean(-1, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + w.eps)
    beta = (out[rows, pos] - out[rows, pos].mean(-1, keepdim=True)) * scale * w.lnf_w
    direction = w.W_U[:, task.correct] - w.W_U[:, task.incorrect]  # [d, B]
    expected = (beta * direction.T).sum(-1)
    torch.testing.assert_close(scores.metric_per_example[0], expected, rtol=1e-9, atol=1e-12)


def test_batching_does_not_change_scores(tiny_llama):
    task = _task(tiny_llama, n=3)
    one = head_scores(tiny_llama, task, per_position=True, chunk_rows=1)
    many = head_scores(tiny_llama, task, per_position=True, chunk_rows=10_000)
    assert one.shape == (2, 4, task.seq_len)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-6)
    # whole heads under the linear rules equal the sum over positions (all rules linear in the source's beta)
    whole = head_scores(tiny_llama, task, attention="total", sign_rule=False, bias_split="gamma")
    per = head_scores(tiny_llama, task, per_position=True, attention="total", sign_rule=False, bias_split="gamma")
    assert whole.shape == (2, 4)
    assert torch.isfinite(whole).all()
    assert per.abs().sum() > 0


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ablation_semantics_of_an_input_source(tiny_gpt2, ablation):
    """An input span as source: beta = x - mu (mean ablation) or x (zero ablation) on the span, zero elsewhere."""
    task = _task(tiny_gpt2)
    ctx = prepare(tiny_gpt2, task, ablation=ablation, dtype=torch.float64)
    nodes = parse_nodes(["emb@2-4"], n_layers=2, n_heads=4, seq_len=task.seq_len, what="sources")
    got = {}

    def probe(name, beta, gamma):
        if name == "blocks.0.hook_resid_pre":
            got["beta"], got["gamma"] = beta, gamma

    decompose(ctx.weights, ctx.task, ctx.cache, ctx.means, nodes, probe=probe)
    x = ctx.cache.embed
    mu = x.mean(0) if ablation == "mean" else torch.zeros_like(x[0])
    if ablation == "mean":  # the mean is over the corrupted prompts, not the clean ones
        mu = clean_forward(ctx.weights, task.corrupted_tokens).embed.mean(0)
    expected = torch.zeros_like(x)
    expected[:, 2:5] = (x - mu)[:, 2:5]
    torch.testing.assert_close(got["beta"], expected)
    torch.testing.assert_close(got["gamma"], x - expected)


def test_bad_input_is_a_clear_error(tiny_gpt2):
    task = _task(tiny_gpt2)
    with pytest.raises(CDTInputError, match="layer 5 out of range"):
        decompose_sources(tiny_gpt2, task, ["L5.H0@1"])
    with pytest.raises(CDTInputError, match="head 9 out of range"):
        decompose_sources(tiny_gpt2, task, ["L0.H9"])
    with pytest.raises(CDTInputError, match="position 99 out of range"):
        decompose_sources(tiny_gpt2, task, ["mlp0@99"])
    with pytest.raises(CDTInputError, match="does not come before target"):
        decompose_sources(tiny_gpt2, task, ["L1.H0@2"], targets=["L0.H1@3"])
    with pytest.raises(CDTInputError, match="does not come before target"):
        decompose_sources(tiny_gpt2, task, ["mlp1@2"], targets=["mlp1"])
    with pytest.raises(CDTInputError, match="cannot read"):
        decompose_sources(tiny_gpt2, task, ["attn3"])
    with pytest.raises(TypeError, match="unknown CD-T rule option"):
        head_scores(tiny_gpt2, task, sign=True)
    with pytest.raises(ValueError, match="attention rule"):
        head_scores(tiny_gpt2, task, attention="fixed")
    with pytest.raises(CDTInputError, match="ablation"):
        head_scores(tiny_gpt2, task, ablation="median")
    # a task built for another tokenizer: its answer ids overflow this model's vocabulary
    big = dataclasses.replace(task, correct=task.correct + 1000)
    with pytest.raises(CDTInputError, match="vocabulary"):
        head_scores(tiny_gpt2, big)
    # metric tokens that are not single tokens for the model's tokenizer
    with pytest.raises(ValueError, match="single"):
        make_task("sentiment", tiny_gpt2.tokenizer, n=2)


def test_cdt_verb_stores_a_run(tiny_gpt2, tmp_path, monkeypatch, capsys):
    import json

    from workbench.store import Store
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    spec = tiny_gpt2.workbench_spec
    code = main(["cdt", "--model", spec, "--device", "cpu", "--n", "2", "--half-len", "4", "--top-k", "3",
                 "--sources", "L0.H1@2", "emb@1-3", "mlp0", "--targets", "logit", "L1.H0@5", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = Store().load("cdt", payload["run"]["run_id"])
    table = run.table("scores")
    assert table["source"].tolist() == ["L0.H1@2", "emb@1-3", "mlp0"]
    assert "relevance:L1.H0@5" in table.columns
    assert run.tensors("head_scores")["per_position"].shape == (2, 4, 9)
    assert run.params["rules"]["attention"] == "ablated"
    assert main(["cdt", "--model", spec, "--device", "cpu", "--n", "2", "--half-len", "4",
                 "--sources", "L7.H0"]) == 2
    assert "layer 7 out of range" in capsys.readouterr().err
