"""Individual paths: their exact contributions, direct (length-1) attribution, and the top paths by greedy beam search.

A path starts at a source (``emb``, the embedding, length 0; or ``bias:attn3`` / ``bias:mlp3``, the constant ``b_i`` of a
sublayer, which the path passes through, length 1), then passes through components of later sublayers in order
(heads ``L3.H5`` of attention sublayers, whole MLPs ``mlp3``) and ends at the logits. Its contribution to a
:class:`~circuits.paths.decompose.LogitTarget` is exact under the frozen run; the contributions of all paths of length
``k`` sum to the length-``k`` part of the decomposition. Two heads in a row form a "virtual head" ``W_OV,h2 W_OV,h1``
(through the frozen patterns).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pandas as pd
import torch

from circuits.paths.decompose import LogitTarget
from circuits.paths.frozen import FrozenRun, PathInputError
from workbench.circuit import Circuit

__all__ = ["PathScore", "direct_attribution", "path_score", "paths_circuit", "sublayer_paths", "top_paths"]

Step = tuple[int, int | None]  # (sublayer index, head or None for a whole sublayer)


@dataclass
class PathScore:
    """One path: ``source`` ("emb" or "bias:<sublayer>"), ``steps`` (sublayer index, head), names and score."""

    source: str
    steps: tuple[Step, ...]
    names: list[str]
    score: float
    length: int = 0
    virtual_heads: list[str] = field(default_factory=list)

    def label(self) -> str:
        """``emb -> L0.H1 -> L1.H2 -> logit``."""
        return " -> ".join([self.source, *self.names[(0 if self.source == "emb" else 1):], "logit"])


def _score(frozen: FrozenRun, target: LogitTarget, x: torch.Tensor, constant: bool = False) -> torch.Tensor:
    """Target contribution of residual vectors x: [..., batch, pos, d] -> [...]."""
    u = target.direction(frozen.W_U)  # [batch, d]
    b = torch.arange(u.shape[0])
    y = frozen.final(x)[..., b, target.positions.to(x.device), :]  # [..., batch, d]
    out = torch.einsum("...bd,bd->...", y, u.to(y))
    if constant:
        out = out + target.score_logits(frozen.readout_bias.expand(*frozen.clean_logits.shape))
    return out


def _name(frozen: FrozenRun, step: Step) -> str:
    sub = frozen.sublayers[step[0]]
    return f"L{sub.layer}.H{step[1]}" if step[1] is not None else (f"mlp{sub.layer}" if sub.kind == "mlp" else sub.name)


def _apply(frozen: FrozenRun, step: Step, x: torch.Tensor) -> torch.Tensor:
    sub = frozen.sublayers[step[0]]
    return sub.apply_heads(x)[..., step[1], :, :, :] if step[1] is not None else sub.apply(x)


def _vector(frozen: FrozenRun, source: str, steps: tuple[Step, ...]) -> torch.Tensor:
    if source == "emb":
        x, rest = frozen.embed, steps
    else:
        x, rest = frozen.sublayers[steps[0][0]].bias, steps[1:]
    for step in rest:
        x = _apply(frozen, step, x)
    return x


def _make(frozen: FrozenRun, source: str, steps: tuple[Step, ...], score: float) -> PathScore:
    names = [_name(frozen, s) for s in steps]
    virtual = [f"{names[j]}>{names[j + 1]}" for j in range(len(steps) - 1)
               if steps[j][1] is not None and steps[j + 1][1] is not None]
    return PathScore(source, steps, names, score, len(steps), virtual)


def path_score(frozen: FrozenRun, target: LogitTarget, sublayers: tuple[int, ...], heads: tuple[int | None, ...] | None = None) -> float:
    """Exact contribution of the path from the embedding and from the first sublayer's bias through ``sublayers``.

    sublayers: increasing sublayer indices (empty: the embedding-to-logits path, with the readout constant);
    heads: optionally one head (or None for the whole sublayer) per attention sublayer in ``sublayers``.
    """
    heads = heads or (None,) * len(sublayers)
    steps = tuple(zip(sublayers, heads, strict=True))
    if not steps:
        return float(_score(frozen, target, frozen.embed, constant=True))
    with torch.no_grad():
        x = _vector(frozen, "emb", steps) + _vector(frozen, "bias", steps)
        return float(_score(frozen, target, x))


def sublayer_paths(frozen: FrozenRun, target: LogitTarget, length: int) -> pd.DataFrame:
    """Every path of ``length`` sublayers (all ``C(n, length)`` of them) with its exact contribution, by brute force.

    Columns: sublayers (e.g. "attn0,mlp1"), score. Exponential in general: for small models and checks.
    """
    rows = [{"sublayers": ",".join(frozen.sublayers[i].name for i in combo), "score": path_score(frozen, target, combo)}
            for combo in itertools.combinations(range(frozen.n), length)]
    return pd.DataFrame(rows, columns=["sublayers", "score"])


def direct_attribution(frozen: FrozenRun, target: LogitTarget) -> pd.DataFrame:
    """Length-1 paths per component: embedding through one head or MLP to the logits, and each sublayer's bias.

    Columns: component, kind ("head", "mlp", "bias"), layer, head, score. The scores sum to the length-1 part.
    """
    rows = []
    with torch.no_grad():
        for sub in frozen.sublayers:
            if sub.kind == "attn":
                scores = _score(frozen, target, sub.apply_heads(frozen.embed))
                rows += [{"component": f"L{sub.layer}.H{h}", "kind": "head", "layer": sub.layer, "head": h,
                          "score": float(s)} for h, s in enumerate(scores)]
            else:
                rows.append({"component": f"mlp{sub.layer}", "kind": "mlp", "layer": sub.layer, "head": None,
                             "score": float(_score(frozen, target, sub.apply(frozen.embed)))})
            rows.append({"component": f"bias:{sub.name}", "kind": "bias", "layer": sub.layer, "head": None,
                         "score": float(_score(frozen, target, sub.bias))})
    return pd.DataFrame(rows, columns=["component", "kind", "layer", "head", "score"])


def _extensions(frozen: FrozenRun, target: LogitTarget, x: torch.Tensor, after: int) -> list[tuple[Step, float]]:
    out: list[tuple[Step, float]] = []
    for i in range(after + 1, frozen.n):
        sub = frozen.sublayers[i]
        if sub.kind == "attn":
            out += [((i, h), float(s)) for h, s in enumerate(_score(frozen, target, sub.apply_heads(x)))]
        else:
            out.append(((i, None), float(_score(frozen, target, sub.apply(x)))))
    return out


def top_paths(frozen: FrozenRun, target: LogitTarget, *, max_length: int = 3, beam: int = 8, top: int = 20,
              progress: bool = False) -> list[PathScore]:
    """The ``top`` paths by |contribution| found by greedy beam search, up to ``max_length`` sublayers.

    Round 0 scores every source (the embedding, each sublayer's bias); each round extends the ``beam`` best paths of
    the previous round by every component of every later sublayer and keeps the ``beam`` best extensions. With
    ``beam`` at least the number of paths of each length the search is exhaustive.
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise PathInputError(f"max_length must be an integer >= 1, got {max_length!r}")
    if beam < 1 or top < 1:
        raise PathInputError(f"beam and top must be >= 1, got beam={beam}, top={top}")
    from tqdm.auto import tqdm

    found: list[PathScore] = []
    with torch.no_grad():
        found.append(_make(frozen, "emb", (), float(_score(frozen, target, frozen.embed, constant=True))))
        frontier = [("emb", (), frozen.embed)]
        for i, sub in enumerate(frozen.sublayers):
            found.append(_make(frozen, f"bias:{sub.name}", ((i, None),), float(_score(frozen, target, sub.bias))))
        bias_paths = sorted(found[1:], key=lambda p: -abs(p.score))[:beam]
        frontier += [(p.source, p.steps, sub_bias) for p in bias_paths
                     for sub_bias in [frozen.sublayers[p.steps[0][0]].bias]]
        for _ in tqdm(range(max_length), desc="path search", disable=not progress):
            new: list[PathScore] = []
            for source, steps, x in frontier:
                if len(steps) >= max_length:
                    continue
                last = steps[-1][0] if steps else -1
                new += [_make(frozen, source, (*steps, step), s) for step, s in _extensions(frozen, target, x, last)]
            if not new:
                break
            found += new
            kept = sorted(new, key=lambda p: -abs(p.score))[:beam]
            frontier = [(p.source, p.steps, _vector(frozen, p.source, p.steps)) for p in kept]
    return sorted(found, key=lambda p: -abs(p.score))[:top]


def paths_circuit(paths: list[PathScore], *, name: str = "top paths", metadata: dict | None = None) -> Circuit:
    """The union of ``paths`` as a :class:`Circuit`: source -> components -> ``logit``; edge and node scores add up
    the scores of the paths through them (position-free node ids: ``emb``, ``bias:attn3``, ``L3.H5``, ``mlp3``)."""
    circuit = Circuit(name, metadata={"method": "path ensembles (frozen run)", **(metadata or {}),
                                      "paths": [{"path": p.label(), "score": p.score, "length": p.length} for p in paths]})
    circuit.add_node("logit", score=sum(p.score for p in paths))
    for p in paths:
        nodes = [p.source, *p.names[(0 if p.source == "emb" else 1):], "logit"]
        for node in nodes[:-1]:
            prev = circuit.graph.nodes[node]["score"] if node in circuit.graph else 0.0
            circuit.add_node(node, score=(prev or 0.0) + p.score)
        for a, b in zip(nodes[:-1], nodes[1:], strict=True):
            w = circuit.graph.edges[a, b]["weight"] if circuit.graph.has_edge(a, b) else 0.0
            circuit.add_edge(a, b, w + p.score)
    return circuit
