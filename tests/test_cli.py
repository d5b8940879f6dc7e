"""The command line: every verb has --help; --json ends standard output with one JSON object."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from workbench import demo as demo_module
from workbench import zoo
from workbench.cli import build_parser, main
from workbench.induction_toy import InductionConfig, log_spaced_steps, train_induction
from workbench.store import Store

VERBS = [["models"], ["zoo"], ["zoo", "build"], ["zoo", "list"], ["runs"], ["demo"], ["app"]]


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
    run = functools.partial(demo_module.zoo_training_demo, name="demo-tiny")
    monkeypatch.setattr(demo_module, "DEMOS", [demo_module.Demo("zoo-training", "toy/demo-tiny", run)])
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


def test_every_demo_names_an_importable_function():
    for demo in demo_module.DEMOS:
        assert callable(demo.function()), demo.kind
    assert len({d.kind for d in demo_module.DEMOS}) == len(demo_module.DEMOS)


def test_a_failing_demo_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))

    def broken(store, device, progress):
        raise RuntimeError("no such model")

    def fine(store, device, progress):
        with store.create("fine", model="m") as run:
            run.summary["ok"] = 1
        return run.info

    monkeypatch.setattr(demo_module, "DEMOS", [demo_module.Demo("broken", "m", broken), demo_module.Demo("fine", "m", fine)])
    done = demo_module.run_demos(progress=False)
    assert [d["status"] for d in done] == ["failed", "computed"]
    assert "RuntimeError: no such model" in done[0]["error"]
    assert main(["demo", "--json"]) == 1  # the failure is still stored as failed, the fine one as stored


HEAVY = ("torch", "transformer_lens", "transformers", "circuits", "probes", "pandas")


@pytest.mark.parametrize("argv", [["--help"], ["cdt", "--help"], ["patch", "--attention"], ["no-such-verb"]],
                         ids=" ".join)
def test_help_and_argument_errors_import_no_heavy_library(argv):
    code = ("import sys\nfrom workbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_choices_mirror_the_libraries():
    from circuits.cdt import rules
    from circuits.patching import ablation, path, runs
    from workbench.cli import cdt, common, patch
    from workbench.data import TASKS

    assert common.TASKS == TASKS
    assert (cdt.ATTENTION_RULES, cdt.BIAS_SPLITS) == (rules.ATTENTION_RULES, rules.BIAS_SPLITS)
    assert (patch.ABLATIONS, patch.RECEIVER_INPUTS, patch.MODES) == (ablation.ABLATIONS, path.RECEIVER_INPUTS, runs.MODES)


def test_cdt_attention_defaults_to_each_use_of_the_library(tiny_gpt2, tmp_path, monkeypatch, capsys):
    """Without --attention the scores keep the decomposition's default rule (ablated) and --explain the word
    explanations' own (total); --attention sets both."""
    import circuits.cdt.runs as cdt_runs
    from circuits.cdt.local import explain

    def toy_explain(model, text, **options):  # the sentiment answers are not tokens of the toy vocabulary
        return explain(model, text, answers=(" t1", " t2"), template="t5 {text} t6", **options)

    monkeypatch.setattr(cdt_runs, "explain", toy_explain)
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
