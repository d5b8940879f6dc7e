"""Path ensembles: exact decomposition by path length on both model families, path counts, search, lesions, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from circuits.paths import (
    LogitTarget,
    PathInputError,
    analyse_paths,
    decompose,
    direct_attribution,
    fit_length_weights,
    freeze,
    lesion_random,
    lesion_single,
    path_counts,
    paths_circuit,
    sublayer_paths,
    top_paths,
)
from circuits.paths.analysis import PATHS, PathsConfig, to_result
from circuits.paths.lesion import lesion_loss
from workbench.models import load_model

TOKENS = torch.tensor([[64, 3, 5, 7, 9, 11, 3, 5, 7, 2]])


@pytest.fixture(scope="module")
def biased_gpt2(tmp_path_factory):
    """A GPT-style model with non-zero biases and norm weights and a ReLU MLP (exact zeros in the gate)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from workbench.induction_toy import make_tokenizer

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=65, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=64,
                        eos_token_id=64, activation_function="relu")
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("paths-gpt2")
    model.save_pretrained(folder)
    make_tokenizer(64).save_pretrained(folder)
    return str(folder)


def _f64(bridge_or_folder):
    spec = bridge_or_folder if isinstance(bridge_or_folder, str) else bridge_or_folder.workbench_spec
    return load_model(spec, device="cpu", dtype=torch.float64)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_llama", "biased_gpt2"])
def test_completeness_float32_and_float64(family, request):
    fixture = request.getfixturevalue(family)
    model32 = load_model(fixture, device="cpu") if isinstance(fixture, str) else fixture
    for model, tol in [(model32, 1e-4), (_f64(fixture), 1e-6)]:
        frozen = freeze(model, TOKENS)
        assert max(frozen.reconstruction_errors()) < tol  # every frozen sublayer reproduces the model's hook
        dec = decompose(frozen)
        assert dec.parts.shape[0] == frozen.n + 1 == 5
        assert dec.completeness_error() < tol
        total = sum(dec.logits(k) for k in range(5))
        clean = model(TOKENS)
        assert torch.allclose(total, clean.to(total), atol=tol * clean.abs().max().item(), rtol=0)
        lumped = decompose(frozen, max_length=1)
        assert lumped.labels == ["0", "1", ">1"] and lumped.counts == [1, 4, 11]
        assert lumped.completeness_error() < tol
        assert torch.allclose(lumped.parts[2], dec.parts[2:].sum(0), atol=1e-5)


def test_completeness_smollm2(smollm2):
    frozen = freeze(smollm2, "The war lasted from 1735 to 17")
    assert frozen.n == 60 and max(frozen.reconstruction_errors()) < 1e-4
    assert decompose(frozen).completeness_error() < 1e-4
    dec64 = decompose(frozen, dtype=torch.float64, max_length=8)
    assert dec64.completeness_error() < 1e-4 and sum(dec64.counts) == 2**60


@pytest.mark.parametrize("family", ["tiny_llama", "biased_gpt2"])
def test_path_counts_are_binomial_and_sum_to_each_length(family, request):
    fixture = request.getfixturevalue(family)
    frozen = freeze(_f64(fixture), TOKENS)
    target = LogitTarget.top_prediction(frozen.clean_logits)
    per_length = decompose(frozen).target_contributions(target)
    assert path_counts(4) == [1, 4, 6, 4, 1]
    for k in range(5):
        table = sublayer_paths(frozen, target, k)  # brute force, path by path
        assert len(table) == math.comb(4, k) and table["sublayers"].is_unique
        assert table["score"].sum() == pytest.approx(float(per_length[k]), abs=1e-10)
    # head-level paths (exhaustive search) also add up to each length, and length 1 is the direct attribution
    found = top_paths(frozen, target, max_length=4, beam=10**6, top=10**6)
    for k in range(5):
        assert sum(p.score for p in found if p.length == k) == pytest.approx(float(per_length[k]), abs=1e-10)
    assert direct_attribution(frozen, target)["score"].sum() == pytest.approx(float(per_length[1]), abs=1e-10)
    n_heads = frozen.sublayers[0].n_heads
    assert sum(p.length == 2 and len(p.virtual_heads) == 1 for p in found) == n_heads * n_heads


def test_beam_search_finds_the_brute_force_best(tiny_llama):
    frozen = freeze(tiny_llama, TOKENS)
    target = LogitTarget.top_prediction(frozen.clean_logits, position=5)
    everything = top_paths(frozen, target, max_length=4, beam=10**6, top=10**6)
    best = top_paths(frozen, target, max_length=4, beam=4, top=5)
    assert best[0].label() == everything[0].label() and best[0].score == pytest.approx(everything[0].score)
    assert [abs(p.score) for p in best] == sorted((abs(p.score) for p in best), reverse=True)
    circuit = paths_circuit(best, metadata={"model": "tiny"})
    assert "logit" in circuit and circuit.metadata["paths"][0]["path"] == best[0].label()
    assert type(circuit).from_json(json.loads(json.dumps(circuit.to_json()))) == circuit


def test_task_target_and_later_component(tiny_llama):
    frozen = freeze(tiny_llama, TOKENS.repeat(2, 1))
    target = LogitTarget(torch.tensor([4, 8]), torch.tensor([[3, 5], [7, 9]]), torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    per_length = decompose(frozen).target_contributions(target)
    clean = frozen.clean_logits
    expected = ((clean[0, 4, 3] - clean[0, 4, 5]) + (clean[1, 8, 7] - clean[1, 8, 9])) / 2
    assert float(per_length.sum()) == pytest.approx(float(expected), abs=1e-5)
    # the residual entering sublayer 2 (attention of block 1), split by length, sums to the clean resid_mid of block 0
    _, cache = tiny_llama.run_with_cache(TOKENS)
    part = decompose(frozen, stop_at=2)
    assert part.counts[:3] == [1, 2, 1]
    assert torch.allclose(part.parts.sum(0)[0], cache["blocks.1.hook_resid_pre"][0], atol=1e-5)


def test_bad_input_is_a_clear_error(tiny_llama):
    with pytest.raises(PathInputError, match="empty prompt"):
        freeze(tiny_llama, "   ")
    with pytest.raises(PathInputError, match="longer than the model's context of 64"):
        freeze(tiny_llama, torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(PathInputError, match="max_length must be an integer >= 1"):
        decompose(tiny_llama, TOKENS, max_length=0)
    with pytest.raises(PathInputError, match="max length must be an integer >= 1"):
        analyse_paths(tiny_llama, TOKENS, max_length=0)
    with pytest.raises(PathInputError, match="empty input"):
        freeze(tiny_llama, torch.zeros(1, 0, dtype=torch.long))


def test_lesions(tiny_gpt2):
    frozen = freeze(tiny_gpt2, TOKENS)
    clean = lesion_loss(tiny_gpt2, TOKENS, [])
    assert clean == pytest.approx(float(decompose(frozen).cumulative_losses()[-1]), abs=1e-5)
    single = lesion_single(tiny_gpt2, TOKENS, frozen=frozen)
    assert list(single["name"]) == ["attn0", "mlp0", "attn1", "mlp1"]
    table = lesion_random(tiny_gpt2, TOKENS, draws=2, frozen=frozen)
    assert len(table) == 1 + 4 * 2 and table.loc[table["k"] == 0, "loss"].item() == pytest.approx(clean)
    # deleting every sublayer leaves the embedding read out by the (real) final norm and unembedding
    with torch.no_grad():
        _, cache = tiny_gpt2.run_with_cache(TOKENS)
        embed = cache["hook_embed"] + cache["hook_pos_embed"]
        logits = tiny_gpt2.ln_final(embed) @ tiny_gpt2.W_U + tiny_gpt2.b_U
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], TOKENS[0, 1:]).item()
    assert table.loc[table["k"] == 4, "loss"].iloc[0] == pytest.approx(expected, abs=1e-4)
    # the frozen ensemble without all paths through every sublayer is the length-0 part alone
    assert table.loc[table["k"] == 4, "frozen_loss"].iloc[0] == pytest.approx(
        float(decompose(frozen).cumulative_losses()[0]), abs=1e-4)


def test_reweighting_recovers_and_improves(tiny_llama):
    dec = decompose(freeze(tiny_llama, TOKENS))
    assert float(dec.reweighted_loss(torch.ones(5))) == pytest.approx(float(dec.cumulative_losses()[-1]), abs=1e-5)
    stats = dec.length_stats()
    assert torch.allclose(stats["logit_norm"], dec.logit_norms()) and stats["completeness_error"] < 1e-4
    assert torch.allclose(stats["cumulative_loss"], dec.cumulative_losses())
    fit = fit_length_weights([dec], steps=20)
    assert fit.fit_clean == pytest.approx(float(dec.cumulative_losses()[-1]), abs=1e-5)
    assert fit.fit_loss <= fit.fit_clean + 1e-9 and fit.weights.shape == (5,)


def test_analysis_run_and_cli(tiny_llama, tmp_path, monkeypatch, capsys):
    from workbench.store import Store
    from workbench.ui.cli import main

    store = Store(tmp_path / "runs")
    result = analyse_paths(tiny_llama, TOKENS, lesion_draws=1, top=5)
    info = PATHS.save(store, to_result(result), "tiny", PathsConfig(prompt="(token ids)"))
    run = store.load("paths", info.run_id)
    lengths = run.table("lengths")
    assert list(lengths["n_paths"]) == [1, 4, 6, 4, 1]
    assert lengths["target"].sum() == pytest.approx(run.summary["target"], abs=1e-5)
    assert run.summary["completeness_error"] < 1e-6  # float64 decomposition of the float32 run
    assert len(run.table("top_paths")) == 5 and set(run.names("table")) >= {"direct", "lesion_single", "lesion_random"}

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "cli-runs"))
    spec = tiny_llama.workbench_spec
    assert main(["paths", "--model", spec, "--prompt", "t3 t5 t7 t3 t5", "--lesion-draws", "0", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["summary"]["n_sublayers"] == 4 and payload["run"]["kind"] == "paths"
    for bad, message in [(["--prompt", " "], "empty prompt"), (["--prompt", "t3", "--max-length", "0"], "max-length"),
                         (["--prompt", " ".join(["t3"] * 70)], "longer than the model's context")]:
        assert main(["paths", "--model", spec, *bad]) == 2
        assert message in capsys.readouterr().err


def test_figures(tiny_llama):
    from circuits.paths.figures import (
        direct_figure,
        length_profile_figure,
        lesion_figure,
        loss_by_length_figure,
    )

    result = analyse_paths(tiny_llama, TOKENS, lesion_draws=1, top=5)
    for fig in [length_profile_figure(result.lengths), loss_by_length_figure(result.lengths),
                direct_figure(result.direct), lesion_figure(result.lesion_single, result.lesion_random)]:
        assert len(fig.data) >= 1


def test_task_metric_by_length(tiny_llama):
    from workbench.data import make_task

    task = make_task("induction", tiny_llama.tokenizer, n=2)
    result = analyse_paths(tiny_llama, task=task, lesion_draws=0, top=3)
    clean = tiny_llama(task.clean_tokens)
    lengths = result.lengths
    assert lengths["cumulative_metric"].iloc[-1] == pytest.approx(float(task.metric(clean).mean()), abs=1e-4)
    rows = torch.arange(2)
    diff = clean[rows, task.answer_positions, task.correct] - clean[rows, task.answer_positions, task.incorrect]
    assert lengths["target"].sum() == pytest.approx(float(diff.mean()), abs=1e-5)
    with pytest.raises(PathInputError, match="either a prompt or a task"):
        analyse_paths(tiny_llama, TOKENS, task=task)


def test_demo_writes_a_paths_run(tiny_llama, tmp_path):
    from workbench.store import Store

    cfg = dataclasses.replace(PATHS.demo, prompt="t3 t5 t7 t9 t3 t5 t7")
    info, _ = PATHS.launch(tiny_llama, cfg, store=Store(tmp_path / "runs"))
    run = Store(tmp_path / "runs").load("paths", info.run_id)
    assert run.summary["n_sublayers"] == 4 and {"lesion_single", "lesion_random"} <= set(run.names("table"))
