"""From found paths to a :class:`workbench.circuit.Circuit`, with error, bias and remainder nodes.

Edge weights are contributions to the target: the edge ``X -> Y`` carries the value of the path prefix that ends at
``X`` after ``Y`` (summed over the found paths sharing that edge), so a node's ``score`` — the sum of its prefixes'
values — is its contribution to the target along the found paths. Every node the search extended also gets, in the
same units, edges from the transcoder error nodes ``err:tc{l}@{t}`` upstream of it, from ``bias@{t}`` (all bias
terms: b_O, b_V, b_dec, skip terms, the target's own constant) and from ``rest@{t}`` (everything the search left
out: other features, heads, MLPs without a transcoder). Hence the in-edges of every extended node sum to its value;
for the target this is the completeness identity of the frozen model.

A head node names its source position (``L1.H3@7:2``, with ``source_position`` 2), so paths through one head from
different source tokens meet at different nodes. A layer-0 head reads the embedding alone: its one in-edge, from
``emb@s``, carries its whole value (the search takes the two steps together, see :mod:`.search`).
"""

from __future__ import annotations

from typing import Any

from circuits.transcoder_paths.contributions import Target, direct_contributions
from circuits.transcoder_paths.frozen import FrozenRun
from circuits.transcoder_paths.search import Path
from workbench.circuit import Circuit, parse_node_id

__all__ = ["circuit_from_paths"]


def _walk(root: Path) -> list[tuple[Path | None, Path]]:
    """(parent, path) pairs of the search tree below ``root``, parents first."""
    out: list[tuple[Path | None, Path]] = [(None, root)]
    i = 0
    while i < len(out):
        _, node = out[i]
        out += [(node, child) for child in node.children]
        i += 1
    return out


def circuit_from_paths(
    run: FrozenRun, target: Target, root: Path, *, token_strings: list[str] | None = None,
    metadata: dict[str, Any] | None = None, name: str = "transcoder circuit",
) -> Circuit:
    """The circuit of the search tree below ``root`` (from :func:`search_paths`): nodes with kind, layer, head,
    feature, position, token, activation, score (and a head's ``source_position``); edges with a signed ``weight``
    (contribution to the target)."""
    tokens = token_strings or [str(int(t)) for t in run.tokens]
    circuit = Circuit(name, {"tokens": tokens, "target": target.node, "target_label": target.label,
                             "target_value": target.value, **(metadata or {})})

    def add(node: str, value: float | None, activation: float | None = None, kind: str | None = None,
            position: int | None = None) -> None:
        attrs = dict(circuit.graph.nodes[node]) if node in circuit.graph else {}
        score = attrs.get("score")
        extra: dict[str, Any] = {}
        if value is not None:
            extra["score"] = (score or 0.0) + value
        if activation is not None:
            extra["activation"] = activation
        if kind is not None:
            extra["position"] = position
        pos = position if kind is not None else parse_node_id(node)["position"]
        if pos is not None:
            extra["token"] = tokens[pos]
        circuit.add_node(node, kind=kind, **extra)

    def edge(src: str, dst: str, weight: float) -> None:
        old = circuit.graph.edges[src, dst]["weight"] if circuit.graph.has_edge(src, dst) else 0.0
        circuit.add_edge(src, dst, old + weight)

    for parent, path in _walk(root):
        step = path.steps[-1]
        if parent is None:
            add(step.node, target.value, activation=target.value, kind="logit" if step.node == "logit" else None,
                position=target.state.position if step.node == "logit" else None)
        else:  # one new step, or a layer-0 head and its embedding
            into = parent.steps[-1].node
            for new in path.steps[len(parent.steps):]:
                add(new.node, new.value, new.activation)
                edge(new.node, into, new.value)
                into = new.node
        if not path.expanded or path.state is None:
            continue
        rows = direct_contributions(run, path.state)
        t = path.state.position
        total = float(rows["value"].sum())
        shown = sum(child.steps[len(path.steps)].value for child in path.children)  # the edges into this node
        errors = rows[rows["kind"] == "error"]
        for node, value in zip(errors["node"], errors["value"], strict=True):
            add(node, float(value))
            edge(node, step.node, float(value))
        bias = float(rows.loc[rows["kind"].isin(["bias", "skip"]), "value"].sum())
        add(f"bias@{t}", bias)
        edge(f"bias@{t}", step.node, bias)
        rest = total - shown - float(errors["value"].sum()) - bias
        add(f"rest@{t}", rest, kind="other", position=t)
        edge(f"rest@{t}", step.node, rest)
    return circuit
