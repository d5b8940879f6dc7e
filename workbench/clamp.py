"""Clamps: an activation fixed at every training step of a window (Singh et al. 2024, "What needs to go right for an
induction head?").

A :class:`Clamp` names a component of a Llama-style Hugging Face model, what replaces it, and the steps
``[start, end)`` it applies to:

- ``L{l}.H{h}.pattern``: a head's attention pattern; ``zero`` | ``mean`` | ``running-mean`` | ``uniform`` (equal
  weight on every visible key) | ``previous-token`` (all weight on position - 1; position 0 on itself);
- ``L{l}.H{h}.output``: a head's output (its slice of the input of ``o_proj``); ``zero`` | ``mean`` | ``running-mean``;
- ``L{l}.attn``, ``L{l}.mlp``: a layer's attention or MLP output; ``zero`` | ``mean`` | ``running-mean``.

``mean`` is the batch mean at each position (detached: no gradient flows through it); ``running-mean`` an
exponential moving average (momentum 0.9) of those batch means over the steps the clamp was active (not kept in
resume checkpoints: a resumed run restarts the average). Text form: ``COMPONENT=WHAT[@START:END]`` (END empty: to
the end), e.g. ``L1.H0.pattern=uniform@0:500``.

:class:`ClampIntervention` applies clamps during :func:`workbench.train.train_causal_lm` with forward hooks (head
and layer outputs) and the workbench attention function (patterns, :mod:`workbench.attention_override`, switched on
only at steps where a pattern clamp is active). With no clamp active the model runs exactly as without the
intervention, so a run with no clamps (or clamps outside the trained steps) is bit for bit the unclamped run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.attention_override import attention_modules, set_override
from workbench.errors import ConfigError

PATTERN_WHATS = ("zero", "mean", "running-mean", "uniform", "previous-token")
OUTPUT_WHATS = ("zero", "mean", "running-mean")
MOMENTUM = 0.9
_COMPONENT = re.compile(r"^L(\d+)\.(?:H(\d+)\.(pattern|output)|(attn|mlp))$")
_TEXT = re.compile(r"^([^=@]+)=([a-z-]+)(?:@(\d*):(\d*))?$")


@dataclass(frozen=True)
class Clamp:
    """``component`` replaced by ``what`` at every training step in ``[start, end)`` (``end`` None: to the end)."""

    component: str
    what: str
    start: int = 0
    end: int | None = None

    def active(self, step: int) -> bool:
        return self.start <= step and (self.end is None or step < self.end)

    def parts(self) -> tuple[int, int | None, str]:
        """(layer, head or None, kind: pattern | output | attn | mlp); ConfigError for a malformed name."""
        m = _COMPONENT.match(self.component)
        if not m:
            raise ConfigError(f"clamp component {self.component!r} is not of the form L<l>.H<h>.pattern, "
                              "L<l>.H<h>.output, L<l>.attn or L<l>.mlp")
        layer = int(m.group(1))
        return (layer, int(m.group(2)), m.group(3)) if m.group(2) is not None else (layer, None, m.group(4))

    def text(self) -> str:
        window = "" if self.start == 0 and self.end is None else f"@{self.start}:{'' if self.end is None else self.end}"
        return f"{self.component}={self.what}{window}"


def parse_clamp(text: str) -> Clamp:
    """A clamp from its text form ``COMPONENT=WHAT[@START:END]``; ConfigError naming what is accepted."""
    m = _TEXT.match(text.strip())
    if not m:
        raise ConfigError(f"clamp {text!r} is not COMPONENT=WHAT[@START:END] (e.g. L1.H0.pattern=uniform@0:500)")
    start = int(m.group(3)) if m.group(3) else 0
    end = int(m.group(4)) if m.group(4) else None
    clamp = Clamp(m.group(1), m.group(2), start, end)
    check_clamp(clamp)
    return clamp


def check_clamp(clamp: Clamp) -> None:
    """Check a clamp's name, replacement and window (not yet against a model); ConfigError."""
    _, _, kind = clamp.parts()
    allowed = PATTERN_WHATS if kind == "pattern" else OUTPUT_WHATS
    if clamp.what not in allowed:
        raise ConfigError(f"clamp {clamp.component}: {clamp.what!r} is not one of {', '.join(allowed)}")
    if clamp.start < 0 or (clamp.end is not None and clamp.end < clamp.start):
        raise ConfigError(f"clamp {clamp.component}: window [{clamp.start}, {clamp.end}) is not 0 <= start <= end")


def components(n_layers: int, n_heads: int) -> list[str]:
    """Every clampable component of a model with ``n_layers`` layers of ``n_heads`` heads."""
    out = []
    for layer in range(n_layers):
        out += [f"L{layer}.H{h}.{kind}" for kind in ("pattern", "output") for h in range(n_heads)]
        out += [f"L{layer}.attn", f"L{layer}.mlp"]
    return out


def check_against(clamp: Clamp, n_layers: int, n_heads: int) -> None:
    """ConfigError when the model (``n_layers`` x ``n_heads``) lacks the clamp's component, naming those it has."""
    check_clamp(clamp)
    layer, head, _ = clamp.parts()
    if layer >= n_layers or (head is not None and head >= n_heads):
        names = components(n_layers, n_heads)
        listed = ", ".join(names) if len(names) <= 24 else (
            f"L0..L{n_layers - 1} x H0..H{n_heads - 1} (.pattern, .output), L<l>.attn, L<l>.mlp")
        raise ConfigError(f"clamp component {clamp.component!r} does not exist in this model "
                          f"({n_layers} layers x {n_heads} heads); components: {listed}")


def fixed_pattern(what: str, n_query: int, n_key: int, device: Any = None) -> torch.Tensor:
    """A fixed causal pattern [query, key] (queries are the last ``n_query`` positions of ``n_key``).

    ``uniform``: 1 / (visible keys) on every visible key; ``previous-token``: 1 on key position - 1 (position 0 on
    itself); ``zero``: all zero.
    """
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    if what == "uniform":
        visible = (k <= q).float()
        return visible / visible.sum(-1, keepdim=True)
    if what == "previous-token":
        return (k == (q - 1).clamp(min=0)).float()
    if what == "zero":
        return torch.zeros(n_query, n_key, device=device)
    raise ValueError(f"no fixed pattern {what!r}")


class _Replacer:
    """The replacement of one clamp, keeping the running mean of a ``running-mean`` clamp."""

    def __init__(self, clamp: Clamp):
        self.clamp = clamp
        self.running: torch.Tensor | None = None
        self.on = False

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """What replaces ``x`` [batch, ...]: same shape, detached."""
        what = self.clamp.what
        if what == "zero":
            return torch.zeros_like(x)
        mean = x.detach().mean(0, keepdim=True)
        if what == "running-mean":
            if self.running is None or self.running.shape != mean.shape:
                self.running = mean
            elif torch.is_grad_enabled():  # evaluation passes (no grad) read the average without moving it
                self.running = MOMENTUM * self.running + (1 - MOMENTUM) * mean
            mean = self.running
        return mean.expand_as(x)


class ClampIntervention:
    """Clamps applied during training (the ``interventions`` of :func:`workbench.train.train_causal_lm`).

    At each update ``step`` the clamps with ``start <= step < end`` are on; at an evaluation after ``s`` updates
    those on at the last update (``s - 1``; step 0 at ``s = 0``) are.
    """

    def __init__(self, clamps: Sequence[Clamp]):
        self.clamps = list(clamps)
        self.replacers = [_Replacer(c) for c in self.clamps]
        self.handles: list[Any] = []
        self.model = None

    def attach(self, model: Any) -> None:
        modules = attention_modules(model)
        n_heads = model.config.num_attention_heads
        for clamp in self.clamps:
            check_against(clamp, len(modules), n_heads)
        self.model = model
        head_dim = modules[0].head_dim
        for rep in self.replacers:
            layer, head, kind = rep.clamp.parts()
            attn = modules[layer]
            if kind == "pattern":
                attn.workbench_pattern_edits = [*getattr(attn, "workbench_pattern_edits", []), self._pattern_edit(rep, head)]
            elif kind == "output":
                sl = slice(head * head_dim, (head + 1) * head_dim)
                self.handles.append(attn.o_proj.register_forward_pre_hook(self._head_hook(rep, sl)))
            else:
                target = attn if kind == "attn" else model.model.layers[layer].mlp
                self.handles.append(target.register_forward_hook(self._output_hook(rep)))

    @staticmethod
    def _pattern_edit(rep: _Replacer, head: int):
        def edit(pattern: torch.Tensor) -> torch.Tensor:
            if not rep.on:
                return pattern
            if rep.clamp.what in ("zero", "mean", "running-mean"):
                new = rep.value(pattern[:, head])
            else:
                new = fixed_pattern(rep.clamp.what, pattern.shape[-2], pattern.shape[-1], pattern.device)
                new = new.to(pattern.dtype).expand_as(pattern[:, head])
            out = pattern.clone()
            out[:, head] = new
            return out

        return edit

    @staticmethod
    def _head_hook(rep: _Replacer, sl: slice):
        def hook(module: Any, args: tuple) -> tuple | None:
            if not rep.on:
                return None
            x = args[0].clone()
            x[..., sl] = rep.value(args[0][..., sl])
            return (x, *args[1:])

        return hook

    @staticmethod
    def _output_hook(rep: _Replacer):
        def hook(module: Any, args: tuple, output: Any) -> Any:
            if not rep.on:
                return None
            if isinstance(output, tuple):
                return (rep.value(output[0]), *output[1:])
            return rep.value(output)

        return hook

    def _set(self, step: int) -> None:
        for rep in self.replacers:
            rep.on = rep.clamp.active(step)
        patterned = any(rep.on and rep.clamp.parts()[2] == "pattern" for rep in self.replacers)
        set_override(self.model, patterned)

    def begin_step(self, step: int, tokens: torch.Tensor) -> None:
        self._set(step)

    def begin_eval(self, step: int) -> None:
        self._set(max(step - 1, 0))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.model is not None:
            for attn in attention_modules(self.model):
                attn.workbench_pattern_edits = []
            set_override(self.model, False)
