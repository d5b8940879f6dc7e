"""Ground truths: each circuit proven on its model's own task by interchange ablation; registry errors; determinism.

Every designed model (six, about 45 s of training on one core in all; one of them, ``gt-mlp-lookup``, has an MLP in
its circuit) is built into the session cache; the observed
one is the session's ``toy/induction-2l``. ``bench/ground_truth.py`` prints the same numbers for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ground_truth import prove  # noqa: E402
from workbench.ground_truth import GroundTruthError, get, names  # noqa: E402
from workbench.ground_truth.build import new_model, train_design  # noqa: E402
from workbench.ground_truth.designs import DESIGNS  # noqa: E402
from workbench.ground_truth.strict import Wiring, components, strict_logits  # noqa: E402
from workbench.nodes import parse  # noqa: E402

DESIGNED = sorted(DESIGNS)


def test_registry_lists_six_ground_truths_and_zoo_members():
    from workbench.models import available_specs

    assert len(names()) >= 7 and "induction-2l" in names() and len(DESIGNED) >= 6
    assert any(n.startswith("mlp") for name in DESIGNED for n in get(name).nodes)  # a circuit through an MLP
    for name in DESIGNED:
        gt = get(name)
        assert gt.how == "designed" and gt.spec == f"toy/{name}" and gt.spec in available_specs()
        for edge in gt.edges:
            sender, receiver = edge.split("->")
            assert parse(sender).kind in ("emb", "head", "mlp") and parse(receiver).kind in ("head", "mlp", "logit")
        assert gt.nodes == {n for e in gt.edges for n in e.split("->")} - {"emb", "logit"}


@pytest.mark.parametrize("name", ["gt-induction", "gt-mlp-lookup"])
def test_component_forward_is_the_model_and_strict_run_interchanges(name):
    """The component-by-component forward equals transformers' own (MLPs included); the strict run of an input with
    itself as the source is the plain run, and with no designed edge it is the plain run of the source."""
    design = DESIGNS[name]()
    model = new_model(design).eval()
    gen = torch.Generator().manual_seed(3)
    tokens, _ = design.batch(gen, 8)
    source, _ = design.batch(gen, 8)
    wiring = Wiring.from_edges(design.edges)
    with torch.no_grad():
        hf = model(input_ids=tokens).logits
        mlps: list[torch.Tensor] = []
        _, heads, plain = components(model, tokens, mlps=mlps)
        assert torch.allclose(plain, hf, atol=1e-5)
        assert (len(mlps) == design.n_layers and all(bool((m == 0).all()) != bool(design.d_mlp) for m in mlps))
        assert torch.allclose(strict_logits(model, wiring, tokens, tokens), hf, atol=1e-5)
        empty = Wiring(wiring.circuit, {}, wiring.mlps)
        assert torch.allclose(strict_logits(model, empty, tokens, source), model(input_ids=source).logits, atol=1e-5)
        assert not torch.allclose(strict_logits(model, wiring, tokens, source), hf, atol=1e-3)


@pytest.mark.parametrize("name", DESIGNED)
def test_designed_circuit_is_faithful_and_necessary(name):
    from workbench.models import load_model

    gt = get(name)
    model = load_model(gt.spec, device="cpu")
    task = gt.make_task(model, n=4, seed=7)
    assert model.tokenizer(task.prompts[0])["input_ids"] == task.clean_tokens[0].tolist()  # the prompts are the tokens
    assert (task.clean_tokens != task.corrupted_tokens).any(-1).all()
    proof = prove(gt, model, n=128, seed=7)
    assert proof["clean_accuracy"] >= 0.95, proof
    assert proof["f_kept"] >= 0.9, proof
    assert proof["f_destroyed"] <= 0.2, proof
    assert proof["f_edges"] >= 0.9, proof  # the designed edges alone carry the task
    assert all(f < 0.9 for f in proof["f_edges_minus"].values()), proof  # and each of them is needed


def test_observed_induction_circuit(induction_2l):
    gt = get("induction-2l")
    assert gt.how == "observed" and any(n.startswith("L1.") for n in gt.nodes)
    proof = prove(gt, induction_2l, n=64, seed=7)
    assert proof["clean_accuracy"] >= 0.9, proof
    assert proof["f_kept"] >= 0.9, proof
    assert proof["f_destroyed"] <= 0.2, proof


def test_bad_inputs():
    from workbench.models import load_model

    with pytest.raises(GroundTruthError, match="unknown ground truth 'nope'.*gt-prev-token"):
        get("nope")
    gt = get("gt-prev-token")
    other = load_model("toy/gt-greater-than", device="cpu")
    with pytest.raises(GroundTruthError, match="has no task 'ioi'.*'prev-token'"):
        gt.make_task(other, n=4, task="ioi")
    with pytest.raises(GroundTruthError, match="needs its own model toy/gt-prev-token"):
        gt.make_task(other, n=4)
    with pytest.raises(ValueError, match="n must be at least 1"):
        gt.make_task(other, n=0)
    from workbench.ground_truth import ground_truths

    with pytest.raises(ValueError, match="unknown how 'planted'"):
        ground_truths(how="planted")


def _weights_hash(folder: Path, steps: int) -> str:
    return hashlib.sha256((folder / "checkpoints" / f"step-{steps:07d}" / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_weights(tmp_path):
    design = DESIGNS["gt-prev-token"]()
    hashes = []
    for i, d in enumerate((design, design, dataclasses.replace(design, seed=1))):
        train_design(d, tmp_path / str(i))
        hashes.append(_weights_hash(tmp_path / str(i), d.steps))
    assert hashes[0] == hashes[1] != hashes[2]
