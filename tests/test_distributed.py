"""Data-parallel and layer-parallel dictionary training on 2 gloo processes, checked against one process.

One spawn of 2 ranks (rendezvous through the environment torchrun sets: MASTER_ADDR/PORT, RANK, WORLD_SIZE) runs
the data-parallel run, the refusals, the layer-parallel run, and last a data-parallel run whose rank 1 dies
(``os._exit``) after a checkpoint. The references are one-process runs of the same global batches.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from circuits.dictionaries.buffer import TensorBuffer, random_source
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries
from workbench.train import saved_steps

pytestmark = pytest.mark.distributed

D_IN, D_SAE, BATCH, ROWS, BLOCK = 16, 64, 32, 512, 256
KILL_AT = 10  # the killed rank dies at this step, after the checkpoint of step 8
SHARD_HOOK = "blocks.0.hook_resid_post"


def _rows() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(ROWS, 48, generator=gen) - 1.0)
    a = codes @ torch.randn(48, D_IN, generator=gen) + 0.1 * torch.randn(ROWS, D_IN, generator=gen)
    return {"a": a, "b": torch.tanh(a @ torch.randn(D_IN, D_IN, generator=gen))}


def _cfg(**kw) -> TrainDictConfig:
    base = dict(tokens=ROWS, batch_size=BATCH, lr=1e-2, warmup_steps=2, seed=0, dead_tokens=2 * BATCH,
                checkpoint_every=4, checkpoint_seconds=None, log_every=1)
    return TrainDictConfig(**{**base, **kw})


def _dp_specs() -> list[DictSpec]:
    return [DictSpec("a", activation="relu", d_sae=D_SAE, l1=3e-3, name="relu"),
            DictSpec("a", kind="transcoder", hook_out="b", activation="topk", k=4, d_sae=D_SAE, name="topk")]


def _layer_specs() -> list[DictSpec]:
    return [*_dp_specs(), DictSpec("b", activation="relu", d_sae=D_SAE, l1=1e-3, name="relu-b"),
            DictSpec("b", activation="topk", k=3, d_sae=D_SAE, name="topk-b")]


def _buffer(part=None) -> TensorBuffer:
    return TensorBuffer(_rows(), batch_size=BATCH, block_rows=BLOCK, seed=0, part=part)


def _save(result, path: Path) -> None:
    tensors = {f"{lab}.{n}": p.detach().contiguous() for lab, d in result.dictionaries.items()
               for n, p in d.named_parameters()}
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps({"history": result.history, "steps": result.steps,
                                                     "warnings": result.warnings}))


def _weights(result) -> dict[str, torch.Tensor]:
    return {f"{lab}.{n}": p.detach() for lab, d in result.dictionaries.items() for n, p in d.named_parameters()}


def _environ(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))


def _shard_specs() -> list[DictSpec]:
    return [DictSpec(SHARD_HOOK, activation="relu", d_sae=D_SAE, l1=3e-3, name="relu"),
            DictSpec(SHARD_HOOK, activation="topk", k=4, d_sae=D_SAE, name="topk")]


def _shard_buffer(folder: Path, part=None):
    from circuits.dictionaries.shard_buffer import ShardBuffer

    return ShardBuffer(folder, batch_size=2 * BATCH, seed=0, shards_per_block=2, part=part)


def _scenarios(rank: int, world: int, port: int, out: str) -> None:
    """Rank ``rank``: data parallel (from memory, and from shards), the refusals, layer parallel, a
    killed run; results under ``out``."""
    from circuits.dictionaries.distributed import train_distributed
    from circuits.dictionaries.train import TrainingConfigError

    _environ(rank, world, port)
    out = Path(out)
    dp = train_distributed(None, None, _dp_specs(), _cfg(), mode="data", buffer=_buffer((rank, world)),
                           progress=False)
    _save(dp, out / f"dp-rank{rank}")
    # each rank reads its part of every global batch from the shards
    sharded = train_distributed(None, None, _shard_specs(), _cfg(batch_size=2 * BATCH, tokens=2 * ROWS),
                                mode="data", buffer=_shard_buffer(out / "shards", (rank, world)), progress=False)
    _save(sharded, out / f"shards-rank{rank}")
    errors = {}
    for name, call in [("batch", lambda: train_distributed(None, None, _dp_specs(), _cfg(batch_size=33), mode="data",
                                                           buffer=TensorBuffer(_rows(), batch_size=33))),
                       ("layer", lambda: train_distributed(None, None, _layer_specs()[:3], _cfg(), mode="layer",
                                                           buffer=_buffer())),
                       ("part", lambda: train_distributed(None, None, _dp_specs(), _cfg(), buffer=_buffer()))]:
        try:
            call()
        except TrainingConfigError as exc:
            errors[name] = str(exc)
    (out / f"errors-rank{rank}.json").write_text(json.dumps(errors))
    lp = train_distributed(None, None, _layer_specs(), _cfg(), mode="layer", buffer=_buffer(), progress=False)
    _save(lp, out / f"layer-rank{rank}")
    _killed(rank, world, str(out / "work"))


def _killed(rank: int, world: int, workdir: str) -> None:
    """A data-parallel run whose rank 1 dies at step KILL_AT, after the checkpoint of step 8."""
    from circuits.dictionaries import distributed as D

    class Dying(D.DataParallel):
        calls = 0

        def losses(self, *args, **options):
            self.calls += 1
            if self.rank == 1 and self.calls > KILL_AT * len(_dp_specs()):
                os._exit(3)
            return super().losses(*args, **options)

    train_dictionaries(None, None, _dp_specs(), _cfg(), workdir=workdir, progress=False, buffer=_buffer((rank, world)),
          comm=Dying())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("dist")
    from circuits.dictionaries.shards import write_shards

    write_shards(request.getfixturevalue("tiny_llama"), random_source(64, seq_len=16, batch_size=8, n_batches=20,
                 bos_id=64), [SHARD_HOOK], out / "shards", shard_rows=256, progress=False)
    with pytest.raises(mp.ProcessExitedException) as dead:  # the last scenario kills rank 1
        mp.start_processes(_scenarios, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    assert (dead.value.error_index, dead.value.exit_code) == (1, 3), dead.value
    return out


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(path.with_suffix(".safetensors"))), json.loads(path.with_suffix(".json").read_text())


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 2e-5) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-4, atol=atol), (k, float((got[k] - want[k]).abs().max()))


def test_data_parallel_equals_one_process(runs):
    single = train_dictionaries(None, None, _dp_specs(), _cfg(), buffer=_buffer(), progress=False)
    w0, meta0 = _load(runs / "dp-rank0")
    w1, _ = _load(runs / "dp-rank1")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps the ranks identical
    _close(w0, _weights(single))
    assert meta0["steps"] == single.steps == ROWS // BATCH
    # the logged numbers are the global batch's (reduced over ranks), AuxK ran on dead latents
    for got, want in zip(meta0["history"], single.history, strict=True):
        for lab in ("relu", "topk"):
            assert got[lab]["dead"] == want[lab]["dead"]
            assert got[lab]["mse"] == pytest.approx(want[lab]["mse"], rel=1e-4, abs=1e-6)
            assert got[lab]["l0"] == pytest.approx(want[lab]["l0"], rel=1e-4)
    assert any(r["topk"].get("auxk", 0) > 0 and r["topk"]["dead"] > 0 for r in single.history)
    # the global batch is what matters: a one-process run with half the batch differs
    half = train_dictionaries(None, None, _dp_specs(), _cfg(batch_size=BATCH // 2, tokens=ROWS // 2),
                              buffer=TensorBuffer(_rows(), batch_size=BATCH // 2, block_rows=BLOCK), progress=False)
    assert not torch.allclose(_weights(half)["relu.W_enc"], w0["relu.W_enc"], atol=1e-3)


def test_layer_parallel_equals_one_process(runs):
    single = train_dictionaries(None, None, _layer_specs(), _cfg(), buffer=_buffer(), progress=False)
    w0, meta = _load(runs / "layer-rank0")
    w1, _ = _load(runs / "layer-rank1")
    _close(w0, _weights(single), atol=1e-6)  # the same computation per dictionary, on the same batches
    assert sorted({k.split(".")[0] for k in w1}) == ["relu-b", "topk-b"]  # rank 1 trained the second half
    assert [r["step"] for r in meta["history"]] == [r["step"] for r in single.history]
    assert all(set(r) == set(s) for r, s in zip(meta["history"], single.history, strict=True))


def test_refusals_name_both_numbers(runs):
    for rank in (0, 1):
        errors = json.loads((runs / f"errors-rank{rank}.json").read_text())
        assert "33" in errors["batch"] and "world size (2)" in errors["batch"]
        assert "world size 2" in errors["layer"] and "3 dictionaries" in errors["layer"]
        assert f"part=({rank}, 2)" in errors["part"]  # a buffer without this rank's part would train on every row


def test_outside_torchrun_is_refused(monkeypatch):
    from circuits.dictionaries.distributed import train_distributed
    from circuits.dictionaries.train import TrainingConfigError

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TrainingConfigError, match="torchrun"):
        train_distributed(None, None, _dp_specs(), _cfg(), buffer=_buffer((0, 1)))
    with pytest.raises(TrainingConfigError, match="mode must be one of data, layer"):
        train_distributed(None, None, _dp_specs(), _cfg(), mode="model")


def test_killed_rank_resumes_under_another_world_size(runs):
    workdir = runs / "work"
    assert saved_steps(workdir / "resume") == [8]  # the run was cut short after the checkpoint of step 8
    resumed = train_dictionaries(None, None, _dp_specs(), _cfg(), workdir=workdir, buffer=_buffer(), progress=False)
    single = train_dictionaries(None, None, _dp_specs(), _cfg(), buffer=_buffer(), progress=False)
    _close(_weights(resumed), _weights(single))
    assert resumed.steps == single.steps


def test_train_dict_parallel_outside_torchrun_is_refused(monkeypatch):
    from circuits.dictionaries.analysis import TrainDictionaryConfig
    from workbench.analysis import ConfigError

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="--parallel data runs under torchrun"):
        TrainDictionaryConfig(layer=0, tokens=4096, batch_size=512, parallel="data").check()


def test_parts_of_a_live_harvest_make_the_global_batches(tiny_llama):
    """Each rank's slice of global batch i, from its own ActivationBuffer(part=...), is rows [r*B/W, (r+1)*B/W) of
    the one-process batch i, for every block and batch; a world size not dividing the batch is refused."""
    from circuits.dictionaries.buffer import ActivationBuffer

    source = random_source(64, seq_len=8, batch_size=4, n_batches=6, bos_id=64)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]

    def blocks(part):
        return list(ActivationBuffer(tiny_llama, source, hooks, block_batches=3, batch_size=24, part=part,
                                     device="cpu").blocks())

    whole, parts = blocks(None), [blocks((r, 3)) for r in range(3)]
    assert len(whole) == 2 and all(b.n_batches == 4 for b in whole)
    for j, block in enumerate(whole):
        for i in range(block.n_batches):
            for h in hooks:
                glued = torch.cat([parts[r][j].batch(i)[h] for r in range(3)])
                assert torch.equal(glued, block.batch(i)[h])
    with pytest.raises(ValueError, match=r"batch_size \(24\) is not divisible by the world size \(5\)"):
        ActivationBuffer(tiny_llama, source, hooks, batch_size=24, part=(0, 5))


def test_layer_workdir_of_another_world_size_is_refused(tmp_path):
    from circuits.dictionaries.distributed import check_layer_workdir
    from circuits.dictionaries.train import ResumeMismatchError

    check_layer_workdir(tmp_path, 2)  # nothing there yet
    (tmp_path / "layer-0-of-4" / "resume" / "step-0000008").mkdir(parents=True)
    check_layer_workdir(tmp_path, 4)
    with pytest.raises(ResumeMismatchError, match="made on 4 ranks, this run has 2"):
        check_layer_workdir(tmp_path, 2)


def test_data_parallel_from_shards_equals_one_process(runs):
    """Each rank reads only its part of every global batch from the shards (ShardBuffer(part=...)); the result is
    the one-process run over the same shards (16 steps of 64 rows over 2 blocks of 2 shards)."""
    single = train_dictionaries(None, None, _shard_specs(), _cfg(batch_size=2 * BATCH, tokens=2 * ROWS),
                                buffer=_shard_buffer(runs / "shards"), progress=False)
    w0, meta = _load(runs / "shards-rank0")
    w1, _ = _load(runs / "shards-rank1")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    _close(w0, _weights(single))
    assert meta["steps"] == single.steps == 2 * ROWS // (2 * BATCH)
