"""`workbench sweep`: a grid of analyses as Ray tasks, against the same analyses run directly in this process.

The checks that need no Ray (bad sweep files, Ray missing, what `--help` imports) come first; one local Ray instance
with 2 CPUs then serves the rest of the module.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from probes.analysis import MASSIVE, MassiveConfig
from workbench.errors import ConfigError
from workbench.store import Store
from workbench.sweep_file import plan_sweep
from workbench.ui.cli import main
from workbench.ui.registry import get

OPTIONS = 'tokens = 256\nseq_len = 32\nbatch_size = 4\nintervention = false\nabs_threshold = 1\nratio_threshold = 2\n'


def _write(tmp_path, text: str, name: str = "sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _massive_file(tmp_path, models, grid: str = "layers = [0, 1]\n", options: str = OPTIONS):
    listed = ", ".join(json.dumps(str(m)) for m in models)
    return _write(tmp_path, f'analysis = "massive"\nmodels = [{listed}]\n[options]\n{options}[grid]\n{grid}')


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    return Store(tmp_path / "runs")


def _contract_message(**values) -> str:
    with pytest.raises(ConfigError) as info:
        MassiveConfig(**values).check()
    return str(info.value)


BAD = [  # (file text, what the one-line error must say)
    ('analysis = "nope"\n', ["unknown analysis 'nope'", "massive", "sparsity", "benchmark"]),
    ('analysis = "massive"\n[grid]\nnope = [1, 2]\n', ["massive has no option 'nope'", "its options: corpus, tokens"]),
    ('analysis = "massive"\n[options]\nseq-len = 0\n', [_contract_message(seq_len=0)]),
    ('analysis = "massive"\n[grid]\nabs_threshold = [1.0, -2.0]\n',
     [_contract_message(abs_threshold=-2.0), "task abs_threshold=-2.0"]),
    ('analysis = "massive"\n[grid]\nseq_len = [32.5]\n', [_contract_message(seq_len=32.5)]),
    ('analysis = "massive"\n[grid]\nlayers = [0, = 1]\nx = 2\n', ["not valid TOML", "line 3, column"]),
    ('analysis = "massive"\nlayers = [0]\n', ["unknown key(s) 'layers'", "accepted: analysis, models, checkpoints"]),
    ('analysis = "massive"\n[grid]\nlayers = []\n', ["layers takes a non-empty list"]),
    ('analysis = "massive"\n[options]\nlayers = [0]\n[grid]\nlayers = [1]\n', ["layers is both in [options] and"]),
    ('analysis = "massive"\nmodels = ["no-such-model"]\n', ["unknown model 'no-such-model'"]),
    ('analysis = "massive"\nmodels = ["toy/no-such-member"]\n', ["no-such-member"]),
    ('analysis = "massive"\nmodels = ["smollm2-135m"]\ncheckpoints = [10]\n', ["'checkpoints' applies to zoo models"]),
    ('analysis = "benchmark"\nmodels = ["toy/induction-2l"]\n', ["benchmark loads no model"]),
    ('analysis = "massive"\n[grid]\ntokens = [1024, 1024]\n', ["tasks 0 and 1 are the same run"]),
    ('models = ["smollm2-135m"]\n', ["name the analysis"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_sweep_files_are_one_line_errors(text, expected, tmp_path, store, capsys):
    assert main(["sweep", str(_write(tmp_path, text)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("workbench sweep: error: "), err
    for part in expected:
        assert part in err, (part, err)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--workers", "0"], "--workers must be >= 1"), (["--retries", "-1"], "--retries must be >= 0"),
    (["--address", "auto", "--workers", "2"], "--workers sets the CPUs of a local Ray instance"),
    (["--device", "cuda"], "--device cuda needs --gpus-per-task"), (["--device", "tpu9"], "tpu9"),
], ids=["workers", "retries", "address-workers", "cuda-no-gpu", "device"])
def test_bad_sweep_flags(argv, expected, tmp_path, store, tiny_gpt2, capsys):
    path = _massive_file(tmp_path, [tiny_gpt2.workbench_spec])
    assert main(["sweep", str(path), *argv]) == 2
    assert expected in capsys.readouterr().err


def test_missing_file_and_ray_not_installed(tmp_path, store, tiny_gpt2, monkeypatch, capsys):
    assert main(["sweep", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert main(["sweep", str(_massive_file(tmp_path, [tiny_gpt2.workbench_spec]))]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "pip install 'interp-workbench[sweep]'" in err
    assert Store().list() == []  # nothing ran


def test_plan_expands_the_grid_and_checkpoints(monkeypatch):
    from workbench import zoo

    monkeypatch.setattr(zoo, "is_built", lambda name: False)  # unbuilt members are accepted (their task builds them)
    doc = {"analysis": "massive", "models": ["toy/induction-2l", "toy/gt-induction"], "checkpoints": [10, 20],
           "options": {"tokens": 512, "abs-threshold": 3},
           "grid": {"layers": [0, [0, 1]], "ratio_threshold": [5, 50.0]}}
    plan = plan_sweep(doc, get)
    assert [t.model for t in plan.tasks[::4]] == ["toy/induction-2l@10", "toy/induction-2l@20", "toy/gt-induction@10",
                                                 "toy/gt-induction@20"]
    assert [t.values for t in plan.tasks[:4]] == [{"layers": [0], "ratio_threshold": 5.0},
                                                  {"layers": [0], "ratio_threshold": 50.0},
                                                  {"layers": [0, 1], "ratio_threshold": 5.0},
                                                  {"layers": [0, 1], "ratio_threshold": 50.0}]
    task = plan.tasks[3]  # every option, as the store records a run of the same config
    assert task.params == json.loads(json.dumps(
        dataclasses.asdict(MassiveConfig(tokens=512, abs_threshold=3.0, layers=[0, 1], ratio_threshold=50.0))))
    assert isinstance(task.params["abs_threshold"], float)
    model_less = plan_sweep({"analysis": "zoo-training", "grid": {"name": ["induction-2l", "gt-induction"]}}, get)
    assert [t.model for t in model_less.tasks] == ["toy/induction-2l", "toy/gt-induction"]  # its model_of


def test_help_imports_no_ray_and_a_dry_run_needs_none(tmp_path, store, tiny_gpt2, monkeypatch, capsys):
    code = ("import sys\nfrom workbench.ui.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('ray', 'torch', 'transformer_lens') if m in sys.modules])")
    for argv in (["sweep", "--help"], ["--help"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout, done.stderr)
    monkeypatch.setitem(sys.modules, "ray", None)  # a dry run works without Ray
    assert main(["sweep", str(_massive_file(tmp_path, [tiny_gpt2.workbench_spec])), "--dry-run"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line[:1].isdigit()]
    assert len(rows) == 2 and all(" to run " in row for row in rows)
    assert "2 tasks, 0 done, 0 skipped (already stored), 0 failed; 2 to run (" in text


def test_runs_of_the_verb_itself_count_as_done(tmp_path, store, tiny_gpt2, capsys):
    spec = tiny_gpt2.workbench_spec
    argv = ["massive", "--model", spec, "--device", "cpu", "--tokens", "256", "--seq-len", "32", "--batch-size", "4",
            "--no-intervention", "--abs-threshold", "1", "--ratio-threshold", "2", "--layers", "1", "--quiet"]
    assert main(argv) == 0
    run_id = Store().latest("massive").run_id
    assert main(["sweep", str(_massive_file(tmp_path, [spec])), "--dry-run", "--json"]) == 0
    rows = _last_json(capsys)["tasks"]
    assert [(r["status"], r["run_id"]) for r in rows] == [("to run", None), ("skipped", run_id)]


def test_a_model_less_analysis_is_matched_by_its_model_of(tmp_path, store, capsys):
    with store.create("zoo-training", model="toy/gt-induction", params={"name": "gt-induction", "config": {}}) as w:
        w.summary["final_loss"] = 0.5  # a stored run as ZOO_TRAINING.save writes it (its result adds "config")
    path = _write(tmp_path, 'analysis = "zoo-training"\n[grid]\nname = ["induction-2l", "gt-induction"]\n')
    assert main(["sweep", str(path), "--dry-run", "--json"]) == 0
    rows = _last_json(capsys)["tasks"]
    assert [(r["model"], r["status"], r["run_id"]) for r in rows] == [
        ("toy/induction-2l", "to run", None), ("toy/gt-induction", "skipped", w.info.run_id)]
    assert rows[1]["headline"] == {"final_loss": 0.5}


# --- on Ray --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs (2 workers) for the module, started the way the verb starts it."""
    from workbench.ui.sweep import import_ray, start_ray

    ray = import_ray()
    assert start_ray(ray, workers=2)
    assert ray.cluster_resources()["CPU"] == 2
    yield ray
    ray.shutdown()


def _same_run(run, model, config: MassiveConfig) -> None:
    """A stored run equals the analysis run directly in this process on the same model and config."""
    direct = MASSIVE.run(model, config)
    stored = run.table("layers")
    assert list(stored.columns) == list(direct.tables["layers"].columns)
    for column in stored.columns:
        a, b = stored[column].to_numpy(), direct.tables["layers"][column].to_numpy()
        if a.dtype.kind == "f":
            assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6), column
        else:
            assert (a == b).all(), column
    tensors = run.tensors("stats")
    for key, value in direct.tensors["stats"].items():
        if value.is_floating_point():
            assert torch.allclose(tensors[key].to(value.dtype), value, rtol=1e-5, atol=1e-6, equal_nan=True), key
        else:
            assert torch.equal(tensors[key], value), key
    assert {k: run.summary[k] for k in ("n_seqs", "n_tokens", "max_layer", "max_dim", "massive_layers")} == \
        {k: direct.summary[k] for k in ("n_seqs", "n_tokens", "max_layer", "max_dim", "massive_layers")}


@pytest.mark.slow
def test_four_task_sweep_on_two_workers_equals_direct_runs_then_skips(local_ray, tmp_path, store, tiny_gpt2,
                                                                      tiny_llama, monkeypatch, capsys):
    import workbench.models

    models = {m.workbench_spec: m for m in (tiny_gpt2, tiny_llama)}
    path = _massive_file(tmp_path, list(models))
    prepared, resolve = [], workbench.models.resolve

    def recording_resolve(spec, build=True):
        if build:
            prepared.append(spec)
        return resolve(spec, build=build)

    monkeypatch.setattr(workbench.models, "resolve", recording_resolve)
    assert main(["sweep", str(path), "--workers", "2", "--json"]) == 0
    assert prepared == sorted(models)  # each model made ready once, here, before the tasks (the workers load them)
    out = _last_json(capsys)
    assert out["sweep"] | {"id": None, "log": None, "seconds": None} == {
        "id": None, "file": str(path), "analysis": "massive", "kind": "massive", "tasks": 4, "done": 4, "skipped": 0,
        "failed": 0, "seconds": None, "store": str(store.root), "log": None}
    rows = out["tasks"]
    assert [(r["model"], r["values"], r["status"], r["attempts"]) for r in rows] == [
        (m, {"layers": [layer]}, "done", 1) for m in models for layer in (0, 1)]
    runs = {r.run_id: r for r in store.list("massive")}
    assert sorted(runs) == sorted(r["run_id"] for r in rows)  # four runs, one per task, nothing else
    assert not [p for p in (store.root / "massive").iterdir() if p.name.startswith(".")]  # no half-written run
    for row in rows:
        run = store.load("massive", row["run_id"])
        assert run.model == row["model"] and run.params["layers"] == row["values"]["layers"]
        assert row["headline"]["n_tokens"] == run.summary["n_tokens"] == 256
        _same_run(run, models[row["model"]], MassiveConfig(**{**run.params, "layers": row["values"]["layers"]}))
    log = store.root / ".sweeps" / out["sweep"]["id"]
    assert json.loads((log / "summary.json").read_text())["tasks"] == rows
    attempts = [json.loads(f.read_text()) for f in log.glob("task-*.json")]
    assert sorted(a["task"] for a in attempts) == [0, 1, 2, 3] and {a["status"] for a in attempts} == {"done"}
    assert {a["threads"] for a in attempts} == {1}  # torch limited to the task's one CPU
    assert len({a["pid"] for a in attempts}) == 2  # two Ray workers shared the four tasks

    assert main(["sweep", str(path), "--workers", "2"]) == 0  # resumed: every run is stored, nothing reruns
    text = capsys.readouterr().out
    assert "4 tasks, 0 done, 4 skipped (already stored), 0 failed" in text
    assert len(store.list("massive")) == 4


@pytest.mark.slow
def test_a_failing_task_is_retried_and_reported(local_ray, tmp_path, store, tiny_gpt2, capsys):
    # layer 7 passes the file's checks (any layer >= 0) but the 2-layer model has none: it fails when it runs
    path = _massive_file(tmp_path, [tiny_gpt2.workbench_spec], grid="layers = [1, 7]\n")
    assert main(["sweep", str(path), "--retries", "2", "--json", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    rows = json.loads(text.strip().splitlines()[-1])["tasks"]
    assert [(r["status"], r["attempts"]) for r in rows] == [("done", 1), ("failed", 3)]  # 1 try + 2 retries
    assert rows[1]["error"].startswith("ConfigError: --layers: layers [7] do not exist")
    assert rows[1]["run_id"] is None and [r.run_id for r in store.list("massive")] == [rows[0]["run_id"]]
    assert main(["sweep", str(path), "--retries", "0", "--quiet"]) == 1  # the done one is skipped, the other fails
    text = capsys.readouterr().out
    assert "0 done, 1 skipped (already stored), 1 failed" in text
    assert "failed: task 1 (" in text and "layers [7] do not exist" in text
