"""Node ids of heads and MLPs, checked against a model and a task, and turned into boolean masks.

``L{l}.H{h}`` is head h of layer l at every position, ``L{l}.H{h}@{p}`` that head at position p only;
``mlp{l}`` / ``mlp{l}@{p}`` likewise for the MLP of layer l. Other node kinds (``emb``, ``logit`` ...) are never
ablated and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from circuits.graph import Circuit, parse_node_id
from circuits.patching.ablation import PatchingInputError

__all__ = ["Component", "check_component", "component_id", "components", "keep_masks", "parse_component"]


@dataclass(frozen=True, order=True)
class Component:
    """A head (head >= 0) or an MLP (head None) of one layer, at one position or all (position None)."""

    layer: int
    head: int | None
    position: int | None = None

    @property
    def is_mlp(self) -> bool:
        return self.head is None


def component_id(c: Component) -> str:
    """The node id of a component (``L2.H5``, ``L2.H5@7``, ``mlp4``, ``mlp4@7``)."""
    base = f"mlp{c.layer}" if c.is_mlp else f"L{c.layer}.H{c.head}"
    return base if c.position is None else f"{base}@{c.position}"


def check_component(c: Component, n_layers: int, n_heads: int, seq_len: int) -> Component:
    """``c`` itself, or PatchingInputError naming the out-of-range layer, head or position and the valid range."""
    name = component_id(c)
    if not 0 <= c.layer < n_layers:
        raise PatchingInputError(f"{name}: layer {c.layer} out of range; the model has layers 0..{n_layers - 1}")
    if c.head is not None and not 0 <= c.head < n_heads:
        raise PatchingInputError(f"{name}: head {c.head} out of range; the model has heads 0..{n_heads - 1}")
    if c.position is not None and not 0 <= c.position < seq_len:
        raise PatchingInputError(
            f"{name}: position {c.position} out of range; the task's prompts have positions 0..{seq_len - 1}"
        )
    return c


def parse_component(node_id: str, n_layers: int, n_heads: int, seq_len: int) -> Component | None:
    """The component a node id names (checked), or None for nodes that are not heads or MLPs."""
    try:
        info = parse_node_id(node_id)
    except ValueError as err:
        raise PatchingInputError(str(err)) from None
    if info["kind"] not in ("head", "mlp"):
        return None
    c = Component(info["layer"], info["head"] if info["kind"] == "head" else None, info["position"])
    return check_component(c, n_layers, n_heads, seq_len)


def components(model, task, nodes: Circuit | Iterable[str]) -> list[Component]:
    """The checked head/MLP components of a circuit or a list of node ids (others dropped)."""
    ids = list(nodes.graph.nodes) if isinstance(nodes, Circuit) else list(nodes)
    if isinstance(nodes, str):
        raise PatchingInputError("expected a Circuit or a list of node ids, got one string")
    out = []
    for node_id in ids:
        c = parse_component(node_id, model.cfg.n_layers, model.cfg.n_heads, task.seq_len)
        if c is not None:
            out.append(c)
    return out


def keep_masks(comps: Iterable[Component], n_layers: int, n_heads: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of what the components cover: heads [L, pos, H] and MLPs [L, pos]."""
    heads = torch.zeros(n_layers, seq_len, n_heads, dtype=torch.bool)
    mlps = torch.zeros(n_layers, seq_len, dtype=torch.bool)
    for c in comps:
        pos = slice(None) if c.position is None else c.position
        if c.is_mlp:
            mlps[c.layer, pos] = True
        else:
            heads[c.layer, pos, c.head] = True
    return heads, mlps
