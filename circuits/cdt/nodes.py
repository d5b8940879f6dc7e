"""Sources and targets of a decomposition, named like circuit nodes, and their checks.

Accepted ids (positions are token positions of the task's rows; ``@a-b`` is the inclusive span ``a..b``; no ``@`` means
every position):

==============  ==========================================================
``emb@3``        the input embedding (token + learned position) at position 3; ``emb@2-5`` a span
``L2.H5@7``      the output of head 5 of layer 2 at position 7 (``L2.H5``: all positions)
``mlp4@7``       the output of layer 4's MLP at position 7 (``mlp4``: all positions)
``logit``        (targets only) the task's metric
==============  ==========================================================

Components are ordered emb < L0 heads < mlp0 < L1 heads < ... < logit; every target must come after every source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CDTInputError", "Node", "check_order", "parse_node", "parse_nodes"]


class CDTInputError(ValueError):
    """A source or target that names no component of the model, a position outside the task, or a bad ordering."""


_RE = re.compile(
    r"^(?:(?P<emb>emb)|L(?P<layer>\d+)\.H(?P<head>\d+)|mlp(?P<mlp>\d+)|(?P<logit>logit|output|metric))"
    r"(?:@(?P<a>\d+)(?:-(?P<b>\d+))?)?$"
)
_HELP = "expected emb[@P], L<layer>.H<head>[@P], mlp<layer>[@P] or logit, with P a position or an inclusive span a-b"


@dataclass(frozen=True)
class Node:
    """One source or target: ``kind`` in emb/head/mlp/logit, its layer and head, and positions (None: all)."""

    kind: str
    layer: int | None = None
    head: int | None = None
    positions: tuple[int, ...] | None = None

    @property
    def order(self) -> float:
        """Place in the forward pass: emb 0, head of layer l 2l+1, mlp of layer l 2l+2, logit infinity."""
        if self.kind == "emb":
            return 0
        if self.kind == "logit":
            return float("inf")
        assert self.layer is not None
        return 2 * self.layer + (1 if self.kind == "head" else 2)

    @property
    def id(self) -> str:
        """The circuit node id (``L1.H0@5``, ``mlp2``, ``emb@3``, ``logit``); a span keeps its ``@a-b`` form."""
        base = {"emb": "emb", "logit": "logit", "head": f"L{self.layer}.H{self.head}", "mlp": f"mlp{self.layer}"}[self.kind]
        if self.positions is None:
            return base
        p = self.positions
        if len(p) == 1:
            return f"{base}@{p[0]}"
        if list(p) == list(range(p[0], p[-1] + 1)):
            return f"{base}@{p[0]}-{p[-1]}"
        return f"{base}@" + ",".join(map(str, p))

    def with_positions(self, positions: tuple[int, ...] | None) -> Node:
        return Node(self.kind, self.layer, self.head, positions)


def parse_node(spec: str | Node, *, n_layers: int, n_heads: int, seq_len: int) -> Node:
    """Parse and check one id against the model's sizes and the task's sequence length (CDTInputError when wrong)."""
    if isinstance(spec, Node):
        node = spec
    else:
        if not isinstance(spec, str):
            raise CDTInputError(f"a source or target must be a string id, got {type(spec).__name__}: {spec!r}")
        m = _RE.match(spec.strip())
        if m is None:
            raise CDTInputError(f"cannot read {spec!r}: {_HELP}")
        positions: tuple[int, ...] | None = None
        if m["a"] is not None:
            a = int(m["a"])
            b = int(m["b"]) if m["b"] is not None else a
            if b < a:
                raise CDTInputError(f"empty position span in {spec!r}: {a}-{b}")
            positions = tuple(range(a, b + 1))
        if m["emb"]:
            node = Node("emb", positions=positions)
        elif m["logit"]:
            if positions is not None:
                raise CDTInputError(f"the output target takes no position, got {spec!r}")
            node = Node("logit")
        elif m["mlp"] is not None:
            node = Node("mlp", layer=int(m["mlp"]), positions=positions)
        else:
            node = Node("head", layer=int(m["layer"]), head=int(m["head"]), positions=positions)
    if node.layer is not None and not 0 <= node.layer < n_layers:
        raise CDTInputError(f"layer {node.layer} out of range in {node.id!r}: the model has layers 0..{n_layers - 1}")
    if node.head is not None and not 0 <= node.head < n_heads:
        raise CDTInputError(f"head {node.head} out of range in {node.id!r}: the model has heads 0..{n_heads - 1}")
    if node.positions is not None:
        bad = [p for p in node.positions if not 0 <= p < seq_len]
        if bad:
            raise CDTInputError(
                f"position {bad[0]} out of range in {node.id!r}: the task's rows have positions 0..{seq_len - 1}"
            )
    return node


def parse_nodes(specs, *, n_layers: int, n_heads: int, seq_len: int, what: str) -> list[Node]:
    """Parse a list of ids (or one id) into nodes; an empty list is an error naming ``what``."""
    if isinstance(specs, (str, Node)):
        specs = [specs]
    nodes = [parse_node(s, n_layers=n_layers, n_heads=n_heads, seq_len=seq_len) for s in specs]
    if not nodes:
        raise CDTInputError(f"no {what} given")
    return nodes


def check_order(sources: list[Node], targets: list[Node]) -> None:
    """CDTInputError unless every source comes before every target (and no source is the output)."""
    for s in sources:
        if s.kind == "logit":
            raise CDTInputError("the output (logit) cannot be a source")
    last = max(s.order for s in sources)
    for t in targets:
        if t.order <= last:
            culprit = max(sources, key=lambda s: s.order)
            raise CDTInputError(
                f"source {culprit.id!r} does not come before target {t.id!r}: every target must be computed after "
                "every source (emb < L0 heads < mlp0 < L1 heads < ... < logit)"
            )
