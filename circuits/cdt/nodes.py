"""Sources and targets of a decomposition: nodes of the one grammar (:mod:`workbench.nodes`) and their checks.

Accepted ids (positions are token positions of the task's rows; ``@a-b`` is the inclusive span ``a..b``; no ``@`` means
every position):

==============  ==========================================================
``emb@3``        the input embedding (token + learned position) at position 3; ``emb@2-5`` a span
``L2.H5@7``      the output of head 5 of layer 2 at position 7 (``L2.H5``: all positions)
``mlp4@7``       the output of layer 4's MLP at position 7 (``mlp4``: all positions)
``logit``        (targets only) the task's metric (``output`` and ``metric`` are read as ``logit``)
==============  ==========================================================

Components are ordered emb < L0 heads < mlp0 < L1 heads < ... < logit; every target must come after every source.
"""

from __future__ import annotations

from workbench.nodes import ID_HELP, Node, NodeIdError, parse

__all__ = ["CDTInputError", "Node", "check_order", "parse_node", "parse_nodes"]


class CDTInputError(ValueError):
    """A source or target that names no component of the model, a position outside the task, or a bad ordering."""


_KINDS = ("emb", "head", "mlp", "logit")
_ALIASES = {"output": "logit", "metric": "logit"}
_HELP = "expected emb[@P], L<layer>.H<head>[@P], mlp<layer>[@P] or logit, with P a position or an inclusive span a-b"


def parse_node(spec: str | Node, *, n_layers: int, n_heads: int, seq_len: int) -> Node:
    """Parse and check one id against the model's sizes and the task's sequence length (CDTInputError when wrong)."""
    if isinstance(spec, Node):
        node = spec
    else:
        if not isinstance(spec, str):
            raise CDTInputError(f"a source or target must be a string id, got {type(spec).__name__}: {spec!r}")
        text = spec.strip()
        try:
            node = parse(_ALIASES.get(text, text))
        except NodeIdError as err:
            raise CDTInputError(f"cannot read {spec!r}: {_HELP if err.reason == ID_HELP else err.reason}") from None
    if node.kind not in _KINDS or node.source_position is not None or (node.kind == "logit" and node.token is not None):
        raise CDTInputError(f"cannot read {node.id!r}: {_HELP}")
    if node.kind == "logit" and node.position is not None:
        raise CDTInputError(f"the output target takes no position, got {node.id!r}")
    problem = node.out_of_range(n_layers=n_layers, n_heads=n_heads, seq_len=seq_len)
    if problem is not None:
        raise CDTInputError(problem)
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
