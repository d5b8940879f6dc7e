"""Training several dictionaries in one pass over the model, resumable after a kill.

Losses (METHODS.md section 1), per token, averaged over the batch:
- ReLU: ``||y - out||^2 + l1 * sum_i z_i * ||W_dec[i]||`` (penalty weighted by decoder norms; the norms are folded
  into the encoder at the end so saved decoders have unit rows and the function is unchanged).
- TopK: ``||y - out||^2 + auxk_coef * AuxK``; AuxK reconstructs the residual ``y - out`` from the top ``d_in // 2``
  pre-activations of the dead latents (not fired in the last ``dead_tokens`` tokens), normalised by the residual's
  variance (as in Gao et al. 2024). Decoder rows are kept at unit norm (the gradient's component along each row is
  removed before the step, the rows renormalised after it). TopK runs the sparse path: only the k chosen decoder
  rows and encoder columns get gradients; AuxK ranks the dead latents among their own columns
  (:mod:`circuits.dictionaries.auxk`). Adam is torch's fused kernel where the device has one; ``autocast`` runs the
  dense products in bf16 or fp16 with float32 master weights (:mod:`circuits.dictionaries.precision`).
``b_dec`` starts at the mean of the target over the first global batches (at least 4096 rows where the first
block holds them) and the encoder is scaled so the first reconstructions are small (:func:`init_from_data`). Adam
with linear warm-up (``warmup_steps``, cut to ``max_warmup_fraction`` of the steps for short budgets), then a
constant learning rate, then a linear decay to zero over the last ``decay_fraction`` of the steps.

Every setting has a stated range, checked when the config or spec is made (:class:`TrainingConfigError` names the
option); the memory the dictionaries need is estimated and refused before anything is allocated when it cannot fit.
Non-finite activations stop the run naming the hook. A budget too small to train, a token source that runs out,
activations that do not vary, or latents that stopped firing are reported in :attr:`TrainResult.warnings`.

Resume: with a ``workdir``, every ``checkpoint_every`` steps and every ``checkpoint_seconds`` of wall time the
weights, Adam state and dead-latent counters of every dictionary and the buffer position (block, batch) are written
atomically to ``workdir/resume/step-<N>/``, with the settings of the run. Starting again with the same settings
continues from there and ends with the same weights as an uninterrupted run; other settings are refused
(:class:`ResumeMismatchError` names them).

Several processes: a :class:`Communicator` says which rank this process is and reduces across ranks (this module's
one does nothing; :mod:`circuits.dictionaries.distributed` gives the torch.distributed ones, data parallel and layer
parallel). Under data parallelism the global batch, its rows and the checkpoints are those of one process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import ActivationBuffer, TokenSource
from circuits.dictionaries.model import (
    Dictionary,
    expansion_width,
    release_scratch,
)
from circuits.dictionaries.precision import LossScaler, make_adam
from circuits.dictionaries.saelens_io import hook_widths
from circuits.dictionaries.train_config import (
    MIN_STEPS,
    RESUME_FREE,
    DictSpec,
    NonFiniteActivationError,
    ResumeMismatchError,
    TrainDictConfig,
    TrainingConfigError,
    TrainingDivergedError,
    TrainResult,
    _bad,
    _int,
    _real,
)
from circuits.dictionaries.train_resume import (
    _check_fingerprint,
    _differences,
    _fingerprint,
    _load,
    _save,
    _settings,
)
from circuits.dictionaries.train_step import (
    INIT_ROWS,
    Reduce,
    _centred_power,
    _check_block,
    _relu_losses,
    _step_losses,
    _topk_losses,
    _varies,
    constant_warning,
    init_from_data,
)

#: the trainer's names, with those of the modules it is split into (settings, resume, step), which callers
#: reach through this module
__all__ = [
    "Communicator",
    "DictSpec",
    "INIT_ROWS",
    "MIN_STEPS",
    "NonFiniteActivationError",
    "RESUME_FREE",
    "Reduce",
    "ResumeMismatchError",
    "TrainDictConfig",
    "TrainResult",
    "TrainingConfigError",
    "TrainingDivergedError",
    "_available_bytes",
    "_bad",
    "_centred_power",
    "_check_block",
    "_check_fingerprint",
    "_clock",
    "_differences",
    "_fingerprint",
    "_int",
    "_load",
    "_real",
    "_relu_losses",
    "_save",
    "_schedule_end",
    "_settings",
    "_step_losses",
    "_topk_losses",
    "_varies",
    "build_dictionaries",
    "check_memory",
    "constant_warning",
    "init_from_data",
    "train_dictionaries",
    "training_bytes",
    "training_device",
]


def _available_bytes(device: torch.device | str | None = None) -> int | None:
    """Memory this process may still take on ``device`` (a GPU's free memory, else MemAvailable), None where
    unknown."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def training_bytes(d_in: int, d_sae: int, d_out: int, batch_size: int, skip: bool = False) -> int:
    """Estimated float32 bytes to train one dictionary: weights, gradients and two Adam moments (4 copies of the
    parameters) plus about three [batch_size, d_sae] buffers of one step's codes."""
    params = d_in * d_sae + d_sae + d_sae * d_out + d_out + (d_in * d_out if skip else 0)
    return 4 * (4 * params + 3 * batch_size * d_sae)


def check_memory(shapes: Sequence[tuple[str, int, int, int, bool]], batch_size: int,
                 available: int | None = None, device: torch.device | str | None = None) -> int:
    """Refuse dictionaries (label, d_in, d_sae, d_out, skip) whose training cannot fit in memory; returns the
    estimated bytes. ``available`` defaults to the free memory of ``device`` (the machine's for the CPU)."""
    need = sum(training_bytes(a, b, c, batch_size, s) for _, a, b, c, s in shapes)
    available = _available_bytes(device) if available is None else available
    if available is not None and need > available:
        sizes = ", ".join(f"{lab}: d_sae {b:,}" for lab, _, b, _, _ in shapes[:3])
        if len(shapes) > 3:
            sizes += f" and {len(shapes) - 3:,} more dictionaries"
        raise TrainingConfigError(
            f"training these dictionaries needs about {need / 2**30:.2f} GiB of {torch.device(device or 'cpu')} "
            f"memory (weights, gradients, Adam "
            f"state and one batch of codes; {sizes}) but {available / 2**30:.2f} GiB is available; lower expansion, "
            "d_sae or batch_size")
    return need


def build_dictionaries(model, specs: Sequence[DictSpec], seed: int = 0, widths: dict[str, int] | None = None,
                       batch_size: int | None = None, device: torch.device | str | None = None,
                       ) -> dict[str, Dictionary]:
    """Randomly initialised dictionaries for ``specs`` with widths read from the model's hooks (or ``widths``),
    on ``device`` (default the CPU; the random draws are the same on every device).

    With ``batch_size``, the memory training needs on ``device`` is estimated first (:func:`check_memory`) and
    refused, before anything is allocated, when it cannot fit."""
    hooks = sorted({s.hook_in for s in specs} | {s.hook_out or s.hook_in for s in specs})
    widths = widths if widths is not None else hook_widths(model, hooks)
    missing = [h for h in hooks if h not in widths]
    if missing:
        raise ValueError(f"no activations for hooks {missing}; the buffer holds {sorted(widths)}")
    shapes, labels = [], set()
    for s in specs:
        label = s.label()
        if label in labels:
            raise ValueError(f"two dictionaries share the label {label!r}; give them distinct names")
        labels.add(label)
        d_in = widths[s.hook_in]
        d_sae = s.d_sae or expansion_width(d_in, s.expansion)
        if s.activation == "topk" and s.k > d_sae:
            raise TrainingConfigError(f"DictSpec.k ({s.k}) of {label} exceeds its {d_sae} latents (d_in {d_in} x "
                                      f"expansion {s.expansion:g}); accepted: 1 <= k <= {d_sae}")
        d_out = widths[s.hook_out] if s.kind != "sae" and s.hook_out else d_in
        shapes.append((label, d_in, d_sae, d_out, s.kind == "skip_transcoder"))
    if batch_size is not None:
        check_memory(shapes, batch_size, device=device)
    out: dict[str, Dictionary] = {}
    for i, (s, (label, d_in, d_sae, d_out, _)) in enumerate(zip(specs, shapes, strict=True)):
        out[label] = Dictionary.create(
            s.kind, d_in, d_sae, activation=s.activation, k=s.k, hook_in=s.hook_in,
            hook_out=s.hook_out if s.kind != "sae" else None, d_out=d_out if s.kind != "sae" else None,
            seed=seed + i, device=device,
        )
    return out


def training_device(model, device: torch.device | str | None = None) -> torch.device:
    """The device training runs on: ``device`` when given, else the model's (its first parameter's), else the CPU."""
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None) if model is not None and hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")



#: the clock of time-based checkpoints (a function returning seconds)
_clock = time.monotonic



def _schedule_end(step: int, total: int, stop_after: int | None, batch_size: int, warnings: list[str]) -> bool:
    """Whether a training loop that stopped at ``step`` of ``total`` finished its call (False only when stopped by
    ``stop_after``); a warning when the token source ran out first; TrainingConfigError when no step was made."""
    finished = step >= total or stop_after is None
    if step < total and stop_after is None:
        warnings.append(f"the token source ran out after {step * batch_size} training tokens ({step} steps) of "
                        f"the {total * batch_size} planned ({total} steps); the schedule did not finish")
    if step == 0 and finished:
        raise TrainingConfigError(f"no training step was made: the token source gave no batch of {batch_size} "
                                  "rows; lower batch_size or give more text")
    return finished


class Communicator:
    """What one training process knows of the others. This one is a single process (rank 0 of 1): it reduces
    nothing, and wraps nothing. :mod:`circuits.dictionaries.distributed` subclasses it for torch.distributed.

    rank, world: this process and the process count; part: (rank, world) when each rank trains on its part of every
    global batch (data parallel), else None; first_index: the index among all specs of this process's first
    dictionary (its initialisation seed is ``seed + index``); saves: whether this process writes checkpoints."""

    rank: int = 0
    world: int = 1
    part: tuple[int, int] | None = None
    first_index: int = 0
    saves: bool = True

    @property
    def reducer(self) -> Reduce | None:
        """Sums a tensor over the ranks that share each global batch, in place (None: this process holds the whole
        global batch)."""
        return None

    def losses(self, label: str, d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec,
               dead: torch.Tensor, auxk_coef: float, log: bool,
               **options: Any) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """One batch's (loss, logged numbers, latents fired [d_sae] bool) of dictionary ``label``; the gradient of
        ``loss.backward()`` is that of the global batch, the logged numbers and fired latents the global batch's.
        ``options`` go to the step's loss function."""
        return _step_losses(d, x, y, spec, dead, auxk_coef, log=log, **options)

    def barrier(self) -> None:
        """Wait for every rank."""


def _init_batches(block, batch_size: int) -> dict[str, torch.Tensor]:
    """This rank's rows of the first global batches (of ``batch_size`` rows) of ``block``: at least INIT_ROWS rows
    in all where the block holds them (a data-parallel block's own batches may be the rank's B / W rows)."""
    m = max(1, min(block.n_batches, -(-INIT_ROWS // batch_size)))
    parts = [block.batch(j) for j in range(m)]
    return {h: torch.cat([p[h] for p in parts]) for h in parts[0]}


def train_dictionaries(
    model, source: TokenSource, specs: Sequence[DictSpec], cfg: TrainDictConfig, *, workdir: Path | str | None = None,
    progress: bool = True, device: str | None = None, stop_after: int | None = None, buffer=None,
    comm: Communicator | None = None,
) -> TrainResult:
    """Train one dictionary per spec on activations harvested from ``model`` over ``source`` (one pass for all).

    ``buffer``: instead of ``model`` and ``source``, any object with ``blocks(start_block)`` and ``widths()`` such as
    :class:`circuits.dictionaries.buffer.TensorBuffer` (activations already in memory).
    ``device``: where the harvest runs and where the dictionaries, their Adam state, the dead-latent counters and
    every batch live during training (default: the model's device, or the CPU without a model); buffer blocks stay
    in host memory and each batch is copied to the device as it is used.
    ``stop_after`` ends the call after that many steps in total (used to test resumption); the run then continues
    from ``workdir`` when called again. Returns :class:`TrainResult` (dictionaries on the CPU, in eval form).
    ``comm``: this process's :class:`Communicator` among several (default: one process); a data-parallel buffer
    must be built with ``part=comm.part``.

    Raises TrainingConfigError (a setting out of range, sizes that cannot fit in memory, a batch larger than a
    buffer block), NonFiniteActivationError (NaN/Inf activations, naming the hook), ResumeMismatchError (a
    workdir checkpoint made under other settings) and TrainingDivergedError.
    """
    specs = list(specs)
    comm = comm if comm is not None else Communicator()
    cfg.check()
    for s in specs:
        s.check()
    if not specs:
        raise TrainingConfigError("train_dictionaries needs at least one DictSpec")
    workdir = Path(workdir) if workdir is not None else None
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise TrainingConfigError(f"workdir {workdir} is a file; give a folder for resume checkpoints")
    if stop_after is not None:
        _int("train_dictionaries", "stop_after", stop_after, 0)
    dev = training_device(model, device)
    dicts = build_dictionaries(model, specs, seed=cfg.seed + comm.first_index,
                               widths=buffer.widths() if buffer is not None else None, batch_size=cfg.batch_size,
                               device=dev)
    spec_of = dict(zip(dicts, specs, strict=True))
    widths = {}
    for d in dicts.values():
        widths[d.hook_in], widths[d.hook_out] = d.d_in, d.d_out
    settings = _settings(cfg, specs, dict(sorted(widths.items())))
    optims = {lab: make_adam(d.parameters(), cfg.lr, cfg.betas) for lab, d in dicts.items()}
    scalers = {lab: LossScaler(cfg.autocast, dev) for lab in dicts}
    since = {lab: torch.zeros(d.d_sae, dtype=torch.long, device=dev) for lab, d in dicts.items()}
    hooks = sorted({d.hook_in for d in dicts.values()} | {d.hook_out for d in dicts.values()})
    if buffer is None:
        buffer = ActivationBuffer(model, source, hooks, block_batches=cfg.block_batches, batch_size=cfg.batch_size,
                                  seed=cfg.seed, spill_dir=cfg.spill_dir, device=str(dev), part=comm.part)
    step, start_block, start_batch, history, saved_print = 0, 0, 0, [], None
    if workdir is not None:
        loaded = _load(workdir, dicts, optims, since, settings, scalers)
        if loaded:
            step, start_block, start_batch, history, saved_print = loaded
        comm.barrier()  # every rank has read the checkpoint before one writes the next
    total, dead_after, t0 = cfg.steps, cfg.dead_after(), time.perf_counter()
    warnings = cfg.budget_warnings()
    bar = tqdm(total=total, initial=step, desc="train-dict", unit="step", disable=not progress or comm.rank != 0)
    last_save, first = _clock(), True
    for block in buffer.blocks(start_block) if step < total else ():
        _check_block(block, hooks)
        if first:
            if block.n_batches == 0 and step == 0:
                raise TrainingConfigError(
                    f"TrainDictConfig.batch_size ({cfg.batch_size}) exceeds the {block.n_rows} rows of one buffer "
                    f"block ({cfg.block_batches} token batches): no training batch; lower batch_size or raise "
                    "block_batches")
            _check_fingerprint(saved_print, block, workdir / "resume" if workdir else Path("."))
            first = False
        if step == 0 and start_batch == 0:
            first_rows = _init_batches(block, cfg.batch_size)
            for d in dicts.values():
                flat = constant_warning(d.hook_out, block.rows[d.hook_out])
                if flat and flat not in warnings:
                    warnings.append(flat)
                init_from_data(d, first_rows[d.hook_in], first_rows[d.hook_out], rows=None, reduce=comm.reducer)
        fingerprint = None
        for i in range(start_batch, block.n_batches):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            batch = {h: t.to(dev, non_blocking=True) for h, t in block.batch(i).items()}
            row = {"step": step}
            log = step % cfg.log_every == 0 or step == total - 1
            for lab, d in dicts.items():
                for group in optims[lab].param_groups:
                    group["lr"] = cfg.lr_at(step)
                loss, logs, fired = comm.losses(lab, d, batch[d.hook_in], batch[d.hook_out], spec_of[lab],
                                                since[lab] >= dead_after, cfg.auxk_coef, log, autocast=cfg.autocast)
                if log and not math.isfinite(logs["mse"]):
                    raise TrainingDivergedError(f"{lab}: the reconstruction loss became {logs['mse']} at step {step}; "
                                                f"lower lr (now {cfg.lr:g})")
                optims[lab].zero_grad(set_to_none=True)
                scalers[lab].backward(loss)
                if d.activation == "topk":
                    d.remove_parallel_gradient()
                scalers[lab].step(optims[lab])
                if d.activation == "topk":
                    with torch.no_grad():
                        d.W_dec.div_(d.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
                since[lab] += cfg.batch_size
                since[lab].masked_fill_(fired, 0)
                if log:
                    row[lab] = {**logs, "dead": int((since[lab] >= dead_after).sum())}
            if len(row) > 1:
                history.append(row)
            step += 1
            bar.update(1)
            timed = cfg.checkpoint_seconds is not None and _clock() - last_save >= cfg.checkpoint_seconds
            if workdir is not None and comm.saves and (step % cfg.checkpoint_every == 0 or step == total or timed):
                nxt = (block.index, i + 1) if i + 1 < block.n_batches else (block.index + 1, 0)
                fingerprint = fingerprint or _fingerprint(block)
                _save(workdir, step, nxt, dicts, optims, since, history, settings, fingerprint, scalers)
                last_save = _clock()
        start_batch = 0
        if step >= total or (stop_after is not None and step >= stop_after):
            break
    bar.close()
    finished = _schedule_end(step, total, stop_after, cfg.batch_size, warnings)
    for lab, d in dicts.items():
        bad = [n for n, p in d.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDivergedError(f"{lab}: the weights {bad} became NaN or Inf by step {step}; lower lr "
                                        f"(now {cfg.lr:g})")
        if finished and step > 0:
            n_dead = int((since[lab] >= dead_after).sum())
            if n_dead == d.d_sae:
                warnings.append(f"{lab}: all {d.d_sae} latents are dead (none fired in the last {dead_after} "
                                "training tokens)")
            elif n_dead > d.d_sae // 2:
                warnings.append(f"{lab}: {n_dead} of {d.d_sae} latents are dead (did not fire in the last "
                                f"{dead_after} training tokens)")
    if finished:
        for d in dicts.values():
            if d.activation == "relu":
                d.normalize_decoder()
    release_scratch()
    for d in dicts.values():
        d.requires_grad_(False)
        d.to("cpu")
        d.eval()
    return TrainResult(dictionaries=dicts, history=history, steps=step, tokens=step * cfg.batch_size,
                       seconds=time.perf_counter() - t0, warnings=warnings)
