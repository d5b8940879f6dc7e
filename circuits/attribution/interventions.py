"""Interventions on transcoder features as values: :class:`Intervention` (set, scale or zero one feature at one
position or every position), parsed from ``tc1.f12@5=3.0`` / ``tc1.f12@5*0.5`` / ``tc1.f12@5``, checked against a
prompt's replacement model, and applied to activations during a rerun (:func:`edit_of`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuits.attribution.replacement import ReplacementModel
from workbench.nodes import NodeIdError, parse

__all__ = ["Intervention", "InterventionError", "edit_of", "parse_intervention", "resolve"]


class InterventionError(ValueError):
    """An intervention that does not fit the prompt or the feature sets (bad id, layer, feature or position)."""


@dataclass(frozen=True)
class Intervention:
    """``op`` (``set``, ``scale`` or ``zero``) of feature ``feature`` of the layer-``layer`` set at ``position``
    (None: every position) with ``value`` (the value set, or the factor)."""

    layer: int
    feature: int
    position: int | None
    op: str = "zero"
    value: float = 0.0
    dictionary: str = "tc"

    @property
    def node_id(self) -> str:
        at = "" if self.position is None else f"@{self.position}"
        return f"{self.dictionary}{self.layer}.f{self.feature}{at}"

    def __str__(self) -> str:
        return {"set": f"{self.node_id}={self.value:g}", "scale": f"{self.node_id}*{self.value:g}"}.get(
            self.op, f"zero {self.node_id}")


_SPEC = re.compile(r"\s*(?P<node>[^=*\s]+)\s*(?:(?P<op>[=*])\s*(?P<value>\S+))?\s*")


def parse_intervention(text: str, op: str | None = None) -> Intervention:
    """``tc1.f12@5=3`` (set), ``tc1.f12@5*0.5`` (scale) or ``tc1.f12@5`` with ``op`` given (``zero``; ``set`` /
    ``scale`` take ``NODE=VALUE``). InterventionError naming the text for anything else."""
    m = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise InterventionError(f"intervention {text!r}: expected NODE=VALUE, NODE*FACTOR or NODE, e.g. tc1.f12@5=3.0")
    try:
        node = parse(m["node"])
    except NodeIdError as err:
        raise InterventionError(f"intervention {text!r}: {err}") from None
    if node.kind != "feature":
        raise InterventionError(f"intervention {text!r}: {m['node']!r} is not a feature; give a feature id like "
                                "tc1.f12@5 (tc1.f12 for every position)")
    sign = m["op"]
    kind = op or {"=": "set", "*": "scale", None: "zero"}[sign]
    if kind == "zero":
        if sign is not None and not (sign == "=" and _number(m["value"], text) == 0):
            raise InterventionError(f"intervention {text!r}: zero takes a feature id alone (e.g. tc1.f12@5)")
        value = 0.0
    elif sign is None:
        raise InterventionError(f"intervention {text!r}: {kind} needs a value, e.g. {m['node']}"
                                f"{'=' if kind == 'set' else '*'}2.0")
    else:
        value = _number(m["value"], text)
    if op == "set" and sign == "*":
        raise InterventionError(f"intervention {text!r}: set is written NODE=VALUE")
    return Intervention(int(node.layer), int(node.feature), node.position, kind, value, str(node.dictionary))


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InterventionError(f"intervention {whole!r}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InterventionError(f"intervention {whole!r}: the value must be a finite number")
    return value


def resolve(rm: ReplacementModel, interventions: Sequence[Intervention | str]) -> list[Intervention]:
    """The interventions checked against ``rm`` (a layer with features, the set's prefix, a feature index and a
    position in range; positions given as None stay None). InterventionError naming the one that does not fit."""
    out = []
    for item in interventions:
        iv = parse_intervention(item) if isinstance(item, str) else item
        s = rm.sets.get(iv.layer)
        if s is None:
            raise InterventionError(f"{iv.node_id}: layer {iv.layer} has no transcoder; layers with transcoders: "
                                    f"{sorted(rm.sets) or 'none'}")
        if iv.dictionary != s.name:
            raise InterventionError(f"{iv.node_id}: layer {iv.layer}'s features are named {s.name}{iv.layer}.f<i>")
        if not 0 <= iv.feature < s.n_features:
            raise InterventionError(f"{iv.node_id}: feature index {iv.feature} out of range; layer {iv.layer} has "
                                    f"features 0..{s.n_features - 1}")
        if iv.position is not None and not 0 <= iv.position < rm.n_pos:
            raise InterventionError(f"{iv.node_id}: position {iv.position} is outside the prompt (positions "
                                    f"0..{rm.n_pos - 1})")
        if iv.op not in ("set", "scale", "zero"):
            raise InterventionError(f"{iv.node_id}: op must be set, scale or zero, got {iv.op!r}")
        out.append(iv)
    return out


def edit_of(interventions: Sequence[Intervention]):
    """The rerun edit applying ``interventions`` to a set's activations [T, n] (a copy where changed)."""

    def edit(layer: int, a: torch.Tensor) -> torch.Tensor:
        mine = [iv for iv in interventions if iv.layer == layer]
        if not mine:
            return a
        a = a.clone()
        for iv in mine:
            at = slice(None) if iv.position is None else iv.position
            a[at, iv.feature] = a[at, iv.feature] * iv.value if iv.op == "scale" else (
                iv.value if iv.op == "set" else 0.0)
        return a
    return edit
