"""The beta-only walk equals the two-part reference walk: every rule, both families, windows, targets and metrics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_cdt import _with_random_biases

from circuits.cdt import Rules
from circuits.cdt.clean import clean_forward, full_forward
from circuits.cdt.decompose import decompose, reference_means
from circuits.cdt.nodes import parse_nodes
from circuits.cdt.weights import model_weights
from workbench.data import make_task

# float64 agreement; 1e-8 because where one part is exactly zero in the reference (zero ablation of every input: gamma
# is 0), the fast walk's ``clean - beta`` is a rounding residue, and a bias share 0 / (0 + residue) can differ
TOL = dict(rtol=1e-7, atol=1e-8)
RULES = [Rules(), Rules.published(), Rules(sign_rule=True, attention="total", bias_split="gamma"),
         Rules(sign_rule=False, attention="own", bias_split="proportional")]


def _tasks(model):
    induction = make_task("induction", model.tokenizer, n=3, seed=1, half_len=5)  # log_prob at many positions
    # a logit difference read at a different position per example (the fast walk gathers them)
    answer = torch.tensor([induction.seq_len - 1, 6, 8])
    logit = dataclasses.replace(induction, metric_name="logit_diff", score_positions=None, answer_positions=answer)
    return [induction, logit]


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_fast_walk_equals_the_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    w = _with_random_biases(model_weights(model, torch.float64))
    for task in _tasks(model):
        T = task.seq_len
        sources = parse_nodes(["emb@3", "emb", "L0.H1@2", "L0.H2", "mlp0@4-6", "L1.H3", "L1.H0@7", "mlp1@2", "mlp1",
                               f"L1.H2@{T - 1}"], n_layers=2, n_heads=4, seq_len=T, what="sources")
        early = parse_nodes(["L1.H0@5", "mlp0@2-8"], n_layers=2, n_heads=4, seq_len=T, what="targets")
        last = parse_nodes(["mlp1", "L1.H1"], n_layers=2, n_heads=4, seq_len=T, what="targets")
        cache = clean_forward(w, task.clean_tokens)
        full = full_forward(w, task.clean_tokens)
        for i, rules in enumerate(RULES):  # each rule set once with each ablation, targets and chunking varied
            for j, targets in enumerate(([], early, last)):
                ablation = ("mean", "zero")[(i + j) % 2]
                means = reference_means(w, task.corrupted_tokens, T, ablation)
                kw = dict(targets=targets, rules=rules, chunk_rows=(3, 1000)[(i + j) % 2])
                ref = decompose(w, task, cache, means, sources, reference=True, **kw)
                fast = decompose(w, task, cache, means, sources, full=full, **kw)
                torch.testing.assert_close(fast.metric_beta, ref.metric_beta, **TOL)
                torch.testing.assert_close(fast.metric_total, ref.metric_total, **TOL)
                torch.testing.assert_close(fast.target_beta, ref.target_beta, **TOL, equal_nan=True)
                torch.testing.assert_close(fast.target_gamma, ref.target_gamma, **TOL, equal_nan=True)
        assert ref.metric_beta.abs().sum() > 0


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_full_forward_matches_the_bridge(fixture, request):
    """The nodes the fast walk reads beyond the clean cache (patterns, queries, MLP activations) are the model's."""
    model = request.getfixturevalue(fixture)
    w = model_weights(model, torch.float64)
    task = _tasks(model)[0]
    full = full_forward(w, task.clean_tokens)
    _, ref = model.run_with_cache(task.clean_tokens)
    for layer, lc in enumerate(full.layers):
        for name, ours in [("attn.hook_pattern", lc.pattern), ("mlp.hook_post", lc.post), ("hook_resid_post", lc.resid_post),
                           ("attn.hook_z", lc.z)]:
            torch.testing.assert_close(ours.float(), ref[f"blocks.{layer}.{name}"], atol=1e-5, rtol=1e-4)
    cache = clean_forward(w, task.clean_tokens)
    torch.testing.assert_close(full.layers[-1].resid_post, cache.final)
