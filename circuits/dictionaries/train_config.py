"""The settings of dictionary training, checked when made: what to train (:class:`DictSpec`), how
(:class:`TrainDictConfig`), what comes back (:class:`TrainResult`), and the errors training raises.

Every setting has a stated range; :class:`TrainingConfigError` names the option outside it and what is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuits.dictionaries.model import (
    ACTIVATIONS,
    KINDS,
    Dictionary,
    DictionaryConfigError,
)
from circuits.dictionaries.precision import AUTOCAST


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
