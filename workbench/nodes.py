"""The node grammar every circuit family speaks: one :class:`Node` type, :func:`parse` from an id, ``Node.id`` back.

=================  ==============================================================
``emb@3``          token embedding at position 3 (``emb``: every position; ``emb@2-4``: the inclusive span 2..4)
``L2.H5@7``        layer 2, head 5, at (destination) position 7 (``L2.H5``: every position; ``L2.H5@7-9``: a span)
``L2.H5@7:3``      that head at position 7 reading source position 3 only (one node per source token)
``mlp4@7``         MLP of layer 4 at position 7 (``mlp4``: every position; ``mlp4@2-5``: a span)
``tc4.f123@7``     feature 123 of a layer-4 dictionary (``tc`` transcoder; ``sae``, ``stc``, ... also parse)
``err:tc4@7``      the error (reconstruction residual) node of that dictionary
``logit``          the output (``logit:<token>`` for one output token, ``logit@7`` at a position)
``bias``           a constant input (``bias:<label>``)
=================  ==============================================================

``parse(node.id) == node`` for every node, and ``parse(s).id == s`` for every id written in this canonical form
(numbers without leading zeros, a one-position span written as one position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["KINDS", "Node", "NodeIdError", "parse"]

KINDS: tuple[str, ...] = ("emb", "head", "mlp", "feature", "error", "logit", "bias", "other")

_AT = r"(?:@(?P<position>\d+)(?:-(?P<end_position>\d+))?)?"
_ONE = r"(?:@(?P<position>\d+))?"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("emb", re.compile(r"emb" + _AT)),
    ("head", re.compile(r"L(?P<layer>\d+)\.H(?P<head>\d+)"
                        r"(?:@(?P<position>\d+)(?:(?::(?P<source_position>\d+))|(?:-(?P<end_position>\d+)))?)?")),
    ("mlp", re.compile(r"mlp(?P<layer>\d+)" + _AT)),
    ("feature", re.compile(r"(?P<dictionary>[a-z]+)(?P<layer>\d+)\.f(?P<feature>\d+)" + _ONE)),
    ("error", re.compile(r"err:(?P<dictionary>[a-z]+)(?P<layer>\d+)" + _ONE)),
    ("logit", re.compile(r"logit(?::(?P<token>.+?))?" + _ONE)),
    ("bias", re.compile(r"bias(?::(?P<label>[^@]+))?" + _ONE)),
]
_INTS = ("layer", "head", "feature", "position", "end_position", "source_position")
ID_HELP = ("expected emb[@P], L<l>.H<h>[@P[:S]], mlp<l>[@P], tc<l>.f<i>[@P], err:tc<l>[@P], logit[:<token>][@P] "
           "or bias[:<label>], with P a position or (emb, heads, MLPs) an inclusive span a-b")


class NodeIdError(ValueError):
    """An id outside the grammar; ``reason`` says what is wrong with it (without the id)."""

    def __init__(self, node_id: object, reason: str) -> None:
        super().__init__(f"malformed node id {node_id!r}: {reason}")
        self.node_id, self.reason = node_id, reason


@dataclass(frozen=True)
class Node:
    """One node of a circuit.

    kind: one of :data:`KINDS` (``other`` has no id form). layer / head: of a head, MLP, feature or error node.
    position: the (destination) token position, None for every position; end_position: the last position of an
    inclusive span ``position..end_position`` (None for a single position; a span of one is stored as one position).
    source_position: the one source position a head reads (``L2.H5@7:3``). feature / dictionary: a dictionary feature
    (``tc4.f123``: dictionary ``tc``, layer 4, feature 123); error nodes name their dictionary too. token: the output
    token of ``logit:<token>``; label: the label of ``bias:<label>``.
    """

    kind: str
    layer: int | None = None
    head: int | None = None
    position: int | None = None
    end_position: int | None = None
    source_position: int | None = None
    feature: int | None = None
    dictionary: str | None = None
    token: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.end_position is not None:
            if self.position is None:
                raise ValueError("a node's end_position needs a position (the span's start)")
            if self.end_position < self.position:
                raise ValueError(f"empty position span {self.position}-{self.end_position}")
            if self.end_position == self.position:
                object.__setattr__(self, "end_position", None)
        if self.source_position is not None and (self.kind != "head" or self.position is None
                                                 or self.end_position is not None):
            raise ValueError("only a head at one position can name a source position (L<l>.H<h>@P:S)")
        needs = {"head": ("layer", "head"), "mlp": ("layer",), "feature": ("layer", "feature", "dictionary"),
                 "error": ("layer", "dictionary")}.get(self.kind, ())
        missing = [f for f in needs if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} node needs {' and '.join(missing)}")

    # ------------------------------------------------------------------ naming
    @property
    def id(self) -> str:
        """The node id (``L1.H0@5``, ``L1.H0@5:2``, ``mlp2``, ``emb@2-4``, ``tc4.f123@7``, ``logit``)."""
        base = {
            "emb": "emb",
            "head": f"L{self.layer}.H{self.head}",
            "mlp": f"mlp{self.layer}",
            "feature": f"{self.dictionary}{self.layer}.f{self.feature}",
            "error": f"err:{self.dictionary}{self.layer}",
            "logit": "logit" if self.token is None else f"logit:{self.token}",
            "bias": "bias" if self.label is None else f"bias:{self.label}",
        }.get(self.kind)
        if base is None:
            raise ValueError(f"a node of kind {self.kind!r} has no id form")
        if self.position is None:
            return base
        at = f"{base}@{self.position}"
        if self.end_position is not None:
            return f"{at}-{self.end_position}"
        return at if self.source_position is None else f"{at}:{self.source_position}"

    def __str__(self) -> str:
        return self.id

    # ------------------------------------------------------------------ reading
    @property
    def positions(self) -> tuple[int, ...] | None:
        """The positions covered, ascending (None: every position)."""
        if self.position is None:
            return None
        return tuple(range(self.position, (self.end_position if self.end_position is not None else self.position) + 1))

    @property
    def order(self) -> float:
        """Place in the forward pass: emb and bias 0, a head of layer l 2l+1, an MLP (or its dictionary's features and
        error) 2l+2, logit infinity."""
        if self.kind in ("emb", "bias"):
            return 0
        if self.kind == "logit":
            return float("inf")
        if self.layer is None:
            raise ValueError(f"a node of kind {self.kind!r} has no place in the forward pass")
        return 2 * self.layer + (1 if self.kind == "head" else 2)

    @property
    def is_mlp(self) -> bool:
        return self.kind == "mlp"

    def with_positions(self, positions: tuple[int, ...] | None) -> Node:
        """This node at ``positions`` (None: every position; otherwise consecutive ascending positions)."""
        if positions is None:
            return replace(self, position=None, end_position=None, source_position=None)
        p = tuple(int(x) for x in positions)
        if not p or list(p) != list(range(p[0], p[-1] + 1)):
            raise ValueError(f"positions must be consecutive and ascending, got {positions!r}")
        return replace(self, position=p[0], end_position=p[-1], source_position=None)

    def out_of_range(self, *, n_layers: int, n_heads: int, seq_len: int) -> str | None:
        """None if the layer, head and positions fit the model and the task, else a message saying what does not."""
        if self.layer is not None and not 0 <= self.layer < n_layers:
            return f"layer {self.layer} out of range in {self.id!r}: the model has layers 0..{n_layers - 1}"
        if self.head is not None and not 0 <= self.head < n_heads:
            return f"head {self.head} out of range in {self.id!r}: the model has heads 0..{n_heads - 1}"
        for p in [*(self.positions or ()), *([] if self.source_position is None else [self.source_position])]:
            if not 0 <= p < seq_len:
                return f"position {p} out of range in {self.id!r}: the task's rows have positions 0..{seq_len - 1}"
        return None


def parse(node_id: str) -> Node:
    """The :class:`Node` an id names (see the module docstring).

    >>> parse("L2.H5@7:3").source_position
    3
    >>> parse("emb@2-4").positions
    (2, 3, 4)

    Raises :class:`NodeIdError` (a ValueError naming the id and the accepted forms) for an id outside the grammar.
    """
    if not isinstance(node_id, str):
        raise NodeIdError(node_id, f"node id must be a string, got {type(node_id).__name__}")
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(node_id)
        if m is None:
            continue
        fields = {k: (int(v) if k in _INTS else v) for k, v in m.groupdict().items() if v is not None}
        try:
            return Node(kind, **fields)
        except ValueError as err:
            raise NodeIdError(node_id, str(err)) from None
    raise NodeIdError(node_id, ID_HELP)
