"""The run store: round trips, atomicity, corrupt runs, name checks, listing, deletion."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from workbench.atomic import TMP_PREFIX
from workbench.store import (
    CorruptRunError,
    RunNotFoundError,
    Store,
    new_run_id,
    validate_name,
)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "runs")


def _write(
    store: Store, kind: str = "massive", model: str | None = "m1", run_id: str | None = None, **summary
):
    with store.create(kind, model=model, params={"n": 3}, run_id=run_id) as w:
        w.save_json("doc", {"a": 1})
        w.summary.update(summary)
    return w.info


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, for bit-exact comparison (NaN payloads and -0.0 included)."""
    return t.reshape(-1).contiguous().view(torch.uint8)


def test_tensor_table_json_round_trip(store):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(4, 5, generator=g),
        "bf16": torch.randn(3, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(6, generator=g).half(),
        "i64": torch.arange(10),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "view": torch.randn(8, 8, generator=g)[:, 2],  # non-contiguous view
        "empty": torch.zeros(0, 3),
    }
    tensors["nan_inf"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    df = pd.DataFrame({"layer": [0, 1, 2], "ratio": [1.5, 2.25, float("nan")], "name": ["a", "b", "c"]})
    doc = {"nodes": [{"id": "L0.H1@2", "score": 0.5}], "edges": [], "nested": {"x": [1, 2, None]}}

    with store.create("massive", model="smollm2-135m", params={"batch": 8, "layers": [1, 2]}) as w:
        assert w.path.is_dir() and w.path.name.startswith(TMP_PREFIX)
        w.save_tensors("stats", tensors)
        w.save_table("layers", df)
        w.save_json("circuit", doc)
        w.summary.update({"max_ratio": 812.5, "top_layer": torch.tensor(3)})
    info = w.info
    assert info is not None and info.status == "ok" and info.error is None
    assert info.path == store.root / "massive" / info.run_id
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", info.run_id)

    run = store.load("massive", info.run_id)
    got = run.tensors("stats")
    assert set(got) == set(tensors)
    for key, t in tensors.items():
        assert got[key].dtype == t.dtype and got[key].shape == t.shape
        # bit-exact, NaN included
        assert torch.equal(_bytes(got[key]), _bytes(t)), key
    pd.testing.assert_frame_equal(run.table("layers"), df)
    assert run.json("circuit") == doc
    assert run.params == {"batch": 8, "layers": [1, 2]}
    assert run.summary == {"max_ratio": 812.5, "top_layer": 3}
    assert run.model == "smollm2-135m"
    assert sorted(run.names()) == ["circuit", "layers", "stats"]

    m = run.manifest
    assert m["kind"] == "massive" and m["run_id"] == info.run_id
    assert set(m["versions"]) == {"torch", "transformers", "transformer-lens", "workbench"}
    assert m["versions"]["torch"]
    assert m["created"].endswith("Z") and isinstance(m["seconds"], float) and m["seconds"] >= 0
    assert {a["file"] for a in m["artifacts"]} == {"stats.safetensors", "layers.parquet", "circuit.json"}
    # nothing pickled
    assert not [p for p in info.path.iterdir() if p.suffix in (".pt", ".pkl", ".pickle")]

    with pytest.raises(KeyError, match="stats"):
        run.tensors("nope")


def test_shared_storage_tensors_are_saved(store):
    base = torch.arange(12.0)
    with store.create("k") as w:
        w.save_tensors("t", {"a": base, "b": base, "c": base[2:5]})
    got = store.load("k", w.info.run_id).tensors("t")
    assert torch.equal(got["a"], base) and torch.equal(got["b"], base) and torch.equal(got["c"], base[2:5])


def test_exception_inside_with_leaves_nothing(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.create("massive", run_id="r1") as w:
            w.save_tensors("stats", {"x": torch.ones(3)})
            tmp = w.path
            assert tmp.exists()
            raise RuntimeError("boom")
    assert not tmp.exists()
    assert list((store.root / "massive").iterdir()) == []
    assert store.list() == []
    with pytest.raises(RunNotFoundError):
        store.load("massive", "r1")


def test_unserialisable_summary_leaves_nothing(store):
    with pytest.raises(ValueError, match="JSON"):
        with store.create("massive", run_id="r1") as w:
            w.summary["bad"] = object()
    assert store.list() == []
    assert list((store.root / "massive").iterdir()) == []


def test_stray_temp_folder_is_ignored_and_cleaned(store):
    info = _write(store)
    stray = store.root / "massive" / f"{TMP_PREFIX}r2-deadbeef"
    stray.mkdir()
    (stray / "stats.safetensors").write_bytes(b"half")
    (store.root / f"{TMP_PREFIX}junk").mkdir()
    assert [i.run_id for i in store.list()] == [info.run_id]
    assert store.kinds() == ["massive"]
    assert store.clean_tmp(older_than_s=3600) == 0  # young: maybe still being written
    assert store.clean_tmp(older_than_s=0) == 2
    assert not stray.exists()
    assert [i.run_id for i in store.list()] == [info.run_id]


def test_corrupt_runs_listed_as_corrupt(store):
    good = _write(store, run_id="20240101-000000-aaaaaa")
    base = store.root / "massive"
    (base / "no-manifest").mkdir()
    (base / "bad-json").mkdir()
    (base / "bad-json" / "manifest.json").write_text("{not json")
    # manifest naming a missing artifact
    with store.create("massive", run_id="missing-artifact") as w:
        w.save_tensors("stats", {"x": torch.ones(2)})
    (w.info.path / "stats.safetensors").unlink()
    # artifact file garbled after the fact
    with store.create("massive", run_id="garbled") as w:
        w.save_tensors("stats", {"x": torch.ones(2)})
    (w.info.path / "stats.safetensors").write_bytes(b"\x00garbage")

    infos = {i.run_id: i for i in store.list()}
    assert set(infos) == {good.run_id, "no-manifest", "bad-json", "missing-artifact", "garbled"}
    assert infos[good.run_id].status == "ok"
    assert infos["garbled"].status == "corrupt" and "stats.safetensors" in infos["garbled"].error  # cheap checks
    for rid in ("no-manifest", "bad-json", "missing-artifact"):
        assert infos[rid].status == "corrupt" and infos[rid].error
    assert "manifest" in infos["no-manifest"].error
    assert "stats.safetensors" in infos["missing-artifact"].error
    assert infos["missing-artifact"].model == "m1" or infos["missing-artifact"].model is None

    with pytest.raises(CorruptRunError, match="manifest"):
        store.load("massive", "bad-json")
    with pytest.raises(CorruptRunError, match="stats.safetensors"):
        store.load("massive", "garbled").tensors("stats")
    assert store.latest("massive").run_id == good.run_id


def test_manifest_naming_file_outside_run_is_corrupt(store):
    info = _write(store, run_id="evil")
    manifest = json.loads((info.path / "manifest.json").read_text())
    manifest["artifacts"] = [{"name": "../../x", "type": "json", "file": "../../x.json"}]
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    (got,) = store.list()
    assert got.status == "corrupt" and "artifact name" in got.error


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "a..b", "-x", "sp ace", "é", "a" * 200]
)
def test_bad_names_refused(store, bad):
    with pytest.raises(ValueError, match="letters, digits"):
        store.create(bad)
    with pytest.raises(ValueError, match="letters, digits"):
        store.create("ok", run_id=bad)
    with pytest.raises(ValueError):
        store.load(bad, "x")
    with pytest.raises(ValueError):
        store.delete("ok", bad)
    with pytest.raises(ValueError):
        with store.create("ok") as w:
            w.save_json(bad, {})
    assert not (store.root.parent / "x").exists()


def test_artifact_name_rules(store):
    with store.create("k") as w:
        w.save_json("a.b-c_d", 1)
        with pytest.raises(ValueError, match="reserved"):
            w.save_json("manifest", {})
        with pytest.raises(ValueError, match="already"):
            w.save_json("a.b-c_d", 2)
        w.save_table("a.b-c_d", pd.DataFrame({"x": [1]}))  # another type may share the name
    run = store.load("k", w.info.run_id)
    assert run.json("a.b-c_d") == 1 and len(run.table("a.b-c_d")) == 1
    assert validate_name("L2.H5") == "L2.H5"


def test_list_filters_and_order(store):
    a = _write(store, "massive", "m1", run_id="20240101-000000-aaaaaa")
    b = _write(store, "massive", "m2", run_id="20240101-000001-bbbbbb")
    c = _write(store, "sparsity", "m1", run_id="20240101-000002-cccccc")
    # same-second runs: the created stamp ties, the sortable run id decides
    for info, created in (
        (a, "2024-01-01T00:00:00Z"),
        (b, "2024-01-02T00:00:00Z"),
        (c, "2024-01-03T00:00:00Z"),
    ):
        m = json.loads((info.path / "manifest.json").read_text())
        m["created"] = created
        (info.path / "manifest.json").write_text(json.dumps(m))
    assert [i.run_id for i in store.list()] == [c.run_id, b.run_id, a.run_id]
    assert [i.run_id for i in store.list("massive")] == [b.run_id, a.run_id]
    assert [i.run_id for i in store.list(model="m1")] == [c.run_id, a.run_id]
    assert [i.run_id for i in store.list("massive", "m1")] == [a.run_id]
    assert store.list("absent") == []
    assert store.kinds() == ["massive", "sparsity"]
    assert store.latest("massive").run_id == b.run_id
    assert store.latest("massive", model="m1").run_id == a.run_id
    assert store.latest("absent") is None
    assert store.list("massive")[0].summary == {}


def test_default_run_ids_sort_by_time():
    ids = [new_run_id() for _ in range(3)]
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)
    assert len(set(ids)) == 3


def test_delete_and_not_found(store):
    a = _write(store, run_id="r-a")
    _write(store, run_id="r-b")
    store.delete("massive", "r-a")
    assert not a.path.exists()
    assert [i.run_id for i in store.list()] == ["r-b"]
    with pytest.raises(RunNotFoundError, match="r-b"):
        store.load("massive", "r-a")
    with pytest.raises(LookupError):
        store.delete("massive", "r-a")
    assert not [p for p in (store.root / "massive").iterdir() if p.name.startswith(TMP_PREFIX)]


def test_existing_run_id_refused(store):
    _write(store, run_id="same")
    with pytest.raises(FileExistsError):
        with store.create("massive", run_id="same"):
            pass
    assert len(store.list()) == 1


def test_default_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "elsewhere"))
    s = Store()
    assert s.root == tmp_path / "elsewhere"
    assert s.list() == [] and s.kinds() == []
    _write(s)
    assert len(Store().list()) == 1


def test_writer_outside_with_is_refused(store):
    w = store.create("k")
    with pytest.raises(RuntimeError):
        w.save_json("x", 1)
