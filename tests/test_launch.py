"""Starting verbs from the dashboard: forms generated from argparse, progress read from tqdm, the JSON result."""

from __future__ import annotations

import os

import pytest

from workbench.cli import launch
from workbench.store import Store


def test_verb_options_mirror_argparse():
    specs = {s.dest: s for s in launch.verb_options("runs")}
    assert set(specs) == {"kind", "model"}
    assert specs["kind"].flag == "--kind" and specs["kind"].type == "str" and specs["kind"].default is None
    with pytest.raises(LookupError, match="unknown verb 'nope'.*runs"):
        launch.verb_options("nope")


def test_analysis_verbs_exclude_the_core_verbs():
    assert not set(launch.analysis_verbs()) & launch.NOT_ANALYSES


def test_build_argv_leaves_defaults_and_empty_values_out():
    assert launch.build_argv("runs", {"kind": "massive", "model": ""}) == ["runs", "--kind", "massive", "--json"]
    assert launch.build_argv("runs", {}) == ["runs", "--json"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\r  0%|          | 0/8 [00:00<?, ?it/s]", 0.0),
        ("\r 37%|███▊      | 3/8 [00:01<00:02]\r 50%|█████     | 4/8 [00:02<00:02]", 0.5),
        ("train: |          | 5/20 [00:01<00:04]", 0.25),
        ("no progress here", None),
    ],
)
def test_parse_progress_reads_tqdm(text, expected):
    assert launch.parse_progress(text) == expected


def test_run_verb_returns_the_json_object(tmp_path):
    store = Store(tmp_path / "runs")
    with store.create("massive", model="smollm2-135m"):
        pass
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"))
    result = launch.run_verb(["runs", "--json"], env=env)
    assert [r["kind"] for r in result["runs"]] == ["massive"]


def test_run_verb_raises_with_the_verbs_message(tmp_path):
    with pytest.raises(RuntimeError, match="exit 2.*unrecognized arguments: --bogus"):
        launch.run_verb(["runs", "--bogus"], env=dict(os.environ, WORKBENCH_RUNS=str(tmp_path)))


def test_options_with_several_values_are_split():
    many = [s for verb in launch.analysis_verbs() for s in launch.verb_options(verb) if s.many]
    assert many, "some analysis verb takes several values"
    verb = next(v for v in launch.analysis_verbs() if any(s.many for s in launch.verb_options(v)))
    spec = next(s for s in launch.verb_options(verb) if s.many)
    argv = launch.build_argv(verb, {spec.dest: "1, 2 3"})
    if spec.flag.startswith("-"):
        assert argv[argv.index(spec.flag) + 1 : argv.index(spec.flag) + 4] == ["1", "2", "3"]
    else:
        assert argv[1:4] == ["1", "2", "3"]
