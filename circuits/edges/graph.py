"""The edge graph of a model: whole components as senders and receivers, and the edges between them.

Senders, in topological order: ``emb`` (token plus learned position embedding), then per layer ``l`` its heads
``L{l}.H{h}`` (each head's output at every position) and its MLP ``mlp{l}`` (when the model has MLPs). Receivers: every
head, every MLP and ``logit`` (the final norm's input). An edge ``s->r`` exists when ``s`` comes before ``r``: the
embedding sends to every receiver, a head of layer ``l`` to every receiver of a later layer and to its own layer's
MLP, an MLP to every later receiver. Heads of one layer do not send to each other. Node ids are those of
:mod:`workbench.nodes` (``emb``, ``L1.H0``, ``mlp1``, ``logit``); edge ids are ``"{sender}->{receiver}"``.

A head receiver's query, key and value inputs are one input (the whole-head graph). With ``qkv=True`` each head
receives on three inputs, ``L{l}.H{h}.q``, ``.k`` and ``.v`` (each normalized on its own): receiver ids that name a
head's input, mapped back to the head's node id by :meth:`EdgeGraph.component`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["EdgeGraph", "EdgeIdError", "edge_id", "split_edge"]


class EdgeIdError(LookupError):
    """An edge id that is not an edge of the model's graph."""


def edge_id(sender: str, receiver: str) -> str:
    """``"sender->receiver"``."""
    return f"{sender}->{receiver}"


def split_edge(edge: str) -> tuple[str, str]:
    """``(sender, receiver)`` of an edge id; EdgeIdError when it has no single ``->``."""
    parts = edge.split("->") if isinstance(edge, str) else []
    if len(parts) != 2 or not all(parts):
        raise EdgeIdError(f"malformed edge id {edge!r}: expected '<sender>-><receiver>', e.g. 'emb->L0.H1'")
    return parts[0], parts[1]


@dataclass(frozen=True)
class EdgeGraph:
    """The whole-component edge graph of a model with ``n_layers`` layers of ``n_heads`` heads (and MLPs when
    ``has_mlp``).

    ``senders`` [S] and ``receivers`` [R] in topological order; ``edges`` [E] the edge ids ordered by receiver, then
    sender; ``src`` / ``dst`` LongTensor [E] the sender and receiver index of each edge.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    qkv: bool = False
    senders: tuple[str, ...] = field(init=False)
    receivers: tuple[str, ...] = field(init=False)
    edges: tuple[str, ...] = field(init=False)
    src: torch.Tensor = field(init=False, repr=False)
    dst: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        senders, receivers, s_rank, r_rank = ["emb"], [], [0], []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                senders.append(f"L{layer}.H{h}")
                s_rank.append(2 * layer + 1)
            for part in (".q", ".k", ".v") if self.qkv else ("",):  # a layer's head receivers: all q, all k, all v
                for h in range(self.n_heads):
                    receivers.append(f"L{layer}.H{h}{part}")
                    r_rank.append(2 * layer + 1)
            if self.has_mlp:
                senders.append(f"mlp{layer}")
                s_rank.append(2 * layer + 2)
                receivers.append(f"mlp{layer}")
                r_rank.append(2 * layer + 2)
        receivers.append("logit")
        r_rank.append(2 * self.n_layers + 1)
        pairs = [(s, r) for r in range(len(receivers)) for s in range(len(senders)) if s_rank[s] < r_rank[r]]
        set_ = object.__setattr__
        set_(self, "senders", tuple(senders))
        set_(self, "receivers", tuple(receivers))
        set_(self, "edges", tuple(edge_id(senders[s], receivers[r]) for s, r in pairs))
        set_(self, "src", torch.tensor([s for s, _ in pairs], dtype=torch.long))
        set_(self, "dst", torch.tensor([r for _, r in pairs], dtype=torch.long))
        set_(self, "_index", {e: i for i, e in enumerate(self.edges)})

    @classmethod
    def of(cls, model, *, qkv: bool = False) -> EdgeGraph:
        """The graph of a ``TransformerBridge`` (sizes from :class:`circuits.frozen.ModelFacts`); ``qkv``: split
        each head receiver into its query, key and value inputs."""
        from circuits.frozen.facts import ModelFacts

        facts = ModelFacts.of(model)
        return cls(facts.n_layers, facts.n_heads, facts.has_mlp, qkv)

    @staticmethod
    def component(receiver: str) -> str:
        """The node id of a receiver's component: ``L1.H0.q`` -> ``L1.H0``; other ids as they are."""
        return receiver[:-2] if receiver[-2:] in (".q", ".k", ".v") else receiver

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def index(self, edge: str) -> int:
        """The position of ``edge`` in :attr:`edges`; EdgeIdError naming the accepted forms otherwise."""
        try:
            return self._index[edge]
        except (KeyError, TypeError):
            pass
        sender, receiver = split_edge(edge)
        if sender not in self.senders:
            what = f"unknown sender {sender!r}; senders: emb, L<l>.H<h>" + (", mlp<l>" if self.has_mlp else "")
        elif receiver not in self.receivers:
            head = "L<l>.H<h>.q / .k / .v" if self.qkv else "L<l>.H<h>"
            what = f"unknown receiver {receiver!r}; receivers: {head}" + (", mlp<l>" if self.has_mlp else "") \
                + ", logit"
        else:
            what = f"{sender} does not come before {receiver} (edges go from earlier components to later ones)"
        raise EdgeIdError(f"edge {edge!r} is not in the graph of this model ({self.n_layers} layers, {self.n_heads} "
                          f"heads{', MLPs' if self.has_mlp else ', no MLPs'}"
                          f"{', q/k/v inputs' if self.qkv else ''}): {what}")

    def mask(self, kept: Iterable[str] | None = None, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """Float mask [E]: 1 on the ``kept`` edges (every edge when None), 0 elsewhere."""
        if kept is None:
            return torch.ones(self.n_edges, dtype=dtype, device=device)
        out = torch.zeros(self.n_edges, dtype=dtype, device=device)
        index = [self.index(e) for e in kept]
        if index:
            out[torch.tensor(index, device=out.device)] = 1
        return out

    def dense(self, mask: torch.Tensor) -> torch.Tensor:
        """Mask [K, E] -> [K, S, R] (zero where there is no edge); differentiable in ``mask``."""
        K = mask.shape[0]
        flat = self.src.to(mask.device) * len(self.receivers) + self.dst.to(mask.device)
        out = mask.new_zeros(K, len(self.senders) * len(self.receivers))
        out = out.index_copy(1, flat, mask)
        return out.reshape(K, len(self.senders), len(self.receivers))
