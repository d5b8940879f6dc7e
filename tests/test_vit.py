"""Vision transformers: the zoo family, the exact path-length split of the class token's logits, pruning and
EnsembleScale, lazy-neuron counts, and the ``vit`` verb."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from circuits.paths.decompose import decompose
from circuits.vision.ensemble import fit_scales, greedy_prune, length_logits, mix, prune_table
from circuits.vision.frozen import VisionInputError, freeze_vit
from circuits.vision.lazy import sparsity_table, vit_sparsity
from workbench import zoo, zoo_vit
from workbench.store import Store
from workbench.ui.cli import main


@pytest.fixture(scope="module")
def test_images():
    x, y = zoo_vit.digits("test")
    return x[:48], y[:48]


def _hf_float64_logits(model, images):
    """The independent reference: the Hugging Face module itself, in float64."""
    import copy

    hf = copy.deepcopy(model.original_model).double()
    with torch.no_grad():
        return hf(pixel_values=images.double()).logits


def test_digit_splits_are_fixed_disjoint_and_complete():
    parts = {s: zoo_vit.digits(s) for s in zoo_vit.SPLITS}
    assert [len(parts[s][1]) for s in zoo_vit.SPLITS] == [1077, 360, 360]
    flat = torch.cat([parts[s][0].flatten(1) for s in zoo_vit.SPLITS])
    assert torch.unique(flat, dim=0).shape[0] == torch.unique(zoo_vit._digits()[0].flatten(1), dim=0).shape[0]
    assert torch.equal(zoo_vit.digits("test")[0], parts["test"][0])  # the same split every time
    assert parts["train"][0].min() == -1 and parts["train"][0].max() == 1


def test_the_family_is_registered_with_true_parameter_counts(capsys):
    members = zoo_vit.family_members()
    assert zoo.targets("vit") == members and "vit-relu-d64-l4" in members and "vit-gelu-d64-l4" in members
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        for name in members:
            cfg = zoo_vit.MEMBERS[name]
            assert cfg.n_parameters() == sum(p.numel() for p in zoo_vit.make_vit(cfg).parameters())
    assert main(["zoo", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listed["families"]["vit"] == members and "vit-relu-d32-l2" in listed["zoo"]
    assert main(["models", "--json"]) == 0
    cards = {c["name"]: c for c in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"]}
    assert "ReLU MLP; 4 layers, d_model 64" in cards["toy/vit-relu-d64-l4"]["architecture"]


def test_decomposition_sums_to_the_logits_in_float64(tiny_vit, test_images):
    images, _ = test_images
    parts, error = length_logits(tiny_vit, images)
    assert parts.shape == (5, 48, 10) and parts.dtype == torch.float64
    reference = _hf_float64_logits(tiny_vit, images)
    assert (parts.sum(0) - reference).abs().max() / reference.abs().max() < 1e-6
    assert error < 1e-12
    assert (parts.sum(0) - tiny_vit(images).double()).abs().max() < 1e-4  # the bridge itself, in float32


def test_each_length_is_the_sum_of_its_paths_by_brute_force(tiny_vit, test_images):
    frozen = freeze_vit(tiny_vit, test_images[0][:6])
    parts = torch.stack([decompose(frozen).logits(k)[:, 0] for k in range(frozen.n + 1)])
    brute = torch.zeros_like(parts)
    brute[0] = frozen.readout(frozen.embed, constant=True)[:, 0]
    for k in range(1, frozen.n + 1):
        for path in itertools.combinations(range(frozen.n), k):  # first sublayer affine, the rest linear
            x = frozen.affine(path[0], frozen.embed)
            for i in path[1:]:
                x = frozen.sublayers[i].apply(x)
            brute[k] += frozen.readout(x)[:, 0]
    assert torch.allclose(parts, brute, rtol=0, atol=1e-10)


def test_a_gelu_vit_decomposes_exactly_too(tmp_path):
    from workbench.models import load_model

    model = zoo_vit.make_vit(zoo_vit.VisionMember("g", 16, 1, "gelu"))
    model.save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path), device="cpu")
    images = zoo_vit.digits("heldout")[0][:8]
    parts, _ = length_logits(bridge, images)
    reference = _hf_float64_logits(bridge, images)
    assert parts.shape[0] == 3 and (parts.sum(0) - reference).abs().max() / reference.abs().max() < 1e-6


def test_pruning_nothing_is_the_model_and_each_row_is_its_own_sum(tiny_vit, test_images):
    images, labels = test_images
    fit_x, fit_y = zoo_vit.digits("heldout")
    parts, _ = length_logits(tiny_vit, images)
    fit_parts, _ = length_logits(tiny_vit, fit_x[:96])
    table, scales = prune_table(parts, labels, fit_parts, fit_y[:96], prune=[0, 4], steps=30)
    rows = table.set_index("method")
    model_acc = float((_hf_float64_logits(tiny_vit, images).argmax(-1) == labels).double().mean())
    assert rows.loc["full model", "accuracy"] == model_acc and rows.loc["full model", "delta_accuracy"] == 0
    for k in range(5):
        direct = parts.sum(0) - parts[k]
        assert rows.loc[f"drop length {k}", "accuracy"] == float((direct.argmax(-1) == labels).double().mean())
    kept = parts[0] + parts[1]
    assert rows.loc["keep lengths <= 1", "accuracy"] == float((kept.argmax(-1) == labels).double().mean())
    custom = parts[1] + parts[2] + parts[3]
    assert rows.loc["--prune 0,4", "accuracy"] == float((custom.argmax(-1) == labels).double().mean())
    # EnsembleScale lowers the held-out loss it was fitted on; the greedy pruning never lowers held-out accuracy
    ce = torch.nn.functional.cross_entropy
    assert ce(mix(fit_parts, scales), fit_y[:96]) <= ce(fit_parts.sum(0), fit_y[:96]) + 1e-12
    assert rows.loc["greedy pruning (held-out)", "heldout_accuracy"] >= rows.loc["full model", "heldout_accuracy"]
    assert torch.equal(fit_scales(fit_parts, fit_y[:96], steps=30), scales)
    assert greedy_prune(parts, labels) == sorted(greedy_prune(parts, labels))


def test_sparsity_counts_equal_a_direct_count(tiny_vit, test_images):
    images, _ = test_images
    stats = vit_sparsity(tiny_vit, images, taus=(0.05,), batch_size=20)  # three batches
    _, cache = tiny_vit.run_with_cache(images)
    assert stats.n_tokens == 48 * 5 and stats.activation == "relu"
    for layer in range(2):
        post, pre = cache[f"blocks.{layer}.mlp.hook_post"], cache[f"blocks.{layer}.mlp.hook_pre"]
        assert torch.equal(stats.nonzero[layer], (post != 0).sum((0, 1)))
        assert torch.equal(stats.positive_pre[layer], (pre > 0).sum((0, 1)))
        assert torch.equal(stats.above_tau[layer, 0], (post.abs() > 0.05).sum((0, 1)))
    table = sparsity_table(stats)
    assert table["active"].tolist() == pytest.approx(table["nonzero"].tolist())  # ReLU: active means nonzero
    direct = float((cache["blocks.1.mlp.hook_post"] != 0).double().mean())
    assert table.loc[1, "active"] == pytest.approx(direct, abs=1e-12)


def test_the_verb_runs_stores_and_warns_on_an_undertrained_model(tiny_vit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["vit", "--model", tiny_vit.workbench_spec, "--device", "cpu", "--n", "40", "--examples", "3",
            "--scale-steps", "20", "--json", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(out[-1])
    summary = payload["summary"]
    assert summary["completeness_error"] < 1e-12 and summary["n_sublayers"] == 4 and summary["n_images"] == 40
    assert summary["bridge_error"] < 1e-4
    images, labels = zoo_vit.digits("test")
    accuracy = float((_hf_float64_logits(tiny_vit, images[:40]).argmax(-1) == labels[:40]).double().mean())
    assert summary["accuracy"] == accuracy
    assert (accuracy < 0.9) == any("below 0.9" in w for w in summary.get("warnings", []))
    run = Store().load("vit", payload["run"]["run_id"])
    assert len(run.table("pruning")) == 1 + 5 + 4 + 3 and len(run.table("examples")) == 3
    assert run.tensors("examples")["images"].shape == (3, 8, 8)
    from circuits.vision.analysis import VIT

    assert set(VIT.figures(run)) == {"lengths", "pruning", "sparsity", "examples"}


def test_bad_input_is_named(tiny_vit, tiny_gpt2, capsys):
    base = ["vit", "--device", "cpu", "--n", "8", "--quiet"]
    assert main([*base, "--model", tiny_vit.workbench_spec, "--prune", "9"]) == 2
    err = capsys.readouterr().err
    assert "--prune 9" in err and "0..4" in err
    assert main(["vit", "--device", "cpu", "--n", "400", "--model", tiny_vit.workbench_spec]) == 2
    assert "--n 400: the test split has 360 digits" in capsys.readouterr().err
    assert main([*base, "--model", tiny_gpt2.workbench_spec]) == 2
    assert "vision transformer" in capsys.readouterr().err
    with pytest.raises(VisionInputError, match=r"\[batch, 1, 8, 8\]"):
        length_logits(tiny_vit, torch.zeros(2, 3, 8, 8))


def test_a_member_builds_reports_its_test_accuracy_and_its_training_curves(monkeypatch, tmp_path):
    from workbench.zoo_curves import ZOO_TRAINING, ZooTrainingConfig

    member = zoo_vit.VisionMember("vit-test-member", 16, 1, "relu", steps=12, n_checkpoints=3, resume_every=5)
    monkeypatch.setitem(zoo_vit.MEMBERS, member.name, member)
    monkeypatch.setitem(zoo._REGISTRY, member.name, lambda: zoo._vision_spec(member.name))
    result = ZOO_TRAINING.run(None, ZooTrainingConfig(name=member.name))
    manifest = zoo.manifest(member.name)
    assert manifest["steps"][-1] == 12 and len(result.tables["loss"]) == 12
    assert manifest["config"]["family"] == "vit" and "heads" not in result.tensors
    # the report re-evaluates the saved checkpoint: the same test accuracy as the trainer's last evaluation
    assert result.summary["test_accuracy"] == pytest.approx(result.summary["final_test_accuracy"], abs=1e-6)


def test_training_is_deterministic_from_the_seed(tmp_path):
    from safetensors.torch import load_file

    member = zoo_vit.VisionMember("det", 16, 1, "gelu", steps=6, n_checkpoints=2)
    weights = []
    for run in ("a", "b"):
        zoo_vit.train_vit(member, tmp_path / run, progress=False)
        weights.append(load_file(str(tmp_path / run / "checkpoints" / "step-0000006" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    initial = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000000" / "model.safetensors"))
    assert not torch.equal(initial["classifier.weight"], weights[0]["classifier.weight"])  # it did train
