"""Starting verbs from the dashboard: forms generated from argparse, progress read from tqdm, the JSON result."""

from __future__ import annotations

import os

import pytest

from workbench.store import Store
from workbench.ui import launch


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


def test_number_lists_are_split_and_texts_are_sent_as_typed():
    prompt = "When Mary and John went to the store, John gave a drink to"
    argv = launch.build_argv("patch", {"prompt": f"{prompt}\n  second, prompt ", "correct": " Mary",
                                       "incorrect": " John", "corrupted": "a\nb", "top_k": "7"})
    i = argv.index("--prompt")
    assert argv[i + 1 : i + 3] == [prompt, "  second, prompt "]
    assert argv[argv.index("--correct") + 1] == " Mary" and argv[argv.index("--top-k") + 1] == "7"
    argv = launch.build_argv("sparsity", {"layers": "1, 2 3", "taus": [0.5, 1.0], "thresholds": True})
    assert argv[argv.index("--layers") + 1 : argv.index("--layers") + 4] == ["1", "2", "3"]
    assert argv[argv.index("--taus") + 1 : argv.index("--taus") + 3] == ["0.5", "1.0"] and "--thresholds" in argv
    assert "--no-intervention" in launch.build_argv("massive", {"intervention": False})
    assert launch.build_argv("tc-circuit", {"prompt": "-x, y"})[1] == "--prompt=-x, y"


def test_the_form_matches_the_parser(capsys):
    """Every analysis verb's form arguments parse back to the values typed."""
    from workbench.ui.cli import build_parser, config_from_args
    from workbench.ui.registry import get

    parser = build_parser()
    argv = launch.build_argv("cdt", {"explain": "I loved it, truly\n it was bad", "top_k": "3", "sign_rule": True})
    args = parser.parse_args(argv)
    cfg = config_from_args(get("cdt").config, args)
    assert cfg.explain == ["I loved it, truly", " it was bad"] and cfg.top_k == 3 and cfg.sign_rule is True


def test_the_shown_command_is_shell_quoted():
    assert launch.shell_command(["paths", "--prompt=a b; rm -rf /"]) == "workbench paths '--prompt=a b; rm -rf /'"


def test_the_form_keeps_files_inside_the_home(tmp_path):
    inside = tmp_path / "work"
    argv = launch.build_argv("train-dict", {"layer": "1", "workdir": str(inside)}, confine=tmp_path)
    assert argv[argv.index("--workdir") + 1] == str(inside)
    for bad in ("/etc", str(tmp_path / ".." / "elsewhere")):
        with pytest.raises(ValueError, match="--workdir .* is outside the workbench's home"):
            launch.build_argv("train-dict", {"layer": "1", "workdir": bad}, confine=tmp_path)
    with pytest.raises(ValueError, match="path .* outside"):
        launch.build_argv("eval-dict", {"path": "/etc/passwd"}, confine=tmp_path)
    assert launch.build_argv("train-dict", {"layer": "1", "workdir": "/etc"})  # the command line takes any path
