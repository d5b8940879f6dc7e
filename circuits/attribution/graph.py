"""An attribution graph: the direct-effect adjacency of one prompt's replacement model, with its node metadata.

Node order (circuit-tracer's): the selected feature nodes (sorted by layer, position, feature), the error nodes
(layer-major: ``n_features + layer * n_pos + pos``), the token-embedding nodes (one per position), the logit nodes.
``adjacency[target, source]`` is the direct effect of the source node on the target node's input (a feature's
pre-activation, a logit node's value); only feature and logit rows are nonzero.

Node values: a feature node's activation is its value as a source; as a target its input is its pre-activation.
A logit node's value is its target's direction read from the final norm's output at the last position plus a
constant (the demeaned logit ``logit_k - mean_v logit_v`` for a token). ``inputs[i]`` is that input for each row
(0 for error and token rows), and ``bias[i]`` the row's bias share: the input when every source node is switched off
(encoder bias, learned positions, norm biases, attention and MLP output biases and decoder biases, carried through the
frozen attention and norms). Completeness: ``inputs = adjacency.sum(1) + bias`` for every row, when no feature was
left out by ``max_feature_nodes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.nodes import NodeIdError, parse

__all__ = ["AttributionGraph"]


@dataclass
class AttributionGraph:
    """One prompt's attribution graph (tensors on the CPU; shapes with F selected features, L layers, T positions,
    K logit nodes, N = F + L*T + T + K nodes).

    tokens [T]; token_strings: the prompt's tokens as text; features [F, 3] (layer, position, feature index);
    activations [F]; adjacency [N, N] (target row, source column); inputs [N] and bias [N] (see the module
    docstring); logit_tokens: the vocabulary id of each logit node (-1 for a custom target); logit_labels: their
    text; logit_probabilities [K]: their weights in the influence (probabilities, or the custom targets' weights);
    names: layer -> dictionary prefix of node ids (``tc``); n_active: active features before the cap;
    metadata: JSON values (model, prompt, dtype, options).
    """

    tokens: torch.Tensor
    token_strings: list[str]
    n_layers: int
    features: torch.Tensor
    activations: torch.Tensor
    adjacency: torch.Tensor
    inputs: torch.Tensor
    bias: torch.Tensor
    logit_tokens: list[int]
    logit_labels: list[str]
    logit_probabilities: torch.Tensor
    names: dict[int, str]
    n_active: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def kind(self, i: int) -> str:
        """``feature``, ``error``, ``emb`` or ``logit`` for node index ``i``."""
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "emb" if i < self.logit_start else "logit"

    def node_ids(self) -> list[str]:
        """The node ids in the project's grammar, in node order: ``tc4.f123@7``, ``err:tc4@7``, ``emb@3``,
        ``logit:<token>`` (``logit:#<id>`` where a token's text would not round-trip or is not unique)."""
        ids = [f"{self.names.get(int(la), 'tc')}{int(la)}.f{int(f)}@{int(p)}" for la, p, f in self.features.tolist()]
        ids += [f"err:{self.names.get(la, 'tc')}{la}@{p}" for la in range(self.n_layers) for p in range(self.n_pos)]
        ids += [f"emb@{p}" for p in range(self.n_pos)]
        seen: set[str] = set()
        for k, (label, tok) in enumerate(zip(self.logit_labels, self.logit_tokens, strict=True)):
            node_id = f"logit:{label}"
            try:
                ok = parse(node_id).token == label and node_id not in seen
            except NodeIdError:
                ok = False
            if not ok:
                node_id = f"logit:#{tok if tok >= 0 else k}"
            seen.add(node_id)
            ids.append(node_id)
        return ids

    def logit_weights(self) -> torch.Tensor:
        """[N]: the logit nodes' probabilities, zero elsewhere (the start of the influence computation)."""
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start:] = self.logit_probabilities.to(self.adjacency.dtype)
        return w

    def edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nonzero edges as (targets [E], sources [E], weights [E]) (the sparse view of ``adjacency``)."""
        t, s = torch.nonzero(self.adjacency, as_tuple=True)
        return t, s, self.adjacency[t, s]
