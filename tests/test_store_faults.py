"""The run store under faults: deep manifests, damaged artifacts, non-finite tensors, links out, killed writers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from workbench import store as store_mod
from workbench.atomic import STALE_TMP_S, TMP_PREFIX, WRITER_MARKER, atomic_dir, tmp_state
from workbench.store import WHOLE_KIND, CorruptRunError, Store
from workbench.store_checks import safetensors_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "runs")


def _good(store: Store, run_id: str = "good", kind: str = "massive"):
    with store.create(kind, model="m", run_id=run_id) as w:
        w.save_json("doc", {"a": 1})
    return w.info


def _by_id(store: Store, kind: str | None = None) -> dict:
    return {i.run_id: i for i in store.list(kind)}


def _manifest(info) -> dict:
    return json.loads((info.path / "manifest.json").read_text())


def _drop_sizes(info) -> None:
    """Rewrite the manifest without the recorded sizes (as an older writer would have left it)."""
    m = _manifest(info)
    for a in m["artifacts"]:
        a.pop("bytes", None)
    (info.path / "manifest.json").write_text(json.dumps(m))


# --- one bad run never hides the others ---------------------------------------------------------------------------


def test_manifest_nested_100000_deep_leaves_the_other_runs_listed(store):
    good = _good(store)
    deep = store.root / "massive" / "deep"
    deep.mkdir()
    (deep / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecursionError):  # what the manifest does to a plain reader
        json.loads((deep / "manifest.json").read_text())
    infos = _by_id(store)
    assert set(infos) == {"good", "deep"}
    assert infos["good"].ok
    assert infos["deep"].status == "corrupt" and "too deep" in infos["deep"].error
    assert "deep/manifest.json" in infos["deep"].error
    assert store.latest("massive").run_id == good.run_id
    with pytest.raises(CorruptRunError, match="too deep"):
        store.load("massive", "deep")


def test_parseable_but_deep_manifest_is_corrupt(store):
    info = _good(store, "nested")
    m = _manifest(info)
    m["summary"] = {"x": json.loads("[" * 500 + "]" * 500)}  # within the parser's limit, past the store's
    (info.path / "manifest.json").write_text(json.dumps(m))
    (got,) = store.list()
    assert got.status == "corrupt" and "deeper than 64" in got.error


def test_deep_json_artifact_is_a_clear_error(store):
    info = _good(store, "r")
    (info.path / "doc.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    _drop_sizes(info)
    run = store.load("massive", "r")
    with pytest.raises(CorruptRunError, match="doc.json.*too deep"):
        run.json("doc")


def test_any_failure_reading_one_run_is_that_run_corrupt(store, monkeypatch):
    _good(store, "a")
    _good(store, "b")
    real = store_mod._read_manifest

    def failing(run_dir, *args):
        if run_dir.name == "b":
            raise MemoryError("no room")
        return real(run_dir, *args)

    monkeypatch.setattr(store_mod, "_read_manifest", failing)
    infos = _by_id(store)
    assert infos["a"].ok
    assert infos["b"].status == "corrupt" and "MemoryError: no room" in infos["b"].error


# --- damaged artifacts ----------------------------------------------------------------------------------------------


def _run_with_files(store: Store, run_id: str):
    g = torch.Generator().manual_seed(0)
    with store.create("massive", run_id=run_id) as w:
        w.save_tensors("stats", {"a": torch.randn(16, 8, generator=g), "b": torch.arange(5), "e": torch.zeros(0)})
        w.save_table("layers", pd.DataFrame({"layer": range(50), "ratio": torch.rand(50, generator=g).tolist()}))
    return w.info


@pytest.mark.parametrize("recorded_sizes", [True, False])
@pytest.mark.parametrize("artifact", ["stats.safetensors", "layers.parquet"])
def test_truncated_artifact_listed_as_corrupt(store, artifact, recorded_sizes):
    _good(store)
    info = _run_with_files(store, "cut")
    file = info.path / artifact
    data = file.read_bytes()
    if not recorded_sizes:
        _drop_sizes(info)
    assert _by_id(store)["cut"].ok  # whole before the cut
    file.write_bytes(data[: len(data) // 2])
    infos = _by_id(store)
    assert infos["good"].ok
    bad = infos["cut"]
    assert bad.status == "corrupt" and artifact in bad.error
    if recorded_sizes:
        assert f"{len(data) // 2} bytes, but {len(data)} were written" in bad.error
    else:
        assert ("truncated" in bad.error) or ("past the end" in bad.error)
    with pytest.raises(CorruptRunError, match=artifact):
        store.load("massive", "cut")


def test_safetensors_header_check_agrees_with_the_library(tmp_path):
    """Every cut and every padding of a real file is flagged by the header check, as the library refuses it."""
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int16), "c": torch.zeros(0)}, str(path))
    whole = path.read_bytes()
    assert safetensors_problem(path, len(whole), ["a", "b", "c"]) is None
    assert "manifest lists" in safetensors_problem(path, len(whole), ["a", "b"])
    cuts = [0, 3, 7, 8, 9, 40, len(whole) - 25, len(whole) - 1]
    for n in cuts:
        path.write_bytes(whole[:n])
        assert safetensors_problem(path, n) is not None, n
        with pytest.raises(SafetensorError):
            load_file(str(path))
    path.write_bytes(whole + b"\0" * 4)
    assert "padded" in safetensors_problem(path, len(whole) + 4)


def test_parquet_without_magic_is_corrupt(store):
    info = _run_with_files(store, "r")
    _drop_sizes(info)
    file = info.path / "layers.parquet"
    data = bytearray(file.read_bytes())
    data[:4] = b"XXXX"
    file.write_bytes(bytes(data))
    (got,) = store.list()
    assert got.status == "corrupt" and "does not start with the parquet magic" in got.error


# --- non-finite tensors ---------------------------------------------------------------------------------------------


def test_nan_tensor_refused_at_write_time(store):
    with pytest.raises(ValueError, match=r"tensor 'loss' of artifact 'stats' holds 1 NaN and 0 infinite"):
        with store.create("massive", run_id="r") as w:
            w.save_tensors("stats", {"ok": torch.ones(3), "loss": torch.tensor([1.0, float("nan")])},
                           allow_nonfinite=False)
    assert store.list() == [] and not list((store.root / "massive").iterdir())
    with store.create("massive", run_id="named") as w:
        with pytest.raises(ValueError, match="'b'"):
            w.save_tensors("t", {"a": torch.tensor([float("inf")]), "b": torch.tensor([float("nan")])},
                           allow_nonfinite=["a"])
        w.save_tensors("t", {"a": torch.tensor([float("inf")]), "b": torch.ones(2)}, allow_nonfinite=["a"])
        w.save_tensors("ints", {"i": torch.arange(3)}, allow_nonfinite=False)
    run = store.load("massive", "named")
    assert run.tensors("t")["a"].isinf().all()
    (entry,) = [a for a in run.artifacts if a["name"] == "t"]
    assert entry["nonfinite"] == ["a"]


def test_nan_appearing_in_a_stored_tensor_is_refused_at_load(store):
    with store.create("massive", run_id="r") as w:
        w.save_tensors("stats", {"means": torch.tensor([float("nan"), 2.0]), "top": torch.arange(8.0)})
    file = w.info.path / "stats.safetensors"
    # a NaN written by the writer on purpose loads back; one that appears later is corruption
    assert torch.isnan(store.load("massive", "r").tensors("stats")["means"][0])
    data = bytearray(file.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    lo = 8 + header_len + header["top"]["data_offsets"][0]
    data[lo + 12 : lo + 16] = torch.tensor([float("nan")]).view(torch.uint8).numpy().tobytes()
    file.write_bytes(bytes(data))  # same size, header intact: the cheap checks pass
    assert torch.isnan(load_file(str(file))["top"][3])
    (info,) = store.list()
    assert info.ok
    run = store.load("massive", "r")
    with pytest.raises(CorruptRunError, match=r"run massive/r, artifact 'stats' .*tensor 'top' holds NaN"):
        run.tensors("stats")
    with pytest.raises(CorruptRunError, match="tensor 'top'"):
        run.verify()


# --- links out of the store -----------------------------------------------------------------------------------------


def _outside_run(tmp_path: Path, store: Store) -> Path:
    """A whole run folder outside the store (copied from a real one)."""
    info = _good(Store(tmp_path / "elsewhere"), "outside-run", kind="secret")
    return info.path.parent


def test_kind_folder_linked_outside_is_refused(store, tmp_path):
    _good(store)
    outside = _outside_run(tmp_path, store)
    (store.root / "secret").symlink_to(outside, target_is_directory=True)
    infos = store.list()
    assert [i.run_id for i in infos if i.ok] == ["good"]
    (bad,) = [i for i in infos if not i.ok]
    assert bad.kind == "secret" and bad.run_id == WHOLE_KIND
    assert "links outside the store" in bad.error and str(outside.resolve()) in bad.error
    assert [i.run_id for i in store.list("secret")] == [WHOLE_KIND]
    assert store.kinds() == ["massive"]
    with pytest.raises(CorruptRunError, match="outside the store"):
        store.load("secret", "outside-run")
    with pytest.raises(ValueError, match="links outside the store"):
        with store.create("secret", run_id="new"):
            pass
    assert sorted(p.name for p in outside.iterdir()) == ["outside-run"]


def test_run_folder_linked_outside_is_refused_and_deleting_it_removes_only_the_link(store, tmp_path):
    _good(store)
    outside = _outside_run(tmp_path, store) / "outside-run"
    link = store.root / "massive" / "linked"
    link.symlink_to(outside, target_is_directory=True)
    (store.root / "massive" / "dangling").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    (store.root / "massive" / "loop-a").symlink_to(store.root / "massive" / "loop-b")
    (store.root / "massive" / "loop-b").symlink_to(store.root / "massive" / "loop-a")
    infos = _by_id(store)
    assert infos["good"].ok
    assert infos["linked"].status == "corrupt" and "links outside the store" in infos["linked"].error
    assert infos["dangling"].status == "corrupt"
    assert infos["loop-a"].status == "corrupt" and "loop" in infos["loop-a"].error
    with pytest.raises(CorruptRunError, match="outside the store"):
        store.load("massive", "linked")
    with pytest.raises(CorruptRunError, match="dangling: links outside the store"):
        store.load("massive", "dangling")
    store.delete("massive", "linked")
    for name in ("dangling", "loop-a", "loop-b"):
        store.delete("massive", name)
    assert not link.is_symlink() and (outside / "manifest.json").is_file()
    assert [i.run_id for i in store.list()] == ["good"]


@pytest.mark.parametrize("target", ["doc.json", "manifest.json"])
def test_file_linked_outside_is_refused(store, tmp_path, target):
    info = _good(store, "r")
    victim = tmp_path / "victim.json"
    victim.write_bytes((info.path / target).read_bytes())  # same bytes: only the link gives it away
    (info.path / target).unlink()
    (info.path / target).symlink_to(victim)
    (got,) = store.list()
    assert got.status == "corrupt" and "outside the store" in got.error and target in got.error


def test_artifact_swapped_for_a_link_after_opening_is_refused(store, tmp_path):
    info = _good(store, "r")
    run = store.load("massive", "r")
    victim = tmp_path / "victim.json"
    victim.write_text('{"a": 1}')
    (info.path / "doc.json").unlink()
    (info.path / "doc.json").symlink_to(victim)
    with pytest.raises(CorruptRunError, match="outside the store"):
        run.json("doc")


def test_links_inside_the_store_are_accepted(store):
    info = _good(store, "r")
    shared = store.root / "shared-doc.json"
    shared.write_bytes((info.path / "doc.json").read_bytes())
    (info.path / "doc.json").unlink()
    (info.path / "doc.json").symlink_to(shared)
    (got,) = store.list()
    assert got.ok
    assert store.load("massive", "r").json("doc") == {"a": 1}


# --- temporary folders of killed writers ----------------------------------------------------------------------------

_WRITER = """
import os, signal, sys
from workbench.store import Store
with Store(sys.argv[1]).create("massive", run_id=sys.argv[2]) as w:
    w.save_json("doc", {"a": 1})
    print(w.path, flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
"""


def _writer(root: Path, run_id: str, mode: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), run_id, mode], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_killed_writer_leftover_cleaned_and_live_writer_kept(store):
    _good(store)
    killed, killed_tmp = _writer(store.root, "killed", "kill")
    assert killed.wait(60) == -signal.SIGKILL
    live, live_tmp = _writer(store.root, "live", "wait")
    try:
        assert killed_tmp.name.startswith(TMP_PREFIX) and killed_tmp.is_dir()
        assert tmp_state(killed_tmp) == "gone" and tmp_state(live_tmp) == "alive"
        old = time.time() - 2 * STALE_TMP_S
        os.utime(live_tmp, (old, old))  # age alone never removes a live writer's folder
        infos = Store(store.root).list()  # a fresh store object cleans on its first list
        assert [i.run_id for i in infos] == ["good"]
        assert not killed_tmp.exists()
        assert live_tmp.is_dir()
        assert Store(store.root).clean_tmp(older_than_s=0) == 0
        assert live_tmp.is_dir()
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.wait(60) == 0
    finally:
        live.kill()
    assert not live_tmp.exists() and store.load("massive", "live").json("doc") == {"a": 1}
    assert WRITER_MARKER not in os.listdir(store.root / "massive" / "live")


def test_unmarked_leftovers_removed_after_the_age_bound(store):
    _good(store)
    young = store.root / "massive" / f"{TMP_PREFIX}young-00000000"
    old = store.root / "massive" / f"{TMP_PREFIX}old-00000000"
    foreign = store.root / "massive" / f"{TMP_PREFIX}foreign-00000000"
    for d in (young, old, foreign):
        d.mkdir()
    (foreign / WRITER_MARKER).write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-other"}))
    stale = time.time() - STALE_TMP_S - 60
    for d in (old, foreign):
        os.utime(d, (stale, stale))
    assert tmp_state(foreign) == "unknown"
    Store(store.root).list()
    assert young.is_dir() and not old.exists() and not foreign.exists()


def test_reused_pid_counts_as_gone(tmp_path):
    if not Path(f"/proc/{os.getpid()}/stat").is_file():
        pytest.skip("needs /proc to read process start times")
    folder = tmp_path / f"{TMP_PREFIX}x"
    with atomic_dir(tmp_path / "x", mark_writer=True) as tmp:
        assert tmp_state(tmp) == "alive"
        who = json.loads((tmp / WRITER_MARKER).read_text())
        folder = tmp
    assert not (tmp_path / "x" / WRITER_MARKER).exists()
    folder.mkdir()
    (folder / WRITER_MARKER).write_text(json.dumps({**who, "start": "1"}))  # same pid, another process's start
    assert tmp_state(folder) == "gone"
    with atomic_dir(tmp_path / "y") as tmp:  # unmarked by default (other users list the folder's files)
        assert not (tmp / WRITER_MARKER).exists()


def test_subpath_refuses_paths_and_links_out_of_the_run(store, tmp_path):
    with store.create("dictionary", run_id="r") as w:
        (w.path / "dictionaries" / "0").mkdir(parents=True)
        (w.path / "dictionaries" / "0" / "cfg.json").write_text("{}")
        w.save_json("dictionaries", [{"folder": "dictionaries/0"}])
    run = store.load("dictionary", "r")
    assert run.subpath("dictionaries/0") == run.path / "dictionaries" / "0"
    for bad in ("../../x", "/etc", ""):
        with pytest.raises(CorruptRunError):
            run.subpath(bad)
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (run.path / "dictionaries" / "0" / "cfg.json").unlink()
    (run.path / "dictionaries" / "0" / "cfg.json").symlink_to(victim)
    with pytest.raises(CorruptRunError, match="cfg.json: links out of the run"):
        run.subpath("dictionaries/0")
