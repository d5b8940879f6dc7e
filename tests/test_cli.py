"""The command line: every verb has --help; --json ends standard output with one JSON object."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from workbench import zoo
from workbench.analysis import Analysis, Result, describe_fields
from workbench.induction_toy import InductionConfig, log_spaced_steps, train_induction
from workbench.store import Store
from workbench.ui import demo as demo_module
from workbench.ui.cli import build_parser, main
from workbench.zoo_curves import ZOO_TRAINING, ZooTrainingConfig

VERBS = [["models"], ["zoo"], ["zoo", "build"], ["zoo", "list"], ["runs"], ["sweep"], ["demo"], ["app"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: workbench" in capsys.readouterr().out


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_runs_lists_and_filters(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    assert main(["runs", "--json"]) == 0
    assert _last_json(capsys) == {"runs": []}
    store = Store()
    with store.create("massive", model="smollm2-135m") as run:
        run.summary["x"] = 1
    with store.create("sparsity", model="toy/induction-2l"):
        pass
    (tmp_path / "runs" / "sparsity" / "broken-run").mkdir()
    assert main(["runs", "--json"]) == 0
    rows = _last_json(capsys)["runs"]
    assert {(r["kind"], r["status"]) for r in rows} == {("massive", "ok"), ("sparsity", "ok"), ("sparsity", "corrupt")}
    assert main(["runs", "--kind", "massive", "--json"]) == 0
    assert [r["kind"] for r in _last_json(capsys)["runs"]] == ["massive"]
    assert main(["runs", "--kind", "../etc"]) == 2
    assert "kind" in capsys.readouterr().err


def test_demo_computes_then_skips(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    cfg = InductionConfig(vocab=32, half_len=6, d_model=16, n_heads=2, batch=8, steps=8, warmup=2, n_checkpoints=3)
    spec = zoo.ZooSpec(name="demo-tiny", description="", architecture="", parameters="", config=cfg.to_dict(),
                       train=lambda folder, progress: train_induction(cfg, folder, progress=False))
    monkeypatch.setitem(zoo._REGISTRY, "demo-tiny", lambda: spec)
    demo = dataclasses.replace(ZOO_TRAINING, demo=ZooTrainingConfig(name="demo-tiny"))
    monkeypatch.setattr(demo_module, "demo_analyses", lambda: [demo])
    assert main(["demo", "--json"]) == 0
    first = _last_json(capsys)["demos"]
    assert [d["status"] for d in first] == ["computed"]
    loaded = Store().load("zoo-training", Store().latest("zoo-training").run_id)
    assert len(loaded.table("loss")) == cfg.steps and loaded.summary["checkpoints"] == len(log_spaced_steps(cfg.steps, cfg.n_checkpoints))
    assert main(["demo", "--json"]) == 0
    assert [d["status"] for d in _last_json(capsys)["demos"]] == ["stored"]


def test_unknown_model_is_a_clear_error(capsys):
    parser = build_parser()
    assert parser.prog == "workbench"
    from workbench.models import ModelSpecError, load_model

    with pytest.raises(ModelSpecError, match="available: \\['smollm2-135m'"):
        load_model("gpt-17")


def test_every_demo_is_a_config_of_its_analysis():
    demos = demo_module.demo_analyses()
    assert {a.kind for a in demos} >= {"zoo-training", "sparsity", "massive", "probe", "dynamics", "dictionary", "cdt",
                                       "patching", "paths", "tc-circuit"}
    for analysis in demos:
        assert isinstance(analysis.demo, analysis.config), analysis.verb
        analysis.demo.check()
    assert len({(a.kind, demo_module.demo_model(a)) for a in demos}) == len(demos)


def test_a_failing_demo_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))

    def broken(model, config, progress):
        raise RuntimeError("no such model")

    def fine(model, config, progress):
        return Result(summary={"ok": 1})

    def make(kind, compute):
        return Analysis(kind=kind, verb=kind, help="", config=ZooTrainingConfig, compute=compute,
                        figures=lambda run: {}, demo=ZooTrainingConfig(), demo_model=None, needs_model=False,
                        model_of=lambda cfg: "m")

    monkeypatch.setattr(demo_module, "demo_analyses", lambda: [make("broken", broken), make("fine", fine)])
    done = demo_module.run_demos(progress=False)
    assert [d["status"] for d in done] == ["failed", "computed"]
    assert "RuntimeError: no such model" in done[0]["error"]
    assert main(["demo", "--json"]) == 1  # the failure is still stored as failed, the fine one as stored


HEAVY = ("torch", "transformer_lens", "transformers", "pandas", "scipy", "sklearn")


@pytest.mark.parametrize("argv", [["--help"], ["cdt", "--help"], ["patch", "--attention"], ["no-such-verb"]],
                         ids=" ".join)
def test_help_and_argument_errors_import_no_heavy_library(argv):
    code = ("import sys\nfrom workbench.ui.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_choices_mirror_the_libraries():
    import typing

    from circuits.cdt import rules
    from circuits.cdt.analysis import CdtConfig
    from circuits.patching import ablation, path
    from circuits.patching.analysis import MODES, PatchConfig
    from probes.analysis import DEFAULT_TAUS
    from probes.sparsity import DEFAULT_TAUS as LIBRARY_TAUS
    from workbench.analysis import TaskName
    from workbench.data import TASKS

    def choices(config, name):
        return next(i.choices for i in describe_fields(config) if i.name == name)

    assert typing.get_args(TaskName) == TASKS and choices(PatchConfig, "task") == TASKS
    assert (choices(CdtConfig, "attention"), choices(CdtConfig, "bias_split")) == (rules.ATTENTION_RULES,
                                                                                   rules.BIAS_SPLITS)
    assert (choices(PatchConfig, "ablation"), choices(PatchConfig, "receiver_input"), choices(PatchConfig, "mode")) == (
        ablation.ABLATIONS, path.RECEIVER_INPUTS, MODES)
    assert tuple(DEFAULT_TAUS) == tuple(LIBRARY_TAUS)
    assert choices(CdtConfig, "norm_bias") == rules.NORM_BIASES


def test_cdt_attention_defaults_to_each_use_of_the_library(tiny_gpt2, tmp_path, monkeypatch, capsys):
    """Without --attention the scores keep the decomposition's default rule (ablated) and --explain the word
    explanations' own (total); --attention sets both."""
    import circuits.cdt.local as cdt_local
    from circuits.cdt.local import explain

    def toy_explain(model, text, **options):  # the sentiment answers are not tokens of the toy vocabulary
        return explain(model, text, answers=(" t1", " t2"), template="t5 {text} t6", **options)

    monkeypatch.setattr(cdt_local, "explain", toy_explain)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    text = "t3 t9 t4"
    base = ["cdt", "--model", tiny_gpt2.workbench_spec, "--device", "cpu", "--n", "2", "--half-len", "4",
            "--top-k", "2", "--explain", text, "--json"]
    runs = {}
    for attention in (None, "own"):
        assert main(base + ([] if attention is None else ["--attention", attention])) == 0
        run = Store().load("cdt", _last_json(capsys)["run"]["run_id"])
        runs[attention] = (run.params["rules"]["attention"], run.table("words")["contribution"].to_numpy())
    expected = {rule: toy_explain(tiny_gpt2, text, attention=rule).table["contribution"].to_numpy()
                for rule in ("total", "ablated", "own")}
    assert not np.allclose(expected["total"], expected["ablated"])  # the rules differ on this model
    assert runs[None][0] == "ablated" and np.allclose(runs[None][1], expected["total"])
    assert runs["own"][0] == "own" and np.allclose(runs["own"][1], expected["own"])
