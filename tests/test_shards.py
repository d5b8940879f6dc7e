"""Activation shards: writing (round trip, resume after a kill), reading (order, parts, bounded memory, refusals),
training and evaluating from shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from circuits.dictionaries.buffer import TensorBuffer, random_source
from circuits.dictionaries.shard_buffer import HEAD_ROWS, ShardBuffer
from circuits.dictionaries.shard_eval import evaluate_on_shards
from circuits.dictionaries.shard_format import ShardError, ShardFormatError, ShardMismatchError, read_manifest
from circuits.dictionaries.shards import write_shards
from circuits.dictionaries.train import (
    DictSpec,
    NonFiniteActivationError,
    TrainDictConfig,
    build_dictionaries,
    train_dictionaries,
)
from workbench.harvest import harvest

H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"
# 12 batches of 4 x 8 tokens = 384 rows; shards of 40 rows cut batches in the middle
SRC = dict(seq_len=8, batch_size=4, n_batches=12, seed=3)


def _source():
    return random_source(65, **SRC)


def _direct(model, hooks):
    """The real tokens' activations of each hook, harvested directly [N, width] float32."""
    class Keep:
        def __init__(self):
            self.hooks, self.rows = hooks, {h: [] for h in hooks}

        def consume(self, name, act, mask):
            self.rows[name].append(act.reshape(*act.shape[:2], -1)[mask.bool()].float().clone())

    keep = Keep()
    harvest(model, _source()(), [keep], progress=False)
    return {h: torch.cat(r) for h, r in keep.rows.items()}


@pytest.fixture(scope="module")
def shards(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "acts"
    write_shards(tiny_llama, _source(), [H0, H1], folder, shard_rows=40, progress=False)
    return folder


def _all_rows(folder, hook):
    man = read_manifest(folder)
    return torch.cat([load_file(str(folder / s["file"]))[hook] for s in man["shards"]])


def test_shards_hold_exactly_the_directly_harvested_rows(tiny_llama, shards, tmp_path):
    man = read_manifest(shards)
    direct = _direct(tiny_llama, [H0, H1])
    assert man["tokens"] == 384 and man["complete"] and man["widths"] == {H0: 32, H1: 32}
    assert [s["rows"] for s in man["shards"]] == [40] * 9 + [24]
    for h in (H0, H1):
        assert torch.equal(_all_rows(shards, h), direct[h])
    half = write_shards(tiny_llama, _source(), [H0], tmp_path / "bf16", shard_rows=64, dtype=torch.bfloat16,
                        max_tokens=100, progress=False)
    assert half.tokens == 100 and [s["rows"] for s in half.manifest["shards"]] == [64, 36]
    assert torch.equal(_all_rows(tmp_path / "bf16", H0), direct[H0][:100].bfloat16())
    assert write_shards(tiny_llama, _source(), [H0], tmp_path / "bf16", shard_rows=64, dtype=torch.bfloat16,
                        max_tokens=100, progress=False).resumed  # a finished folder is returned as is


class Killed(Exception):
    pass


def test_a_killed_write_resumes_to_byte_identical_shards(tiny_llama, shards, tmp_path):
    def dying():
        def make():
            for i, batch in enumerate(_source()()):
                if i == 7:
                    raise Killed
                yield batch
        return make

    folder = tmp_path / "killed"
    with pytest.raises(Killed):
        write_shards(tiny_llama, dying(), [H0, H1], folder, shard_rows=40, progress=False)
    man = read_manifest(folder)
    assert not man["complete"] and len(man["shards"]) == 5 and man["next"] == [6, 8]  # 7 batches: 224 rows
    (folder / "shard-00005.safetensors").write_bytes(b"torn")  # killed between a shard and its manifest entry
    (folder / ".tmp-shard-x").write_bytes(b"left over")
    with pytest.raises(ShardFormatError, match="did not finish"):
        ShardBuffer(folder, batch_size=8)
    again = write_shards(tiny_llama, _source(), [H0, H1], folder, shard_rows=40, progress=False)
    assert again.resumed and again.tokens == 384
    whole = read_manifest(shards)
    assert again.manifest == whole
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in shards.iterdir())
    for s in whole["shards"]:
        assert (folder / s["file"]).read_bytes() == (shards / s["file"]).read_bytes()
    with pytest.raises(ShardMismatchError, match="shard_rows: folder 40, now 32"):
        write_shards(tiny_llama, _source(), [H0, H1], folder, shard_rows=32, progress=False)


WRITER = textwrap.dedent("""
    import sys, time
    from circuits.dictionaries.buffer import random_source
    from circuits.dictionaries.shards import write_shards
    from workbench.models import load_model

    def slow():
        for batch in random_source(65, seq_len=8, batch_size=4, n_batches=12, seed=3)():
            time.sleep(0.1)
            yield batch

    write_shards(load_model(sys.argv[1], device="cpu"), slow, [sys.argv[3], sys.argv[4]], sys.argv[2],
                 shard_rows=40, progress=False)
""")


@pytest.mark.slow
def test_a_process_killed_mid_write_resumes_to_the_same_shards(tiny_llama, shards, tmp_path):
    folder = tmp_path / "sigkill"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, tiny_llama.workbench_spec, str(folder), H0, H1], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("shard-*"))) < 3:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    man = read_manifest(folder)
    assert not man["complete"] and 2 <= len(man["shards"]) < 9
    write_shards(tiny_llama, _source(), [H0, H1], folder, shard_rows=40, progress=False)
    for s in read_manifest(shards)["shards"]:
        assert (folder / s["file"]).read_bytes() == (shards / s["file"]).read_bytes()


def _lex(rows):
    """Rows sorted lexicographically (a multiset's canonical order)."""
    a = rows.double().numpy()
    return a[np.lexsort(a.T[::-1])]


def test_each_epoch_visits_every_row_once_in_a_seeded_shard_order(shards):
    buf = ShardBuffer(shards, batch_size=8, seed=1, shards_per_block=3, epochs=2)
    assert buf.blocks_per_epoch == 4
    everything = _lex(torch.cat([_all_rows(shards, H0), _all_rows(shards, H1)], 1))
    for epoch in range(2):
        blocks = list(buf.blocks(epoch * 4))[:4]
        assert sorted(s for b in blocks for s in buf.block_shards(b.index)) == list(range(10))
        seen = torch.cat([torch.cat([b.rows[H0], b.rows[H1]], 1)[b.perm] for b in blocks])
        assert np.array_equal(_lex(seen), everything)
    assert buf.shard_order(0) != buf.shard_order(1)
    again = ShardBuffer(shards, batch_size=8, seed=1, shards_per_block=3, epochs=2)
    assert torch.equal(next(again.blocks(5)).batch(2)[H0], list(buf.blocks(5))[0].batch(2)[H0])


def test_parts_of_a_world_of_two_concatenate_to_the_global_batches(shards):
    whole = ShardBuffer(shards, batch_size=16, seed=2, shards_per_block=4)
    ranks = [ShardBuffer(shards, batch_size=16, seed=2, shards_per_block=4, part=(r, 2)) for r in range(2)]
    for full, b0, b1 in zip(whole.blocks(), *(r.blocks() for r in ranks), strict=True):
        assert b0.n_batches == b1.n_batches == full.n_batches
        for i in range(full.n_batches):
            for h in (H0, H1):
                assert torch.equal(torch.cat([b0.batch(i)[h], b1.batch(i)[h]]), full.batch(i)[h])
        n_head = min(full.n_rows, HEAD_ROWS)
        mine = full.perm[: full.n_batches * 16].view(-1, 16)[:, :8]
        assert b0.rows[H0].shape[0] == n_head + int((mine >= n_head).sum())  # the rank read its rows and the head
        assert torch.equal(b0.rows[H0][:n_head], full.rows[H0][:n_head])
    with pytest.raises(ShardError, match="must divide batch_size"):
        ShardBuffer(shards, batch_size=15, part=(0, 2))


SPECS = [DictSpec(H0, activation="topk", k=4, expansion=2), DictSpec(H0, kind="transcoder", hook_out=H1, l1=1e-3,
                                                                      expansion=2)]


def test_training_from_shards_equals_training_from_the_same_rows_in_memory(tiny_llama, tmp_path):
    folder = tmp_path / "even"  # 9 shards of 40 rows: blocks of 3 shards are TensorBuffer blocks of 120 rows
    write_shards(tiny_llama, _source(), [H0, H1], folder, shard_rows=40, max_tokens=360, progress=False)
    cfg = TrainDictConfig(tokens=320, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_seconds=None)
    buf = ShardBuffer(folder, batch_size=16, seed=0, shards_per_block=3)
    order = [s for b in range(buf.blocks_per_epoch) for s in buf.block_shards(b)]
    rows = {h: torch.cat([buf.read_shard(s, h) for s in order]) for h in (H0, H1)}
    mem = TensorBuffer(rows, batch_size=16, block_rows=120, seed=0)
    a = train_dictionaries(tiny_llama, None, SPECS, cfg, progress=False, buffer=buf).dictionaries
    b = train_dictionaries(tiny_llama, None, SPECS, cfg, progress=False, buffer=mem).dictionaries
    c = train_dictionaries(tiny_llama, None, SPECS, cfg, progress=False,
                           buffer=ShardBuffer(folder, batch_size=16, shards_per_block=3, part=(0, 1))).dictionaries
    for lab in a:
        for (n, p), q, r in zip(a[lab].named_parameters(), b[lab].parameters(), c[lab].parameters(), strict=True):
            assert torch.equal(p, q), f"{lab} {n}: shards vs memory"
            assert torch.equal(p, r), f"{lab} {n}: whole blocks vs a world of one"


def test_the_reader_holds_one_block_and_reads_only_its_shards(shards):
    buf = ShardBuffer(shards, batch_size=8, shards_per_block=2, epochs=3)
    refs, alive = [], []
    for block in buf.blocks():
        refs.append(weakref.ref(block.rows[H0]))
        alive.append(sum(r() is not None for r in refs))
        assert block.rows[H0].shape[0] <= 2 * 40
    assert max(alive) == 1 and len(refs) == 15
    assert all(len(shards_read) <= 2 for _, shards_read in buf.reads)


def _fake(folder, *, width=8, tensors=None, **manifest):
    folder.mkdir(parents=True)
    save_file(tensors or {H0: torch.randn(10, width)}, str(folder / "shard-00000.safetensors"))
    man = {"format": "workbench-activation-shards", "version": 1, "model": None, "hooks": [H0], "widths": {H0: width},
           "dtype": "float32", "shard_rows": 10, "shards": [{"file": "shard-00000.safetensors", "rows": 10}],
           "tokens": 10, "complete": True, **manifest}
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


def test_foreign_or_broken_shard_folders_are_refused_naming_what_differs(tiny_llama, shards, tmp_path):
    with pytest.raises(ShardMismatchError, match="written from model .* expected 'smollm2-135m'"):
        ShardBuffer(shards, batch_size=8, expect_model="smollm2-135m")
    ShardBuffer(shards, batch_size=8, expect_model=tiny_llama)  # its own model passes
    with pytest.raises(ShardMismatchError, match=r"no activations of \['blocks.1.hook_resid_post'\]"):
        ShardBuffer(shards, batch_size=8, hooks=["blocks.1.hook_resid_post"])
    with pytest.raises(ShardMismatchError, match="8 wide in the shards, 32 in the model"):
        ShardBuffer(_fake(tmp_path / "narrow"), batch_size=2, expect_model=tiny_llama)
    with pytest.raises(ShardMismatchError, match="other weights"):
        ShardBuffer(_fake(tmp_path / "weights", width=32, model_fingerprint="0" * 16), batch_size=2,
                    expect_model=tiny_llama)
    with pytest.raises(ShardFormatError, match="format 'other', expected 'workbench-activation-shards'"):
        ShardBuffer(_fake(tmp_path / "fmt", format="other"), batch_size=2)
    with pytest.raises(ShardFormatError, match="format version 2"):
        ShardBuffer(_fake(tmp_path / "ver", version=2), batch_size=2)
    with pytest.raises(ShardFormatError, match=r"foreign tensors \['extra'\]"):
        ShardBuffer(_fake(tmp_path / "foreign", tensors={H0: torch.randn(10, 8), "extra": torch.zeros(1)}),
                    batch_size=2)
    with pytest.raises(ShardFormatError, match=r"manifest says F32 \[10, 8\]"):
        ShardBuffer(_fake(tmp_path / "rows", tensors={H0: torch.randn(9, 8)}), batch_size=2)
    gone = _fake(tmp_path / "gone")
    (gone / "shard-00000.safetensors").unlink()
    with pytest.raises(ShardFormatError, match="missing shard"):
        ShardBuffer(gone, batch_size=2)
    cut = _fake(tmp_path / "cut")
    data = (cut / "shard-00000.safetensors").read_bytes()
    (cut / "shard-00000.safetensors").write_bytes(data[:-40])
    with pytest.raises(ShardFormatError, match="unreadable shard .*truncated"):
        ShardBuffer(cut, batch_size=2)
    with pytest.raises(ShardFormatError, match="no manifest.json"):
        ShardBuffer(tmp_path, batch_size=2)


def test_non_finite_activations_are_refused_naming_the_hook(tiny_llama, tmp_path):
    def poison(act, hook=None):  # noqa: ARG001
        act = act.clone()
        act[1, 3, 0] = float("nan")
        return act

    with tiny_llama.hooks(fwd_hooks=[(H1, poison)]), pytest.raises(NonFiniteActivationError, match=f"at {H1}"):
        write_shards(tiny_llama, _source(), [H0, H1], tmp_path / "nan", shard_rows=40, progress=False)
    assert not (tmp_path / "nan" / "shard-00000.safetensors").exists()


def test_evaluation_over_shards_matches_a_float64_reference(shards):
    dicts = build_dictionaries(None, SPECS, seed=5, widths={H0: 32, H1: 32})
    got = evaluate_on_shards(dicts, shards, batch_size=48, progress=False)
    x, y = _all_rows(shards, H0).double(), _all_rows(shards, H1).double()
    for lab, d in dicts.items():
        target = x if d.kind == "sae" else y
        with torch.no_grad():
            out, z = d.double()(x)
        fvu = float((target - out).pow(2).sum() / (target - target.mean(0)).pow(2).sum())
        m = got[lab]
        assert m["tokens"] == 384 and m["l0"] == pytest.approx(float((z > 0).sum()) / 384, rel=1e-9)
        assert m["fvu"] == pytest.approx(fvu, rel=1e-6)
        assert m["dead_fraction"] == pytest.approx(float(((z > 0).sum(0) == 0).double().mean()))


def test_the_command_line_writes_shards_trains_and_evaluates_on_them(tiny_llama, tmp_path, monkeypatch, capsys):
    from circuits.dictionaries.saelens_io import load_dictionary
    from workbench.ui.cli import main

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    spec, out = tiny_llama.workbench_spec, str(tmp_path / "acts")
    common = ["--model", spec, "--seq-len", "16", "--quiet", "--json"]
    assert main(["harvest-shards", *common, "--hooks", f"{H0},{H1}", "--out", out, "--tokens", "600",
                 "--shard-rows", "256", "--device", "cpu"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["tokens"] == 600 and written["shards"] == 3 and written["hooks"] == [H0, H1]
    train = ["train-dict", *common, "--shards", out, "--activation", "topk", "--k", "4", "--expansion", "1",
             "--batch-size", "64", "--eval-tokens", "64", "--warmup", "2"]
    assert main([*train, "--hook", H0, "--tokens", "1024"]) == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"]
    folder = f"{run['path']}/dictionaries/0"
    assert main(["eval-dict", folder, "--model", spec, "--seq-len", "16", "--eval-tokens", "64", "--shards", out,
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    label = next(k for k in summary if k != "eval_tokens")
    want = evaluate_on_shards({"d": load_dictionary(folder)}, out, progress=False)["d"]
    assert summary[label]["shards_fvu"] == pytest.approx(want["fvu"]) and want["tokens"] == 600
    assert main([*train, "--hook", "blocks.1.hook_resid_post", "--tokens", "512"]) == 2
    assert "holds no activations of ['blocks.1.hook_resid_post']" in capsys.readouterr().err
    assert main(["harvest-shards", "--hooks", H0, "--out", out, "--tokens", "0"]) == 2
    assert "--tokens: expected an integer >= 1, got 0" in capsys.readouterr().err
