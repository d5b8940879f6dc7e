"""Heads and MLPs named by node ids (:mod:`workbench.nodes`), checked against a model and a task, and turned into masks.

``L{l}.H{h}`` is head h of layer l at every position, ``L{l}.H{h}@{p}`` that head at position p only (``@a-b``: the
inclusive span a..b); ``mlp{l}`` / ``mlp{l}@{p}`` likewise for the MLP of layer l. Other node kinds (``emb``,
``logit`` ...) are never ablated and are ignored. A head reading one source position (``L2.H5@7:3``) names part of a
head's output that patching cannot ablate on its own, and is an error.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from circuits.patching.ablation import PatchingInputError
from workbench.circuit import Circuit
from workbench.nodes import Node, NodeIdError, parse

__all__ = ["Component", "check_component", "component_id", "components", "keep_masks", "parse_component"]

#: a head or MLP node (:class:`workbench.nodes.Node` of kind ``head`` or ``mlp``)
Component = Node


def component_id(c: Node) -> str:
    """The node id of a component (``L2.H5``, ``L2.H5@7``, ``mlp4``, ``mlp4@7``)."""
    return c.id


def check_component(c: Node, n_layers: int, n_heads: int, seq_len: int) -> Node:
    """``c`` itself, or PatchingInputError naming the out-of-range layer, head or position and the valid range."""
    if c.kind not in ("head", "mlp"):
        raise PatchingInputError(f"{c.id!r} is not a head or an MLP")
    if c.source_position is not None:
        raise PatchingInputError(
            f"{c.id!r} names one source position of a head; patching ablates a head's whole output at a position "
            f"(use {c.with_positions(c.positions).id!r})"
        )
    problem = c.out_of_range(n_layers=n_layers, n_heads=n_heads, seq_len=seq_len)
    if problem is not None:
        raise PatchingInputError(problem)
    return c


def parse_component(node_id: str, n_layers: int, n_heads: int, seq_len: int) -> Node | None:
    """The component a node id names (checked), or None for nodes that are not heads or MLPs."""
    try:
        node = parse(node_id)
    except NodeIdError as err:
        raise PatchingInputError(str(err)) from None
    if node.kind not in ("head", "mlp"):
        return None
    return check_component(node, n_layers, n_heads, seq_len)


def components(model, task, nodes: Circuit | Iterable[str]) -> list[Node]:
    """The checked head/MLP components of a circuit or a list of node ids (others dropped)."""
    if isinstance(nodes, str):
        raise PatchingInputError("expected a Circuit or a list of node ids, got one string")
    ids = list(nodes.graph.nodes) if isinstance(nodes, Circuit) else list(nodes)
    out = []
    for node_id in ids:
        c = parse_component(node_id, model.cfg.n_layers, model.cfg.n_heads, task.seq_len)
        if c is not None:
            out.append(c)
    return out


def keep_masks(comps: Iterable[Node], n_layers: int, n_heads: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of what the components cover: heads [L, pos, H] and MLPs [L, pos]."""
    heads = torch.zeros(n_layers, seq_len, n_heads, dtype=torch.bool)
    mlps = torch.zeros(n_layers, seq_len, dtype=torch.bool)
    for c in comps:
        p = c.positions
        pos = slice(None) if p is None else slice(p[0], p[-1] + 1)
        if c.is_mlp:
            mlps[c.layer, pos] = True
        else:
            heads[c.layer, pos, c.head] = True
    return heads, mlps
