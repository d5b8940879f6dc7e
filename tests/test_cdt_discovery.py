"""CD-T on toy/induction-2l: head rankings agree with activation patching; discovery finds the induction circuit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy.stats import spearmanr

from circuits.cdt import discover, head_scores
from circuits.cdt.local import explain, highlight_html
from workbench.circuit import Circuit
from workbench.data import make_task
from workbench.induction_toy import induction_head_scores, previous_token_scores

HALF = 24


@pytest.fixture(scope="module")
def toy_task(induction_2l):
    return make_task("induction", induction_2l.tokenizer, n=8, seed=0, half_len=HALF)


@pytest.fixture(scope="module")
def known_heads(induction_2l):
    """The previous-token head(s) of layer 0 and induction head(s) of layer 1, from attention patterns alone."""
    tokens = make_task("induction", induction_2l.tokenizer, n=16, seed=7, half_len=HALF).clean_tokens
    _, cache = induction_2l.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    prev = previous_token_scores(cache["blocks.0.attn.hook_pattern"])
    ind = induction_head_scores(cache["blocks.1.attn.hook_pattern"], HALF)
    previous = [(0, h) for h in range(len(prev)) if prev[h] > 0.3]
    induction = [(1, h) for h in range(len(ind)) if ind[h] > 0.3]
    assert previous and induction, f"pattern scores: previous {prev.tolist()}, induction {ind.tolist()}"
    return previous, induction


def test_cdt_head_ranking_agrees_with_activation_patching(induction_2l, toy_task):
    """Activation patching done here independently: one forward per (head, position) with that node mean-ablated
    (mean over the corrupted prompts at that position), all nodes as rows of one batched forward through the bridge."""
    model, task = induction_2l, toy_task
    L, H, T, B = 2, 2, task.seq_len, task.batch_size
    _, ref = model.run_with_cache(task.corrupted_tokens, names_filter=lambda n: n.endswith("attn.hook_z"))
    mu = [ref[f"blocks.{layer}.attn.hook_z"].mean(0) for layer in range(L)]  # [T, H, dh]
    nodes = [(layer, h, p) for layer in range(L) for h in range(H) for p in range(T)]
    rows = task.clean_tokens.repeat(len(nodes), 1)

    def hook_for(layer):
        def hook(z, hook=None):
            z = z.clone()
            for i, (lay, h, p) in enumerate(nodes):
                if lay == layer:
                    z[i * B:(i + 1) * B, p, h] = mu[layer][p, h]
            return z
        return hook

    with torch.no_grad():
        clean = task.metric(model(task.clean_tokens)).item()
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook_for(layer)) for layer in range(L)]):
            logits = model(rows)
    per_row = dataclasses.replace(task.select(list(range(B)) * len(nodes))).metric_per_example(logits)
    patching = (clean - per_row.view(len(nodes), B).mean(1)).view(L, H, T)

    cdt = head_scores(model, task, per_position=True)
    assert cdt.shape == (L, H, T)
    rho = spearmanr(cdt.flatten().numpy(), patching.flatten().numpy())[0]
    assert rho >= 0.8, f"Spearman {rho:.3f} between CD-T and activation patching over {L * H * T} head-positions"
    # whole heads: the same order
    assert torch.argsort(cdt.sum(-1).flatten()).tolist() == torch.argsort(patching.sum(-1).flatten()).tolist()


def test_discovery_finds_the_induction_circuit(induction_2l, toy_task, known_heads):
    """Metric: the task's single-position logit difference (last position, correct vs corrupted next token).

    Nodes are (head, position) pairs: 2 layers x 2 heads x 49 positions = 196 candidates; "a quarter of the heads" is a
    quarter of them."""
    from circuits.patching import faithfulness

    model = induction_2l
    task = dataclasses.replace(toy_task, metric_name="logit_diff", score_positions=None)
    circuit = discover(model, task, top_k=5, faithfulness_bound=0.8)
    assert isinstance(circuit, Circuit)
    heads = set(circuit.heads())
    previous, induction = known_heads
    assert set(previous) <= heads and set(induction) <= heads, f"found {sorted(heads)}"
    n_nodes = sum(1 for _, d in circuit.graph.nodes(data=True) if d["kind"] == "head")
    n_candidates = 2 * 2 * task.seq_len
    assert n_nodes <= n_candidates // 4
    f = faithfulness(model, task, circuit)
    assert f >= 0.8
    assert circuit.metadata["faithfulness"] == pytest.approx(f, abs=1e-4)
    assert all(d["score"] is not None for n, d in circuit.graph.nodes(data=True) if d["kind"] == "head")
    again = Circuit.from_json(circuit.to_json())
    assert again == circuit


def test_word_contributions_of_a_tweet(smollm2):
    text = "I love this wonderful sunny day"
    ex = explain(smollm2, text, phrase_len=2)
    words = ex.word_table()
    assert words["phrase"].tolist() == text.split()
    assert len(ex.table) == 6 + 5  # words and bigrams
    contrib = dict(zip(words["phrase"], words["contribution"], strict=True))
    assert contrib["wonderful"] > 0 and contrib["wonderful"] > contrib["this"]
    page = ex.html()
    assert page.count("<span") == 6 and "wonderful" in page
    assert "&lt;b&gt;" in highlight_html(["<b>"], [1.0])
    with pytest.raises(ValueError, match="single"):
        explain(smollm2, text, answers=(" very negative", " positive"))
