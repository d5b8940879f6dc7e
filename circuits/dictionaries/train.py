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

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from circuits.dictionaries.auxk import auxk_reconstruction
from circuits.dictionaries.buffer import ActivationBuffer, TokenSource
from circuits.dictionaries.fused import relu_code
from circuits.dictionaries.model import (
    ACTIVATIONS,
    KINDS,
    Dictionary,
    DictionaryConfigError,
    _SparseDecode,
    _SparseGatherLinear,
    csr_plan,
    expansion_width,
    release_scratch,
    scratch,
)
from circuits.dictionaries.precision import AUTOCAST, LossScaler, autocast_context, make_adam
from circuits.dictionaries.saelens_io import hook_widths
from workbench.atomic import atomic_dir, clean_stale_tmp, write_json
from workbench.train import _optim_from_tensors, _optim_to_tensors, saved_steps, step_dir


class TrainingConfigError(DictionaryConfigError):
    """A training setting or dictionary spec is outside its valid range (the message names the option)."""


class NonFiniteActivationError(ValueError):
    """The model's activations at a hook hold NaN or Inf values."""


class ResumeMismatchError(ValueError):
    """A workdir's checkpoint was made under other settings, or cannot be read."""


class TrainingDivergedError(RuntimeError):
    """A dictionary's loss or weights became non-finite during training."""


def _bad(owner: str, name: str, value: Any, accepted: str) -> TrainingConfigError:
    return TrainingConfigError(f"{owner}.{name} must be {accepted}, got {value!r}")


def _int(owner: str, name: str, value: Any, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
    """``value`` an integer in [lo, hi] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _bad(owner, name, value, rng + (" or None" if optional else ""))


def _real(owner: str, name: str, value: Any, lo: float, hi: float | None = None, *, lo_open: bool = False,
          hi_open: bool = False, optional: bool = False) -> None:
    """``value`` a finite number in the interval (NaN and Inf refused)."""
    if value is None and optional:
        return
    rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}' + (')' if hi_open else ']')}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        raise _bad(owner, name, value, f"a finite number in {rng}" + (" or None" if optional else ""))


@dataclass
class DictSpec:
    """One dictionary to train: where it reads (``hook_in``) and writes (``hook_out``), its shape and sparsity.

    Valid ranges (checked when made): ``kind`` in KINDS, ``activation`` in ACTIVATIONS, ``expansion`` > 0 finite,
    ``d_sae`` None or >= 1, ``l1`` >= 0 finite, ``k`` (TopK only, required) >= 1 and <= the latent count;
    transcoders need ``hook_out``; an SAE's ``hook_out`` is None or ``hook_in``."""

    hook_in: str
    kind: str = "sae"
    hook_out: str | None = None
    activation: str = "relu"
    expansion: float = 8.0
    d_sae: int | None = None
    l1: float = 1e-3
    k: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise TrainingConfigError naming the first setting outside its range."""
        o = "DictSpec"
        if not isinstance(self.hook_in, str) or not self.hook_in:
            raise _bad(o, "hook_in", self.hook_in, "a hook name such as blocks.0.hook_resid_post")
        if self.kind not in KINDS:
            raise _bad(o, "kind", self.kind, f"one of {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise _bad(o, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        if self.kind != "sae" and not (isinstance(self.hook_out, str) and self.hook_out):
            raise _bad(o, "hook_out", self.hook_out, f"a hook name for a {self.kind} (e.g. blocks.0.hook_mlp_out)")
        if self.kind == "sae" and self.hook_out not in (None, self.hook_in):
            raise _bad(o, "hook_out", self.hook_out, f"None or hook_in ({self.hook_in}) for an SAE")
        _real(o, "expansion", self.expansion, 0, lo_open=True)
        _int(o, "d_sae", self.d_sae, 1, optional=True)
        _real(o, "l1", self.l1, 0)
        if self.activation == "topk":
            _int(o, "k", self.k, 1, self.d_sae)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise _bad(o, "name", self.name, "a non-empty string or None")

    def label(self) -> str:
        """A short name: ``<kind>-<hook_in>-<relu-l1 | topk-k>``, unless ``name`` is given."""
        if self.name:
            return self.name
        sparsity = f"topk{self.k}" if self.activation == "topk" else f"l1-{self.l1:g}"
        return f"{self.kind}-{self.hook_in}-{sparsity}"


#: settings that do not change the trained weights: a resume may change them
RESUME_FREE = ("checkpoint_every", "checkpoint_seconds", "log_every", "spill_dir")
#: fewer optimisation steps than this draw a warning that the budget is too small to train
MIN_STEPS = 200


@dataclass
class TrainDictConfig:
    """Optimisation settings shared by every dictionary of one training pass.

    Valid ranges (checked when made): ``tokens`` >= 1; ``batch_size`` in [1, tokens] (at least one batch);
    ``lr`` > 0; ``warmup_steps`` >= 0; ``max_warmup_fraction`` and ``decay_fraction`` in [0, 1]; ``betas`` in
    [0, 1); ``block_batches`` >= 1; ``seed`` >= 0; ``auxk_coef`` >= 0; ``dead_tokens`` None or >= 1;
    ``checkpoint_every`` >= 1; ``checkpoint_seconds`` None (steps only) or > 0; ``log_every`` >= 1. Every number
    finite. ``checkpoint_seconds``: with a workdir, also checkpoint when this much wall time has passed since
    the last checkpoint. ``autocast``: None (float32), ``"bf16"`` or ``"fp16"``: the step's dense products in that
    precision, weights and Adam state in float32 (:mod:`circuits.dictionaries.precision`)."""

    tokens: int
    batch_size: int = 4096
    lr: float = 4e-4
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    block_batches: int = 16
    seed: int = 0
    auxk_coef: float = 1 / 32
    dead_tokens: int | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    spill_dir: str | None = None
    checkpoint_seconds: float | None = 60.0
    max_warmup_fraction: float = 0.25
    autocast: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise TrainingConfigError naming the first setting outside its range."""
        o = "TrainDictConfig"
        _int(o, "tokens", self.tokens, 1)
        _int(o, "batch_size", self.batch_size, 1)
        if self.batch_size > self.tokens:
            raise TrainingConfigError(
                f"{o}.batch_size ({self.batch_size}) exceeds tokens ({self.tokens}): the budget holds no full batch; "
                "lower batch_size or raise tokens")
        _real(o, "lr", self.lr, 0, lo_open=True)
        _int(o, "warmup_steps", self.warmup_steps, 0)
        _real(o, "max_warmup_fraction", self.max_warmup_fraction, 0, 1)
        _real(o, "decay_fraction", self.decay_fraction, 0, 1)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise _bad(o, "betas", self.betas, "two numbers in [0, 1)")
        for b in self.betas:
            _real(o, "betas", b, 0, 1, hi_open=True)
        _int(o, "block_batches", self.block_batches, 1)
        _int(o, "seed", self.seed, 0)
        _real(o, "auxk_coef", self.auxk_coef, 0)
        _int(o, "dead_tokens", self.dead_tokens, 1, optional=True)
        _int(o, "checkpoint_every", self.checkpoint_every, 1)
        _real(o, "checkpoint_seconds", self.checkpoint_seconds, 0, lo_open=True, optional=True)
        _int(o, "log_every", self.log_every, 1)
        if self.autocast not in AUTOCAST:
            raise _bad(o, "autocast", self.autocast, "None (float32), 'bf16' or 'fp16'")
        if self.spill_dir is not None and Path(self.spill_dir).exists() and not Path(self.spill_dir).is_dir():
            raise _bad(o, "spill_dir", str(self.spill_dir), "a folder (this path is a file)")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    @property
    def warmup(self) -> int:
        """Warm-up steps used: ``warmup_steps``, at most ``max_warmup_fraction`` of the steps."""
        return min(self.warmup_steps, int(self.max_warmup_fraction * self.steps))

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last ``decay_fraction`` of the steps."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        decay_start = int(self.steps * (1 - self.decay_fraction))
        if self.decay_fraction > 0 and step >= decay_start:
            warm = min(warm, (self.steps - step) / max(1, self.steps - decay_start))
        return self.lr * warm

    def dead_after(self) -> int:
        return self.dead_tokens if self.dead_tokens is not None else max(10 * self.batch_size, self.tokens // 10)

    def budget_warnings(self) -> list[str]:
        """What the budget costs the schedule: a cut warm-up, too few steps to train."""
        out = []
        if self.warmup < self.warmup_steps:
            out.append(f"warm-up cut from {self.warmup_steps} to {self.warmup} steps (at most "
                       f"{self.max_warmup_fraction:g} of the {self.steps} steps)")
        if self.steps < MIN_STEPS:
            out.append(f"only {self.steps} optimisation steps (tokens {self.tokens} / batch_size {self.batch_size}): "
                       f"too few to train a dictionary well (at least {MIN_STEPS}); raise tokens or lower batch_size")
        return out


@dataclass
class TrainResult:
    """Trained dictionaries (by label), per-step history rows, steps and tokens done, wall seconds, and warnings
    (budget too small, token source exhausted, latents that stopped firing)."""

    dictionaries: dict[str, Dictionary]
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


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


def _check_block(block, hooks: Sequence[str]) -> None:
    """Refuse a block with non-finite activations, naming the hook."""
    for h in hooks:
        rows = block.rows[h]
        if bool(torch.isfinite(rows.sum())):  # a NaN or Inf makes the sum non-finite (an overflow only may too)
            continue
        if not bool(torch.isfinite(rows).all()):
            bad = int((~torch.isfinite(rows)).any(-1).sum())
            raise NonFiniteActivationError(
                f"the activations at {h} hold NaN or Inf values ({bad} of {rows.shape[0]} rows of buffer block "
                f"{block.index}); check the model's weights and inputs")


def _varies(rows: torch.Tensor, sample: int = 64) -> bool:
    """A quick sufficient test that rows [N, width] pass :func:`constant_warning`'s variance test: a column whose
    values span ``s`` has variance >= s^2 / (2N), the span over a sample of rows bounds the full span from below, and
    twice the float32 sum of squares bounds the exact one from above. False means: run the exact test."""
    n = rows.shape[0]
    if n < 2:
        return False
    part = rows[torch.linspace(0, n - 1, min(sample, n), device=rows.device).long()].double()
    low = float((part.amax(0) - part.amin(0)).pow(2).sum()) / (2 * n)
    high = 2 * float(torch.linalg.vector_norm(rows.float())) ** 2 / n
    return math.isfinite(high) and low > 1e-12 * (high + 1e-30)


def constant_warning(hook: str, rows: torch.Tensor) -> str | None:
    """A warning when a target (rows [N, width]) does not vary: nothing to learn, every latent ends dead."""
    if _varies(rows):
        return None
    rows = rows.double()
    var = float(rows.var(0, unbiased=False).sum()) if rows.shape[0] > 1 else 0.0
    if var > 1e-12 * (float(rows.pow(2).sum(-1).mean()) + 1e-30):
        return None
    return (f"the activations at {hook} are the same at every one of the {rows.shape[0]} tokens of the first buffer "
            "block (no variance): there is nothing to learn, the dictionary's latents will not fire. Does the "
            "model's tokenizer read this text? (a corpus whose every token is unknown gives a constant input)")


#: rows :func:`init_from_data` reads at the start of training (whole global batches, at least this many when the
#: first block holds them)
INIT_ROWS = 4096

#: sums a tensor over the ranks of data-parallel training, in place, and returns it (None: one process)
Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def init_from_data(d: Dictionary, x: torch.Tensor, y: torch.Tensor, ratio: float = 0.1, rows: int | None = 4096,
                   reduce: Reduce | None = None) -> None:
    """Data-dependent start: ``b_dec`` = mean of the target y [N, d_out]; the encoder scaled so that the initial
    reconstruction's centred RMS norm is ``ratio`` times the target's (a small start whatever the activations' scale).
    ``rows``: read the first rows only (None: all). ``reduce``: the rows are this rank's part of the data-parallel
    rows; means are taken over every rank's rows (the same start on every rank, and as one process would make).
    The rows are moved to the dictionary's device."""
    x, y = (x, y) if rows is None else (x[:rows], y[:rows])
    x, y = x.to(d.W_enc.device), y.to(d.W_enc.device)
    if reduce is None:
        d.b_dec.copy_(y.mean(0))
    else:
        total = reduce(torch.cat([y.sum(0), y.new_tensor([float(y.shape[0])])]))
        d.b_dec.copy_(total[:-1] / total[-1])
    if d.activation == "topk":  # the sparse path: no dense code, no dense decoder product
        recon = d.decode_sparse(*d.encode_sparse(x), x)
    else:
        recon = d.decode(d.encode(x), x)
    if reduce is None:
        got = (recon - d.b_dec).pow(2).sum(-1).mean().sqrt()
        want = (y - d.b_dec).pow(2).sum(-1).mean().sqrt()
    else:
        sums = reduce(torch.stack([(recon - d.b_dec).pow(2).sum(), (y - d.b_dec).pow(2).sum()]))
        got, want = (sums / total[-1]).sqrt().unbind()
    if float(got) > 0 and float(want) > 0:
        scale = ratio * want / got
        d.W_enc.mul_(scale)
        d.b_enc.mul_(scale)


def _centred_power(r: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Mean over rows of ``||r - mean(r)||^2`` for r [B, w]; with ``reduce``, over the rows of every rank (r is this
    rank's part of the global batch)."""
    if reduce is None:
        return r.sub(r.mean(0)).pow(2).sum(-1).mean()
    total = reduce(torch.cat([r.sum(0), r.new_tensor([float(r.shape[0])])]))
    mean = total[:-1] / total[-1]
    return reduce(r.sub(mean).pow(2).sum()) / total[-1]


def _step_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec, dead: torch.Tensor,
                 auxk_coef: float, log: bool = True, autocast: str | None = None,
                 reduce: Reduce | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Loss of one batch (x [B, d_in], y [B, d_out]); returns (loss, numbers to log, latents fired [d_sae] bool).
    The logged numbers (L0, MSE, penalty or AuxK) are computed only when ``log`` is true. ``autocast`` (None, "bf16"
    or "fp16"): the precision of the dense products (:mod:`circuits.dictionaries.precision`). ``reduce``: x and y are
    this rank's part of a data-parallel batch; AuxK's normaliser (a batch statistic) is then the global batch's."""
    with autocast_context(autocast, x.device):
        if d.activation == "relu":
            return _relu_losses(d, x, y, spec, log)
        return _topk_losses(d, x, y, dead, auxk_coef, log, reduce)


def _relu_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec,
                 log: bool) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    logs: dict[str, float] = {}
    recon, penalty, z_sum, z = relu_code(x, d.b_dec if d.apply_b_dec_to_input else None, d.W_enc, d.b_enc, d.W_dec)
    out = d._add_skip(recon + d.b_dec, x)
    mse = (out - y).pow(2).sum(-1).mean()
    loss = mse + spec.l1 * penalty
    fired = z_sum > 0  # the code is non-negative: a latent fired in the batch iff its column sum is positive
    if log:
        logs["l0"] = float((z > 0).sum()) / x.shape[0]
        logs["l1"] = float(penalty.detach())
        logs["mse"] = float(mse.detach())
    return loss, logs, fired


def _topk_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor, auxk_coef: float,
                 log: bool, reduce: Reduce | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """TopK: one dense encoder product (to rank the latents), then only the chosen entries: their gradients, the
    k-sparse decoder, and AuxK over the dead latents' columns alone."""
    logs: dict[str, float] = {}
    shift = d.b_dec if d.apply_b_dec_to_input else None
    with torch.no_grad():
        xin = x - shift if shift is not None else x
        if torch.is_autocast_enabled(x.device.type):
            pre = torch.addmm(d.b_enc, xin, d.W_enc)
        else:  # into a buffer reused from step to step (pre is not kept)
            pre = torch.addmm(d.b_enc, xin, d.W_enc, out=scratch("topk_pre", (x.shape[0], d.d_sae), d.W_enc.dtype,
                                                                 x.device))
        vals, idx = pre.topk(d.k, dim=-1, sorted=False)
        plan = csr_plan(idx, d.d_sae)  # one index sort shared by the encoder and decoder gradients
    acts = F.relu(_SparseGatherLinear.apply(x, shift, d.W_enc, d.b_enc, idx, vals, plan))
    out = d._add_skip(_SparseDecode.apply(acts, idx, d.W_dec, plan) + d.b_dec, x)
    mse = (out - y).pow(2).sum(-1).mean()
    loss = mse
    with torch.no_grad():  # fired: a positive activation in the batch (counted without a host sync)
        fired = torch.zeros(d.d_sae, dtype=acts.dtype, device=idx.device).index_add_(
            0, idx.reshape(-1), (acts > 0).reshape(-1).to(acts.dtype)) > 0
    if log:
        logs["l0"] = float((acts > 0).sum()) / x.shape[0]
    n_dead = int(dead.sum())
    if n_dead and auxk_coef > 0:
        k_aux = min(max(1, d.d_in // 2), n_dead)
        e_hat = auxk_reconstruction(d, x, pre, dead, n_dead, k_aux)
        resid = (y - out).detach()
        aux = (e_hat - resid).pow(2).sum(-1).mean() / _centred_power(resid, reduce).clamp_min(1e-12)
        loss = loss + auxk_coef * torch.nan_to_num(aux, 0.0)
        if log:
            logs["auxk"] = float(aux.detach())
    if log:
        logs["mse"] = float(mse.detach())
    return loss, logs, fired


#: the clock of time-based checkpoints (a function returning seconds)
_clock = time.monotonic


def _settings(cfg: TrainDictConfig, specs: Sequence[DictSpec], widths: dict[str, int]) -> dict[str, Any]:
    """The settings a checkpoint records (JSON values): everything that changes the trained weights."""
    config = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in RESUME_FREE}
    return {"config": config, "specs": [json.loads(json.dumps(asdict(s))) for s in specs], "widths": widths}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``name: checkpoint X, now Y`` for every recorded setting that differs (settings a checkpoint lacks are
    not compared)."""
    out = []
    for k, v in now.get("config", {}).items():
        if k in saved.get("config", {}) and saved["config"][k] != v:
            out.append(f"{k}: checkpoint {saved['config'][k]!r}, now {v!r}")
    if "specs" in saved and saved["specs"] != now["specs"]:
        if len(saved["specs"]) != len(now["specs"]):
            out.append(f"specs: checkpoint has {len(saved['specs'])} dictionaries, now {len(now['specs'])}")
        for i, (a, b) in enumerate(zip(saved["specs"], now["specs"], strict=False)):
            out += [f"specs[{i}].{k}: checkpoint {a.get(k)!r}, now {b[k]!r}" for k in b
                    if k != "name" and a.get(k) != b[k]]  # a name only sets the label, compared on its own
    if "widths" in saved and saved["widths"] != now["widths"]:
        out.append(f"hook widths: checkpoint {saved['widths']}, now {now['widths']} (another model?)")
    return out


def _fingerprint(block) -> dict[str, Any]:
    """A few stored rows of a block (its first 4 rows, first 8 columns per hook): a resume re-harvesting the
    block must see the same activations."""
    return {"block": block.index, "rows": {h: r[:4, :8].tolist() for h, r in block.rows.items()}}


def _check_fingerprint(saved: dict[str, Any] | None, block, folder: Path) -> None:
    if not saved or saved.get("block") != block.index:
        return
    for h, rows in saved["rows"].items():
        if h not in block.rows:
            continue
        got = block.rows[h][:4, :8]
        want = torch.tensor(rows, dtype=got.dtype, device=got.device)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise ResumeMismatchError(
                f"{folder}: the activations at {h} differ from those the checkpoint was trained on (another model, "
                "corpus, sequence length or token source?); resume with the same inputs or use another workdir")


def _save(workdir: Path, step: int, position: tuple[int, int], dicts, optims, since, history, settings,
          fingerprint, scalers=None) -> None:
    root = workdir / "resume"
    with atomic_dir(step_dir(root, step), overwrite=True) as tmp:
        for i, (label, d) in enumerate(dicts.items()):
            save_file({n: p.detach().to("cpu", copy=True).contiguous() for n, p in d.named_parameters()},
                      str(tmp / f"d{i}.safetensors"))
            tensors, meta = _optim_to_tensors(optims[label])
            tensors = {k: v.to("cpu") for k, v in tensors.items()}
            tensors["since"] = since[label].to("cpu", copy=True)
            tensors.update(scalers[label].state() if scalers else {})
            save_file(tensors, str(tmp / f"o{i}.safetensors"))
        write_json(tmp / "state.json", {"step": step, "block": position[0], "batch": position[1], "history": history,
                                         "labels": list(dicts), "config": settings["config"],
                                         "specs": settings["specs"], "widths": settings["widths"],
                                         "fingerprint": fingerprint,
                                         "optim": {lab: _optim_to_tensors(o)[1] for lab, o in optims.items()}})
    for old in saved_steps(root):
        if old != step:
            shutil.rmtree(step_dir(root, old), ignore_errors=True)


def _load(workdir: Path, dicts, optims, since, settings=None, scalers=None):
    """Restore the newest checkpoint into ``dicts``/``optims``/``since`` (and fp16 loss ``scalers``): (step, block,
    batch, history,
    fingerprint), or None without one. ResumeMismatchError when it was made under other ``settings``."""
    root = workdir / "resume"
    clean_stale_tmp(root)
    steps = saved_steps(root)
    if not steps:
        return None
    folder = step_dir(root, steps[-1])
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeMismatchError(f"{folder / 'state.json'}: unreadable checkpoint ({exc}); delete {folder} to "
                                  "resume from scratch") from exc
    if state["labels"] != list(dicts):
        raise ResumeMismatchError(f"{folder}: the checkpoint holds {state['labels']}, this run trains {list(dicts)}")
    if settings is not None:
        diffs = _differences(state, settings)
        if diffs:
            raise ResumeMismatchError(
                f"{folder}: the checkpoint was made with other settings ({'; '.join(diffs)}); resume with the "
                f"same settings, or start a fresh run in another workdir")
    for i, (label, d) in enumerate(dicts.items()):
        try:
            weights = load_file(str(folder / f"d{i}.safetensors"))
            tensors = load_file(str(folder / f"o{i}.safetensors"))
        except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
            raise ResumeMismatchError(f"{folder}: unreadable checkpoint weights ({exc}); delete {folder} to resume "
                                      "from scratch") from exc
        with torch.no_grad():
            for n, p in d.named_parameters():
                if n not in weights or weights[n].shape != p.shape:
                    raise ResumeMismatchError(f"{folder}: {label} {n} does not match this run's dictionary shape "
                                              f"{tuple(p.shape)}")
                p.copy_(weights[n])
        since[label] = tensors.pop("since").to(since[label].device)
        scaled = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("scaler.")]}
        if scalers:
            scalers[label].load(scaled)
        optims[label].load_state_dict(_optim_from_tensors(tensors, state["optim"][label]))
    return int(state["step"]), int(state["block"]), int(state["batch"]), list(state["history"]), \
        state.get("fingerprint")


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
