"""circuits.patching against hand-written hooks: faithfulness, activation patching, path patching, discovery."""

from __future__ import annotations

import pytest
import torch

from circuits.patching import (
    PatchingInputError,
    discover,
    faithfulness,
    faithfulness_many,
    head_patching_scores,
    layer_patching_scores,
    path_head_scores,
    path_patching_scores,
)
from circuits.patching.prompts import prompt_task
from workbench.circuit import Circuit
from workbench.data import make_task


@pytest.fixture(scope="module")
def toy(induction_2l):
    task = make_task("induction", induction_2l.tokenizer, n=6, seed=3, half_len=10)
    return induction_2l, task


@pytest.fixture(scope="module")
def llama(tiny_llama):
    task = make_task("induction", tiny_llama.tokenizer, n=4, seed=1, half_len=5)
    return tiny_llama, task


def _cache(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)[1]


def _metric_with(model, task, hooks):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return float(task.metric(model(task.clean_tokens)))


def _out_delta_hook(model, layer, deltas):
    """A hook on hook_attn_out adding sum over (head, position) of (new_z - z) @ W_O: an independent route."""

    def hook(out, hook=None):
        out = out.clone()
        for head, pos, new, old in deltas:
            out[:, pos] += (new - old) @ model.W_O[layer, head]
        return out

    return (f"blocks.{layer}.hook_attn_out", hook)


def test_faithfulness_full_empty_and_hand_computed(toy):
    model, task = toy
    full = ["L0.H0", "L0.H1", "L1.H0", "L1.H1", "mlp0", "mlp1"]
    assert faithfulness(model, task, full) == pytest.approx(1.0, abs=1e-5)
    assert faithfulness(model, task, Circuit()) == 0.0
    # partial circuit: L0.H1 whole, L1.H0 at two positions only; everything else mean-ablated
    corr, clean = _cache(model, task.corrupted_tokens), _cache(model, task.clean_tokens)
    mu = {layer: corr[f"blocks.{layer}.attn.hook_z"].mean(0) for layer in (0, 1)}  # [pos, H, dh]
    mlp_mu = {layer: corr[f"blocks.{layer}.hook_mlp_out"].mean(0) for layer in (0, 1)}
    P = task.seq_len
    kept = {(0, 1, p) for p in range(P)} | {(1, 0, 14), (1, 0, 18)}

    def z_hook(layer):
        def hook(z, hook=None):
            z = z.clone()
            for h in range(2):
                for p in range(P):
                    if (layer, h, p) not in kept:
                        z[:, p, h] = mu[layer][p, h]
            return z
        return (f"blocks.{layer}.attn.hook_z", hook)

    hooks = [z_hook(0), z_hook(1)] + [(f"blocks.{i}.hook_mlp_out", lambda x, hook=None, i=i: mlp_mu[i].expand_as(x))
                                      for i in (0, 1)]
    m_c = _metric_with(model, task, hooks)
    m_empty = _metric_with(
        model, task,
        [(f"blocks.{i}.attn.hook_z", lambda z, hook=None, i=i: mu[i].expand_as(z)) for i in (0, 1)]
        + [(f"blocks.{i}.hook_mlp_out", lambda x, hook=None, i=i: mlp_mu[i].expand_as(x)) for i in (0, 1)],
    )
    m_full = _metric_with(model, task, [])
    expected = (m_c - m_empty) / (m_full - m_empty)
    got = faithfulness(model, task, ["L0.H1", "L1.H0@14", "L1.H0@18", "logit"])
    assert got == pytest.approx(expected, abs=1e-4)
    assert 0.0 < abs(got) < 1.0
    del clean
    # several circuits in one batch agree with one at a time; zero ablation changes the answer
    many, _, _ = faithfulness_many(model, task, [["L1.H0"], ["L0.H1", "L1.H0"]], max_rows=task.batch_size)
    assert many[0] == pytest.approx(faithfulness(model, task, ["L1.H0"]), abs=1e-5)
    assert faithfulness(model, task, ["L0.H1", "L1.H0"], ablation="zero") != pytest.approx(float(many[1]))


def test_head_patching_matches_one_forward_per_head(toy):
    model, task = toy
    corr, clean = _cache(model, task.corrupted_tokens), _cache(model, task.clean_tokens)
    m_clean = _metric_with(model, task, [])
    scores = head_patching_scores(model, task, ablation="corrupted")
    per_pos = head_patching_scores(model, task, ablation="corrupted", per_position=True, max_rows=20)
    assert scores.shape == (2, 2) and per_pos.shape == (2, 2, task.seq_len)
    P = task.seq_len
    for layer, head in [(0, 1), (1, 0), (1, 1)]:
        new, old = corr[f"blocks.{layer}.attn.hook_z"][:, :, head], clean[f"blocks.{layer}.attn.hook_z"][:, :, head]
        hook = _out_delta_hook(model, layer, [(head, slice(None), new, old)])
        assert float(scores[layer, head]) == pytest.approx(m_clean - _metric_with(model, task, [hook]), abs=1e-4)
        for pos in (P - 3,):
            hook = _out_delta_hook(model, layer, [(head, pos, new[:, pos], old[:, pos])])
            expected = m_clean - _metric_with(model, task, [hook])
            assert float(per_pos[layer, head, pos]) == pytest.approx(expected, abs=1e-4)
    # under mean ablation the induction head carries more than the other layer-1 head;
    # mean ablation of a whole attention layer equals ablating all its heads at once
    mean_scores = head_patching_scores(model, task)
    assert mean_scores[1, 0] > mean_scores[1, 1] + 0.5
    layers = layer_patching_scores(model, task, "attn", per_position=False)
    mu = corr["blocks.1.attn.hook_z"].mean(0)
    expected = m_clean - _metric_with(model, task, [("blocks.1.attn.hook_z", lambda z, hook=None: mu.expand_as(z))])
    assert float(layers[1]) == pytest.approx(expected, abs=1e-4)


def _brute_path(model, task, sender, receiver, ablation_z, receiver_hook="attn.hook_z"):
    """Two plain forwards: (1) sender replaced, every other head frozen clean, the receiver recorded; (2) clean
    run with the receiver replaced by its recording."""
    clean = _cache(model, task.clean_tokens)
    s_layer, s_head = sender
    L = model.cfg.n_layers
    seen = {}

    def freeze(layer):
        def hook(z, hook=None):
            out = clean[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == s_layer:
                out[:, :, s_head] = ablation_z
            return out
        return (f"blocks.{layer}.attn.hook_z", hook)

    r_layer, r_head = receiver if receiver is not None else (None, None)
    hooks = [freeze(layer) for layer in range(L)]
    if receiver is not None:
        name = f"blocks.{r_layer}.{receiver_hook}"
        hooks.insert(0, (name, lambda x, hook=None: seen.__setitem__("r", x.clone())))
    first = _metric_with(model, task, hooks)
    if receiver is None:
        return first

    def put(x, hook=None):
        x = x.clone()
        x[:, :, r_head] = seen["r"][:, :, r_head]
        return x

    return _metric_with(model, task, [(f"blocks.{r_layer}.{receiver_hook}", put)])


def test_path_patching_matches_brute_force(toy, llama):
    model, task = toy
    m_clean = _metric_with(model, task, [])
    corr = _cache(model, task.corrupted_tokens)
    z = corr["blocks.0.attn.hook_z"]
    for receiver_input, hook in (("z", "attn.hook_z"), ("q", "attn.hook_q"), ("k", "attn.hook_k")):
        got = path_patching_scores(model, task, ["L0.H1", "L0.H0"], ["L1.H0"], receiver_input=receiver_input,
                                   ablation="corrupted", max_rows=task.batch_size)
        for i, head in enumerate((1, 0)):
            expected = m_clean - _brute_path(model, task, (0, head), (1, 0), z[:, :, head], hook)
            assert float(got[i]) == pytest.approx(expected, abs=1e-4)
    direct = path_head_scores(model, task, ablation="mean")
    mu = corr["blocks.0.attn.hook_z"].mean(0)[:, 1]
    assert float(direct[0, 1]) == pytest.approx(m_clean - _brute_path(model, task, (0, 1), None, mu), abs=1e-4)
    # GQA model with MLPs (tiny Llama, random weights, so effects are small): query receivers; MLPs recompute
    model, task = llama
    m_clean = _metric_with(model, task, [])
    z = _cache(model, task.corrupted_tokens)["blocks.0.attn.hook_z"]
    got = path_patching_scores(model, task, ["L0.H2", "L0.H3"], ["L1.H3"], receiver_input="q", ablation="corrupted")
    for i, head in enumerate((2, 3)):
        expected = m_clean - _brute_path(model, task, (0, head), (1, 3), z[:, :, head], "attn.hook_q")
        assert float(got[i]) == pytest.approx(expected, abs=2e-7)
    direct = path_head_scores(model, task, ablation="corrupted")
    expected = m_clean - _brute_path(model, task, (0, 3), None, z[:, :, 3])
    assert float(direct[0, 3]) == pytest.approx(expected, abs=1e-6) and abs(expected) > 1e-3
    with pytest.raises(PatchingInputError, match="shares key/value head"):
        path_patching_scores(model, task, ["L0.H2"], ["L1.H3"], receiver_input="k")


def test_bad_input_gives_clear_errors(toy):
    model, task = toy
    with pytest.raises(PatchingInputError, match="layer 5 out of range.*0..1"):
        faithfulness(model, task, ["L5.H0"])
    with pytest.raises(PatchingInputError, match="head 7 out of range"):
        path_patching_scores(model, task, ["L0.H7"])
    with pytest.raises(PatchingInputError, match="position 99 out of range"):
        faithfulness(model, task, ["L1.H0@99"])
    with pytest.raises(PatchingInputError, match="senders must precede"):
        path_patching_scores(model, task, ["L1.H1"], ["L1.H0"])
    with pytest.raises(PatchingInputError, match="unknown ablation"):
        head_patching_scores(model, task, ablation="resample")
    with pytest.raises(PatchingInputError, match="must be a single token"):
        prompt_task(model.tokenizer, ["t1 t2 t3"], ["t1 t2 t4"], "t3 t5", "t4")
    with pytest.raises(PatchingInputError, match="same number of tokens"):
        prompt_task(model.tokenizer, ["t3 t4 t5"], ["t3 t4"], "t5", "t6")


def test_discovery_finds_the_induction_circuit(toy):
    model, task = toy
    circuit = discover(model, task, top_k=2, min_faithfulness=0.8)
    heads = {n for n in circuit if n.startswith("L")}
    assert "L1.H0" in heads  # the induction head
    f = circuit.metadata["faithfulness"]
    assert f >= 0.8 and f == pytest.approx(faithfulness(model, task, circuit), abs=1e-5)
    assert circuit.metadata["faithfulness_unpruned"] >= f - 1e-6
    # every kept node was needed: dropping any one falls below the bound
    for node in heads:
        assert faithfulness(model, task, [n for n in heads if n != node]) < 0.8


def test_demo_run_and_cli(induction_2l, tmp_path, monkeypatch, capsys):
    import json

    from circuits.patching.analysis import PATCH
    from workbench.store import Store
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    store = Store()
    info, _ = PATCH.launch(PATCH.demo_model, PATCH.demo, store=store, device="cpu")
    run = store.load("patching", info.run_id)
    table = run.table("scores")
    assert list(table.columns) == ["layer", "head", "position", "component", "node", "score"]
    circuit = Circuit.from_json(run.json("circuit"))
    assert "L1.H0" in circuit and run.summary["faithfulness"] >= 0.8
    assert run.tensors("scores")["scores"].shape == (len(table),)
    assert main(["patch", "--model", "toy/induction-2l", "--task", "induction", "--n", "4", "--mode", "heads",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = Store().load("patching", payload["run"]["run_id"])
    assert stored.tensors("scores")["scores"].shape == (2, 2)
    assert len(stored.table("scores")) == 4 and payload["summary"]["mode"] == "heads"
    assert main(["patch", "--model", "toy/induction-2l", "--task", "induction", "--mode", "path",
                 "--receivers", "L0.H0"]) == 2
    assert "senders must precede" in capsys.readouterr().err
