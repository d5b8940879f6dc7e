"""Dictionary training on several processes with torch.distributed, launched by ``torchrun``.

Data parallel (``mode="data"``): every rank holds every dictionary; rank r of W trains on rows
``[r*B/W, (r+1)*B/W)`` of every global batch of B = ``cfg.batch_size`` rows (W must divide B). Each step runs under
:class:`torch.nn.parallel.DistributedDataParallel` (one DDP wrapper per dictionary, around the step's loss), whose
backward averages the gradients over the ranks: with each rank's loss the mean over its B/W rows, the average is the
gradient of the global batch's mean loss, as one process computes it. The batch statistics reduce too: the latents
fired (so the dead-latent counters and AuxK's dead mask agree on every rank), AuxK's normaliser, the logged L0 / MSE
and the data-dependent start. Rank 0 alone writes the checkpoints (the one-process layout); every rank resumes from
them, under any world size (the global batch and its rows do not depend on W). Buffers: a
:class:`~circuits.dictionaries.buffer.TensorBuffer` or :class:`~circuits.dictionaries.shard_buffer.ShardBuffer` built
with ``part=(rank, world)`` hands each rank only its rows (the shard reader reads only those from disk); the live
harvest (:class:`~circuits.dictionaries.buffer.ActivationBuffer`, made by the trainer when no buffer is given) runs the
model over the whole block on every rank, since a rank's rows are spread over every sequence of the block (no forward
pass could be skipped), and then takes its slice of each global batch.

Layer parallel (``mode="layer"``): the dictionaries are split into W equal, contiguous groups (W must divide their
number); rank r trains group r with its own optimisers, on the same blocks (every rank harvests the same blocks
itself: no activations cross ranks). Dictionary i starts from seed ``cfg.seed + i`` as in one process, so each ends
as it would trained alone. Rank 0 receives the others' weights, history and warnings (tensors and JSON sent with
``torch.distributed.send``; nothing is pickled). Checkpoints: ``workdir/layer-<r>-of-<W>/`` per rank (resume with
the same world size).

The process group: ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK (and the rendezvous); :func:`setup` starts the
group from them (``gloo`` on the CPU, ``nccl`` on CUDA with rank r on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from circuits.dictionaries import train as T
from circuits.dictionaries.buffer import check_part
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.train import (
    Communicator,
    DictSpec,
    ResumeMismatchError,
    TrainDictConfig,
    TrainingConfigError,
    TrainResult,
)

MODES = ("data", "layer")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (RANK and WORLD_SIZE in the environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None) -> str:
    """Start the process group from torchrun's environment (once); returns this rank's device: ``cuda:LOCAL_RANK``
    when ``device`` is CUDA (backend nccl), else ``device`` or ``cpu`` (backend gloo).
    TrainingConfigError outside torchrun."""
    if not launched() and not dist.is_initialized():
        raise TrainingConfigError(
            "distributed training needs the process group torchrun sets up (RANK and WORLD_SIZE are not set); "
            "launch with: torchrun --nproc_per_node N -m workbench.ui.cli train-dict ... --parallel data|layer")
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device or "cpu"


def is_writer() -> bool:
    """Whether this process writes results: rank 0, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


class _Step(torch.nn.Module):
    """One dictionary's batch loss as a module, so that DistributedDataParallel sees a forward and a backward."""

    def __init__(self, d: Dictionary, spec: DictSpec, reduce: T.Reduce) -> None:
        super().__init__()
        self.d, self.spec, self._reduce = d, spec, reduce

    def forward(self, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor, auxk_coef: float, log: bool, **options):
        return T._step_losses(self.d, x, y, self.spec, dead, auxk_coef, log=log, reduce=self._reduce, **options)


class DataParallel(Communicator):
    """Data-parallel rank of the current process group: DDP gradients, reduced batch statistics, rank 0 saves."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.part = (self.rank, self.world)
        self.saves = self.rank == 0
        self._ddp: dict[str, torch.nn.parallel.DistributedDataParallel] = {}

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place."""
        dist.all_reduce(t)
        return t

    @property
    def reducer(self) -> T.Reduce:
        return self.reduce

    def losses(self, label, d, x, y, spec, dead, auxk_coef, log, **options):
        if label not in self._ddp:  # made at the first step, after the start (or the resume) every rank shares
            p = d.W_dec
            self._ddp[label] = torch.nn.parallel.DistributedDataParallel(
                _Step(d, spec, self.reduce), device_ids=[p.device.index] if p.is_cuda else None)
        loss, logs, fired = self._ddp[label](x, y, dead, auxk_coef, log, **options)
        flags = fired.to(x.device, torch.uint8)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if logs:
            keys = sorted(logs)
            vals = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=x.device)
            dist.all_reduce(vals)
            logs = {k: float(v) / self.world for k, v in zip(keys, vals.tolist(), strict=True)}
        return loss, logs, flags.to(fired.device).bool()

    def barrier(self) -> None:
        dist.barrier()


class LayerParallel(Communicator):
    """Layer-parallel rank: trains its own group of dictionaries, alone, and saves its own checkpoints."""

    def __init__(self, first_index: int) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.first_index = first_index


def layer_groups(n_dicts: int, world: int) -> list[range]:
    """Dictionary indices of each rank (W equal contiguous groups); TrainingConfigError unless W divides n_dicts."""
    if n_dicts % world:
        raise TrainingConfigError(
            f"layer-parallel training splits the dictionaries evenly over the ranks, but the world size {world} does "
            f"not divide the {n_dicts} dictionaries; use a world size that divides {n_dicts} (or --parallel data)")
    per = n_dicts // world
    return [range(r * per, (r + 1) * per) for r in range(world)]


def check_layer_workdir(workdir: Path, world: int) -> None:
    """ResumeMismatchError when ``workdir`` holds layer-parallel checkpoints of another world size (their groups of
    dictionaries differ: a resume needs the same world size)."""
    other = sorted({p.name.rsplit("-of-", 1)[1] for p in workdir.glob("layer-*-of-*")
                    if (p / "resume").is_dir() and any((p / "resume").iterdir())} - {str(world)})
    if other:
        raise ResumeMismatchError(
            f"{workdir} holds layer-parallel checkpoints made on {' and '.join(other)} ranks, this run has {world}: "
            f"each rank resumes its own group of dictionaries, so resume with the same world size (torchrun "
            f"--nproc_per_node {other[0]}) or use another workdir")


def train_distributed(
    model, source, specs: Sequence[DictSpec], cfg: TrainDictConfig, *, mode: Literal["data", "layer"] = "data",
    buffer=None, workdir: Path | str | None = None, progress: bool = True, device: str | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``specs`` like :func:`circuits.dictionaries.train.train_dictionaries`, on every rank of the process group
    that ``torchrun`` set up (started here when needed, see :func:`setup`); every rank calls it.

    ``mode="data"``: returns the same result on every rank (``buffer``, when given, built with ``part=(rank,
    world)``). ``mode="layer"``: rank 0 returns every dictionary in ``specs`` order, the others their own group.
    Raises TrainingConfigError outside torchrun, for an unknown mode, a world size that does not divide the global
    batch (data) or the number of dictionaries (layer), ResumeMismatchError for a layer-parallel workdir of another
    world size, and whatever training raises.
    """
    if mode not in MODES:
        raise TrainingConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    specs = list(specs)
    device = setup(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    labels = [s.label() for s in specs]
    if len(set(labels)) < len(labels):
        raise TrainingConfigError(f"two dictionaries share a label among {labels}; give them distinct names")
    if mode == "data":
        try:
            part = check_part((rank, world), cfg.batch_size)
        except ValueError as exc:
            raise TrainingConfigError(f"TrainDictConfig.batch_size: {exc}") from exc
        if buffer is not None and getattr(buffer, "part", None) != part:
            raise TrainingConfigError(f"data-parallel training reads its part of every batch: build the buffer with "
                                      f"part={part} (it has part={getattr(buffer, 'part', None)})")
        return T.train_dictionaries(model, source, specs, cfg, workdir=workdir, progress=progress, device=device,
                                    stop_after=stop_after, buffer=buffer, comm=DataParallel())
    groups = layer_groups(len(specs), world)
    if workdir is not None:
        check_layer_workdir(Path(workdir), world)
    if buffer is not None and getattr(buffer, "part", None) is not None:
        raise TrainingConfigError("layer-parallel training reads whole batches: build the buffer without part")
    mine = groups[rank]
    wd = Path(workdir) / f"layer-{rank}-of-{world}" if workdir is not None else None
    result = T.train_dictionaries(model, source, specs[mine.start:mine.stop], cfg, workdir=wd, progress=progress,
                                  device=device, stop_after=stop_after, buffer=buffer,
                                  comm=LayerParallel(mine.start))
    return _gather(result, world, device, cfg.batch_size)


def _send_json(doc: dict, dst: int, device: str) -> None:
    data = torch.frombuffer(bytearray(json.dumps(doc).encode()), dtype=torch.uint8).to(device)
    dist.send(torch.tensor([data.numel()], dtype=torch.int64, device=device), dst)
    dist.send(data, dst)


def _recv_json(src: int, device: str) -> dict:
    n = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(n, src)
    data = torch.empty(int(n), dtype=torch.uint8, device=device)
    dist.recv(data, src)
    return json.loads(bytes(data.cpu().tolist()).decode())


def _gather(result: TrainResult, world: int, device: str, batch_size: int) -> TrainResult:
    """Rank 0: its result joined with every other rank's (dictionaries in rank order, history merged by step)."""
    wire = device if device.startswith("cuda") else "cpu"
    if dist.get_rank() != 0:
        dicts = result.dictionaries
        _send_json({"configs": {lab: d.config() for lab, d in dicts.items()}, "history": result.history,
                    "warnings": result.warnings, "steps": result.steps, "tokens": result.tokens,
                    "seconds": result.seconds}, 0, wire)
        for d in dicts.values():
            for p in d.parameters():
                dist.send(p.detach().to(wire).contiguous(), 0)
        return result
    dicts, by_step, warnings = dict(result.dictionaries), {}, list(result.warnings)
    steps, seconds, t0 = [result.steps], result.seconds, time.perf_counter()
    for row in result.history:
        by_step.setdefault(row["step"], {}).update(row)
    for src in range(1, world):
        head = _recv_json(src, wire)
        for lab, config in head["configs"].items():
            d = Dictionary(**config)
            with torch.no_grad():
                for p in d.parameters():
                    buf = torch.empty(p.shape, dtype=p.dtype, device=wire)
                    dist.recv(buf, src)
                    p.copy_(buf)
            dicts[lab] = d.requires_grad_(False).eval()
        for row in head["history"]:
            by_step.setdefault(row["step"], {}).update(row)
        warnings += [w for w in head["warnings"] if w not in warnings]
        steps.append(head["steps"])
        seconds = max(seconds, head["seconds"])
    if len(set(steps)) > 1:
        warnings.append(f"the ranks made different numbers of steps ({steps})")
    history = [{"step": s, **{k: v for k, v in by_step[s].items() if k != "step"}} for s in sorted(by_step)]
    return TrainResult(dictionaries=dicts, history=history, steps=min(steps), tokens=min(steps) * batch_size,
                       seconds=seconds + time.perf_counter() - t0, warnings=warnings)
