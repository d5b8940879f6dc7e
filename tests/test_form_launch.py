"""The dashboard's launch form, verb by verb: the form's own defaults (plus the fields a verb requires) turn into
arguments that the command line accepts, the verb finishes on a tiny model, and its ``--json`` line is strict JSON."""

from __future__ import annotations

import json

import pytest

from workbench.ui import launch
from workbench.ui.cli import main


def _strict(text: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _form_defaults(verb: str) -> dict:
    """What the form holds before anyone types: each option's default, as the widgets show it."""
    out = {}
    for spec in launch.verb_options(verb):
        d = spec.default
        if spec.many and isinstance(d, (list, tuple)):
            out[spec.dest] = ("\n" if spec.lines else ", ").join(map(str, d))
        else:
            out[spec.dest] = d if spec.type == "flag" else ("" if d is None else str(d))
    return out


@pytest.fixture(scope="module")
def tiny_transcoder(tmp_path_factory, tiny_llama):
    from circuits.dictionaries.model import Dictionary
    from circuits.dictionaries.saelens_io import save_dictionary

    folder = tmp_path_factory.mktemp("form-tc")
    d = Dictionary.create("transcoder", 32, 48, activation="topk", k=4, hook_in="blocks.0.ln2.hook_normalized",
                          hook_out="blocks.0.hook_mlp_out")
    return str(save_dictionary(d, folder / "tc0"))


# verb -> (model fixture, the fields the form needs filled in; everything else stays at the form's default)
REQUIRED = {
    "zoo-training": (None, {}),
    "sparsity": ("tiny_gpt2", {"corpus": "news", "seq_len": "32", "tokens": "1024", "eval_tokens": "64"}),
    "massive": ("tiny_llama", {"corpus": "news", "seq_len": "32"}),
    "probe": ("tiny_gpt2", {"corpus": "reviews", "n": "40", "max_text_tokens": "32"}),
    "train-dict": ("tiny_llama", {"layer": "1", "seq_len": "32", "tokens": "8192", "batch_size": "1024",
                                  "eval_tokens": "512"}),
    "eval-dict": ("tiny_llama", {"seq_len": "32", "eval_tokens": "512"}),
    "train-clt": ("tiny_llama", {"seq_len": "32", "tokens": "4096", "eval_tokens": "256"}),
    "tc-circuit": ("tiny_llama", {"prompt": "t3 t5 t7 t3 t5"}),
    "cdt": ("tiny_gpt2", {"half_len": "8"}),
    "patch": ("tiny_gpt2", {"task": "induction", "half_len": "8"}),
    "paths": ("tiny_llama", {"prompt": "t3 t5 t7 t9 t3 t5 t7"}),
    "vit": ("tiny_vit", {"n": "32"}),
    "dynamics": (None, {"target": "llama-tiny-demo", "sequences": "4"}),
    "edges": ("tiny_gpt2", {"half_len": "4", "n": "2"}),
    "attribute": ("tiny_llama", {"prompt": "t3 t5 t7 t3 t5"}),
    "intervene": ("tiny_llama", {"prompt": "t3 t5 t7 t3 t5", "sample": "4"}),
    "benchmark": (None, {"models": "gt-prev-token", "methods": "eap\nacdc", "n": "8"}),
    "formation": (None, {"clamps": "none\nL1.H*.output=zero", "steps": "10", "evaluations": "3", "d_model": "16",
                         "half_len": "4", "vocab": "16", "batch": "4", "n_eval": "8"}),
    "ssa": (None, {"steps": "6", "evaluations": "2", "ensemble": "2", "d_model": "16", "half_len": "4", "vocab": "16",
                   "batch": "4", "n_eval": "8"}),
    "bigram": ("tiny_llama", {"corpus": "news", "steps": "3", "bigram_tokens": "1024", "seq_len": "16",
                              "eval_tokens": "64"}),
}


def test_every_analysis_verb_is_launched():
    assert set(REQUIRED) == set(launch.analysis_verbs())


@pytest.mark.slow
@pytest.mark.parametrize("verb", list(REQUIRED))
def test_the_form_launches_each_verb_with_its_defaults(verb, request, tiny_transcoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    fixture, required = REQUIRED[verb]
    values = _form_defaults(verb) | required
    if fixture:
        values["model"] = request.getfixturevalue(fixture).workbench_spec
        values["device"] = "cpu"
    if verb == "zoo-training":
        request.getfixturevalue("induction_2l")
    if verb == "eval-dict":
        values["path"] = tiny_transcoder
    if verb in ("tc-circuit", "attribute", "intervene"):
        values["transcoder"] = tiny_transcoder
    argv = launch.build_argv(verb, values)
    assert main(argv) == 0, capsys.readouterr().err
    payload = _strict(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["run"]["kind"] and payload["summary"] is not None


@pytest.mark.parametrize("argv", [["models", "--json"], ["zoo", "list", "--json"], ["runs", "--json"]], ids=" ".join)
def test_the_core_verbs_print_strict_json(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    assert main(argv) == 0
    assert isinstance(_strict(capsys.readouterr().out.strip().splitlines()[-1]), dict)


def test_non_finite_numbers_print_as_null(capsys):
    import argparse

    from workbench.ui.output import emit

    emit(argparse.Namespace(json=True), {"fvu": float("nan"), "ratios": [1.0, float("inf")]}, "")
    assert _strict(capsys.readouterr().out.strip()) == {"fvu": None, "ratios": [1.0, None]}
