"""Weights-based transcoder circuits: completeness identity, brute-force checks of single contributions, the beam
search against the full contribution table, the circuit graph, the tc-circuit verb."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuits.dictionaries.model import Dictionary
from circuits.transcoder_paths.analysis import TC_CIRCUIT, TcCircuitConfig, to_result
from circuits.transcoder_paths.circuit import make_target, tc_circuit
from circuits.transcoder_paths.contributions import (
    de_embedding,
    direct_contributions,
    feature_pullback,
    feature_target,
    head_contributions,
    head_state,
    logit_target,
    state_value,
)
from circuits.transcoder_paths.frozen import TranscoderSetError, freeze, spliced_logits
from circuits.transcoder_paths.graph import circuit_from_paths
from circuits.transcoder_paths.search import search_paths
from workbench.circuit import Circuit, parse_node_id

REL = 1e-4
PROMPT = [64, 3, 5, 7, 9, 11, 3, 5, 7]


def _transcoder(d: int, layer: int, kind: str = "transcoder", activation: str = "relu", seed: int = 0) -> Dictionary:
    """A random transcoder with nonzero biases (and a nonzero skip matrix for a skip transcoder)."""
    k = 16 if activation == "topk" else None
    tc = Dictionary.create(kind, d, 4 * d, activation=activation, k=k, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                           hook_out=f"blocks.{layer}.hook_mlp_out", seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        tc.b_enc.copy_(0.2 * torch.randn(tc.d_sae, generator=gen))
        tc.b_dec.copy_(0.2 * torch.randn(d, generator=gen))
        if tc.W_skip is not None:
            tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen))
    return tc


def _transcoders(model) -> dict[int, Dictionary]:
    d = model.cfg.d_model
    return {0: _transcoder(d, 0, "skip_transcoder", seed=1), 1: _transcoder(d, 1, activation="topk", seed=2)}


@pytest.fixture(scope="module")
def biased_gpt2(tmp_path_factory):
    """A GPT-style model with every weight random, biases and LayerNorm parameters included."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    folder = tmp_path_factory.mktemp("biased-gpt2")
    config = GPT2Config(vocab_size=65, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=64,
                        eos_token_id=64, activation_function="gelu_new")
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    make_tokenizer(64).save_pretrained(folder)
    return load_model(str(folder), device="cpu")


@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "biased_gpt2"])
def model(request):
    return request.getfixturevalue(request.param)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_completeness_logit_and_feature_targets(model):
    """Sum of all direct contributions (embedding, features, errors, heads from every source, biases) equals the
    target's actual value from the model's own forward."""
    run = freeze(model, torch.tensor(PROMPT), _transcoders(model))
    targets = [logit_target(run, 5, 9), logit_target(run, 3, 11, position=4), feature_target(run, 1, 7, -1),
               feature_target(run, 1, 20, 3), feature_target(run, 0, 2, 5)]
    for target in targets:
        rows = direct_contributions(run, target.state)
        assert _rel(float(rows["value"].sum()), target.value) < REL, target.label
        assert _rel(state_value(run, target.state), target.value) < REL
        assert {"emb", "head", "bias"} <= set(rows["kind"])
        assert ("error" in set(rows["kind"])) == (target.state.stage >= 2)
    # the target value itself is the model's, not rebuilt: logits and the transcoder's pre-activation
    logits = model(torch.tensor([PROMPT]), return_type="logits")[0].detach()
    assert abs(targets[0].value - float(logits[-1, 5] - logits[-1, 9])) < 1e-5


def test_error_nodes_make_the_forward_exact(tiny_llama):
    """Transcoder output + error node = the real MLP output; splicing changes the logits, the frozen run does not."""
    tcs = _transcoders(tiny_llama)
    run = freeze(tiny_llama, torch.tensor(PROMPT), tcs)
    for layer in tcs:
        assert torch.allclose(run.transcoder_output(layer) + run.error[layer], run.mlp_out[layer], atol=1e-6)
        assert run.error[layer].abs().max() > 1e-3  # random transcoders reconstruct badly: the error is real
    clean = tiny_llama(torch.tensor([PROMPT]), return_type="logits")
    spliced = spliced_logits(tiny_llama, torch.tensor([PROMPT]), tcs)
    assert not torch.allclose(clean, spliced, atol=1e-3)
    with pytest.raises(TranscoderSetError, match="blocks.1.ln2.hook_normalized"):
        freeze(tiny_llama, torch.tensor(PROMPT), {1: tcs[0]})


def _head_ablated_logit_diff(model, run, layer: int, head: int, source: int, a: int, b: int) -> float:
    """Brute force: the last layer's head output from one source removed in a real forward with the last MLP's
    output and the final norm's scale frozen at their clean values (leaving the direct path to the logits)."""
    final_scale = run.final_scale.float()[None, :, None]
    kv = head // run.n_rep
    t = run.seq_len - 1

    def cut_z(z, hook):  # noqa: ANN001, ANN202
        v = run.ln1[layer, source].float() @ run.W_V[layer, kv].float() + run.b_V[layer, kv].float()
        z = z.clone()
        z[0, t, head] -= run.pattern[layer, head, t, source].float() * v
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", cut_z), ("ln_final.hook_scale", lambda s, hook: final_scale),
             (f"blocks.{layer}.hook_mlp_out", lambda x, hook: run.mlp_out[layer].float()[None])]
    with model.hooks(fwd_hooks=hooks):
        logits = model(run.tokens[None], return_type="logits")[0]
    return float((logits[t, a] - logits[t, b]).detach())


def test_head_contribution_matches_brute_force(model):
    run = freeze(model, torch.tensor(PROMPT), _transcoders(model))
    target = logit_target(run, 5, 9)
    heads = head_contributions(run, target.state)
    layer, t = run.n_layers - 1, run.seq_len - 1
    for head, source in [(0, 3), (run.n_heads - 1, t), (1, 0)]:
        ablated = _head_ablated_logit_diff(model, run, layer, head, source, 5, 9)
        bias = float(run.pattern[layer, head, t, source]) * float(
            run.b_V[layer, head // run.n_rep] @ run.W_O[layer, head] @ target.state.vector)
        assert abs((target.value - ablated) - (float(heads[layer, head, source]) + bias)) < 1e-4
        # the state passed on to the source reproduces the contribution from the frozen residual there
        state = head_state(run, target.state, layer, head, source)
        assert abs(state_value(run, state) - float(heads[layer, head, source])) < 1e-6


def test_feature_pullback_matches_brute_force(tiny_llama):
    """z_i * (W_dec[i] . P W_enc[:, j]) / scale: remove feature i of layer 0 from the MLP output in a real forward
    with layer 1's attention output and MLP-input scale frozen; feature j's pre-activation moves by exactly that."""
    tcs = _transcoders(tiny_llama)
    run = freeze(tiny_llama, torch.tensor(PROMPT), tcs)
    t = 6
    target = feature_target(run, 1, 5, t)
    rows = direct_contributions(run, target.state)
    feats = rows[(rows["kind"] == "feature") & (rows["layer"] == 0)].sort_values("value", key=abs, ascending=False)
    i = int(feats["feature"].iloc[0])
    cache = {}

    def cut(out, hook):  # noqa: ANN001, ANN202
        out = out.clone()
        out[0, t] -= run.z[0][t, i].float() * tcs[0].W_dec[i]
        return out

    hooks = [("blocks.0.hook_mlp_out", cut),
             ("blocks.1.hook_attn_out", lambda x, hook: run.attn_out[1].float()[None]),
             ("blocks.1.ln2.hook_scale", lambda s, hook: run.ln2_scale[1].float()[None, :, None]),
             ("blocks.1.ln2.hook_normalized", lambda x, hook: cache.setdefault("x", x))]
    with tiny_llama.hooks(fwd_hooks=hooks):
        tiny_llama(run.tokens[None])
    moved = target.value - float(tcs[1].pre_activation(cache["x"][0, t].detach())[5].detach())
    assert abs(moved - float(feats["value"].iloc[0])) < 1e-4
    assert abs(float(feats["value"].iloc[0])) > 1e-3


def test_beam_first_step_is_the_top_of_the_contribution_table(tiny_llama):
    """The paths of depth 1 are the num_branches largest candidates (features, head-source pairs without BOS,
    embedding) of the full direct-contribution table; deeper values multiply the links."""
    run = freeze(tiny_llama, torch.tensor(PROMPT), _transcoders(tiny_llama))
    target = logit_target(run, 5, 9)
    k = 6
    root, paths = search_paths(run, target, num_branches=k, max_depth=3)
    rows = direct_contributions(run, target.state)
    cands = rows[rows["kind"].isin(["feature", "head", "emb"]) & ~((rows["kind"] == "head") & (rows["source"] == 0))]
    top = cands.sort_values("value", key=abs, ascending=False).head(k)
    first = sorted(abs(c.value) for c in root.children)
    assert first == pytest.approx(sorted(abs(top["value"])), rel=1e-9)
    assert len(paths) <= 3 * k and all(abs(a.value) >= abs(b.value) for a, b in zip(paths, paths[1:], strict=False))
    # a feature -> feature path: value = z_earliest * pullback * pullback, recomputed from the weights
    for path in paths:
        nodes = [parse_node_id(s.node) for s in path.steps]
        if len(nodes) == 3 and nodes[1]["kind"] == "feature" and nodes[2]["kind"] == "feature":
            (l1, f1), (l0, f0), t = (nodes[1]["layer"], nodes[1]["feature"]), (nodes[2]["layer"], nodes[2]["feature"]), 8
            tc1, tc0 = run.transcoders[l1], run.transcoders[l0]
            link1 = float(tc1.W_dec[f1] @ target.state.vector)
            w_enc = tc1.W_enc[:, f1]
            link0 = float(tc0.W_dec[f0] @ w_enc) / float(run.ln2_scale[l1, t])
            assert path.value == pytest.approx(float(run.z[l0][t, f0]) * link0 * link1, rel=1e-9)
            break
    else:
        pytest.fail("no feature -> feature path found")


def test_circuit_in_edges_sum_to_the_target(model, tmp_path):
    result = tc_circuit(model, torch.tensor(PROMPT), _transcoders(model), "logit", correct=5, incorrect=9,
                        num_branches=5, max_depth=3)
    circuit = result.circuit
    into_target = sum(w for _, _, w in circuit.graph.in_edges("logit", data="weight"))
    assert _rel(into_target, result.target.value) < REL
    assert result.summary["completeness_rel_error"] < REL
    kinds = {d["kind"] for _, d in circuit.graph.nodes(data=True)}
    assert {"logit", "error", "bias"} <= kinds and kinds & {"feature", "head"}
    for node, data in circuit.graph.nodes(data=True):
        if data["kind"] != "other":
            assert parse_node_id(node)["kind"] == data["kind"]
    assert Circuit.from_json(json.loads(json.dumps(circuit.to_json()))) == circuit
    # a feature target: its node id, and completeness into its pre-activation
    res = tc_circuit(model, torch.tensor(PROMPT), _transcoders(model), "tc1.f3@5", num_branches=4, max_depth=2)
    assert res.summary["target"] == "tc1.f3@5" and res.summary["completeness_rel_error"] < REL
    assert _rel(sum(w for _, _, w in res.circuit.graph.in_edges("tc1.f3@5", data="weight")), res.target.value) < REL



def test_a_layer_0_head_and_the_embedding_it_reads_take_one_beam_slot(model):
    """A layer-0 head passes on a state read before layer 0, where the residual is the embedding alone: its one
    continuation, emb@s, repeats its value. The search keeps that path once (head and embedding together, ending
    there), so no kept path ends at a layer-0 head and no kept path repeats the value of a kept parent. A layer-0
    feature's pre-activation reads only the embedding and layer-0 heads, so its search must go through them."""
    run = freeze(model, torch.tensor(PROMPT), _transcoders(model))
    through_l0 = 0
    for target in (feature_target(run, 0, 2, 5), logit_target(run, 5, 9), feature_target(run, 1, 7, -1)):
        root, paths = search_paths(run, target, num_branches=10, max_depth=3)
        for path in paths:
            for i, step in enumerate(path.steps):
                node = parse_node_id(step.node)
                if node["kind"] != "head" or node["layer"] != 0:
                    continue
                through_l0 += 1
                assert i == len(path.steps) - 2 and path.state is None, path.describe()
                emb = path.steps[-1]
                assert emb.node == f"emb@{step.source}" and emb.value == step.value
                # the identity behind it, from the embedding itself: the state the head passes on reads embed[s]
                prefix = [s.node for s in path.steps[:i]]  # the kept path the head extended
                owner = root if i == 1 else next(p for p in paths if [s.node for s in p.steps] == prefix)
                head_in = head_state(run, owner.state, 0, node["head"], step.source)
                assert head_in.stage == 0 and head_in.constant == 0.0
                assert _rel(float(head_in.vector @ run.embed[step.source]), step.value) < 1e-5
        by_steps = {tuple(s.node for s in p.steps): p for p in paths}
        for path in paths:
            parent = by_steps.get(tuple(s.node for s in path.steps[:-1]))
            if parent is not None:
                assert _rel(path.value, parent.value) > 1e-9, f"{path.describe()} repeats {parent.describe()}"
        # every kept path is a distinct chain of nodes; the beam keeps num_branches of them at the first step
        assert len(by_steps) == len(paths) and len(root.children) == 10
    assert through_l0 >= 5, "too few paths through a layer-0 head for the checks above"


def test_head_nodes_are_keyed_by_source_position(model):
    """Paths through one head at one destination from different source tokens meet at different nodes
    ``L{l}.H{h}@{t}:{s}``, each scored with its own source's contribution (the contribution table's row). The
    layer-0 feature's pre-activation reads only the embedding and layer-0 heads: 24 branches keep several sources
    of one head."""
    run = freeze(model, torch.tensor(PROMPT), _transcoders(model))
    seen: dict[tuple[int, int], set[int]] = {}
    for target in (feature_target(run, 0, 2, 5), logit_target(run, 5, 9)):
        root, _ = search_paths(run, target, num_branches=24, max_depth=1)
        circuit = circuit_from_paths(run, target, root)
        heads = head_contributions(run, target.state)
        t = target.state.position
        rows = direct_contributions(run, target.state)
        head_rows = rows[rows["kind"] == "head"]
        assert head_rows["node"].is_unique
        for node, data in circuit.graph.nodes(data=True):
            if data["kind"] != "head":
                continue
            parsed = parse_node_id(node)
            layer, head, source = parsed["layer"], parsed["head"], parsed["source_position"]
            assert node == f"L{layer}.H{head}@{t}:{source}" and data["source_position"] == source
            assert data["position"] == t
            assert data["score"] == pytest.approx(float(heads[layer, head, source]), rel=1e-9)
            assert node in set(head_rows["node"])
            seen.setdefault((layer, head, t), set()).add(source)
            if layer == 0:  # reads the embedding alone: its one in-edge carries its whole value
                into = list(circuit.graph.in_edges(node, data="weight"))
                assert into == [(f"emb@{source}", node, pytest.approx(data["score"], rel=1e-12))]
        into_target = sum(w for _, _, w in circuit.graph.in_edges(target.node, data="weight"))
        assert _rel(into_target, target.value) < REL
    assert any(len(sources) > 1 for sources in seen.values()), seen


def test_bad_targets_are_refused(tiny_llama):
    run = freeze(tiny_llama, torch.tensor(PROMPT), _transcoders(tiny_llama))
    with pytest.raises(ValueError, match="correct and incorrect"):
        make_target(run, "logit")
    with pytest.raises(ValueError, match="unknown target"):
        make_target(run, "L1.H2@3")
    with pytest.raises(LookupError, match="transcoder layers"):
        make_target(run, "tc5.f1@2")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_target(run, 65, 1)
    with pytest.raises(ValueError, match="num_branches"):
        search_paths(run, logit_target(run, 1, 2), num_branches=0)


def test_smollm2_completeness_one_layer_set(smollm2):
    """SmolLM2 (RMSNorm, rotary, GQA 9/3) with random transcoders on layers 4 and 12 of a greater-than prompt."""
    from workbench.data.tasks import make_task

    task = make_task("greater-than", smollm2.tokenizer, n=1)
    d = smollm2.cfg.d_model
    tcs = {4: _transcoder(d, 4, seed=4), 12: _transcoder(d, 12, activation="topk", seed=12)}
    run = freeze(smollm2, task.clean_tokens[0], tcs)
    target = logit_target(run, int(task.correct[0]), int(task.incorrect[0]))
    assert _rel(float(direct_contributions(run, target.state)["value"].sum()), target.value) < REL
    feature = feature_target(run, 12, 11, -2)
    assert _rel(float(direct_contributions(run, feature.state)["value"].sum()), feature.value) < REL


def test_cli_tc_circuit(tiny_llama, tmp_path, monkeypatch, capsys):
    from circuits.dictionaries.saelens_io import save_dictionary
    from workbench.store import Store
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    folders = []
    for layer, tc in _transcoders(tiny_llama).items():
        folders += ["--transcoder", str(save_dictionary(tc, tmp_path / f"tc{layer}"))]
    argv = ["tc-circuit", "--model", tiny_llama.workbench_spec, "--device", "cpu", "--prompt", "t3 t5 t7 t3 t5",
            "--correct", "t7", "--incorrect", "t9", "--beam-width", "4", "--depth", "2", *folders, "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["summary"]["completeness_rel_error"] < REL and out["run"]["kind"] == "tc-circuit"
    run = Store().load("tc-circuit", out["run"]["run_id"])
    assert len(run.table("paths")) > 0 and Circuit.from_json(run.json("circuit")).graph.has_node("logit")
    assert abs(run.table("contributions")["value"].sum() - out["summary"]["target_value"]) < 1e-4
    assert main([*argv[:-1], "--correct", "t7 t9"]) == 2
    assert "single token" in capsys.readouterr().err
    assert main(["tc-circuit", "--model", tiny_llama.workbench_spec, "--prompt", "t3 t5", "--target", "bogus"]) == 2


def test_save_roundtrip(tiny_gpt2, tmp_path):
    from workbench.store import Store

    result = tc_circuit(tiny_gpt2, torch.tensor(PROMPT), _transcoders(tiny_gpt2), "logit", correct=1, incorrect=2,
                        num_branches=3, max_depth=2)
    info = TC_CIRCUIT.save(Store(tmp_path), to_result(result), "tiny", TcCircuitConfig(prompt="t1 t2", beam_width=3))
    run = Store(tmp_path).load("tc-circuit", info.run_id)
    assert Circuit.from_json(run.json("circuit")) == result.circuit
    assert run.summary["target_value"] == pytest.approx(result.target.value)


def test_demo_stores_a_tc_circuit_run(tiny_llama, tmp_path):
    from workbench.store import Store

    store = Store(tmp_path)
    cfg = dataclasses.replace(TC_CIRCUIT.demo, train_tokens=1024, prompt="t3 t5 t7 t3 t5", beam_width=3, depth=2)
    info, _ = TC_CIRCUIT.launch(tiny_llama, cfg, store=store)
    run = store.load("tc-circuit", info.run_id)
    assert run.summary["transcoder_layers"] == [0, 1] and run.summary["completeness_rel_error"] < REL
    assert "target_value_spliced" in run.summary and len(run.table("paths")) > 0


def test_pullback_and_de_embedding_are_the_input_invariant_parts(model):
    """The contribution table's feature and embedding rows factor as (activation) x (weights-only term) / scale."""
    tcs = _transcoders(model)
    run = freeze(model, torch.tensor(PROMPT), tcs)
    t, j = 5, 9
    target = feature_target(run, 1, j, t)
    rows = direct_contributions(run, target.state).set_index("node")
    pull = feature_pullback(tcs[0], tcs[1], j, centered=run.centered)
    for i in torch.nonzero(run.z[0][t]).flatten().tolist()[:5]:
        expected = float(run.z[0][t, i]) * float(pull[i]) / float(run.ln2_scale[1, t])
        assert rows.loc[f"tc0.f{i}@{t}", "value"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    scores = de_embedding(model.W_E.double(), tcs[1], j, centered=run.centered)
    assert scores.shape == (model.cfg.d_vocab,)
    if model.cfg.positional_embedding_type != "standard":  # rotary: the embedding row is the token's alone
        expected = float(scores[PROMPT[t]]) / float(run.ln2_scale[1, t])
        assert rows.loc[f"emb@{t}", "value"] == pytest.approx(expected, rel=1e-5)
