"""Greedy path search (beam search) from a target back to the embeddings (METHODS.md section 1).

A path starts at the target and steps back one node at a time: to a transcoder feature at the same position (link
``W_dec[i] . w``, the pullback; the path continues from that feature's encoder row), to an attention head from a
source position (node ``L{l}.H{h}@{t}:{s}``; the path continues at the source with the vector
``A[t, s] / scale * P W_V W_O w``), or to the embedding (the path ends). Each path carries one State whose vector
already holds the product of the links so far, so a path's value — its earliest node's contribution to the target
along the path — is the product of its links times the activation of its earliest feature (a head step's link is
folded into the vector it passes on).

At each step every path in the beam is extended by all its candidates and the global top ``num_branches`` by
absolute value are kept; every kept path is recorded, and those not ending in the embedding form the next beam.

A layer-0 head is taken together with its embedding step. The State it passes on is read before layer 0's attention,
where the residual stream is the embedding alone, so by the completeness identity that State's value (the head's
contribution) has exactly one term, ``emb@s`` (its constant is zero). "The path ends at ``L0.H1@t:s``" and "the path
continues to ``emb@s``" are one path with one value: kept as two, they took two beam slots for one contribution (37%
of the slots on ``toy/llama-d64-l4`` with small trained transcoders at beam width 8, depth 4). The search keeps it
once, as ``... <- L0.H1@t:s <- emb@s`` ending there; the embedding step carries the head's value (``embed[s]`` read
through the head's state gives the same number to about 1e-6 relative, the float32 rounding of the cached norm
output) and the pair is one search step toward ``max_depth``. A path may still end at a head of a later layer: that
head reads a residual of several parts, so its extensions carry values different from its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from circuits.transcoder_paths.contributions import (
    State,
    Target,
    embedding_contribution,
    feature_contributions,
    feature_state,
    head_contributions,
    head_state,
)
from circuits.transcoder_paths.frozen import FrozenRun

__all__ = ["Path", "Step", "paths_table", "search_paths"]


@dataclass(frozen=True)
class Step:
    """One node of a path: its id, the contribution to the target of the path up to it (``value``), the node's
    activation (a feature's z, a head's attention weight) and, for a head, the source position it reads."""

    node: str
    value: float
    activation: float | None = None
    source: int | None = None


@dataclass
class Path:
    """Steps from the target (first) back to the earliest node (last); ``state`` is where the path would continue
    (None once it ends in the embedding); ``expanded`` is True when the search extended it. One search step adds
    one node, or two for a layer-0 head and the embedding it reads."""

    steps: list[Step]
    state: State | None
    expanded: bool = False
    children: list[Path] = field(default_factory=list, repr=False)

    @property
    def value(self) -> float:
        """The contribution of the earliest node to the target along this path."""
        return self.steps[-1].value

    @property
    def key(self) -> tuple:
        return tuple((s.node, s.source) for s in self.steps)

    def describe(self) -> str:
        """``logit <- L5.H2@9:3 <- tc3.f12@3 <- emb@3`` (a head's id names its source position)."""
        return " <- ".join(s.node for s in self.steps)


def _candidates(run: FrozenRun, path: Path, limit: int, exclude_bos: bool) -> list[Path]:
    """The ``limit`` largest extensions of ``path`` by absolute value."""
    state = path.state
    assert state is not None
    t = state.position
    found: list[tuple[float, str, tuple]] = [(embedding_contribution(run, state), "emb", ())]
    for layer, contrib in feature_contributions(run, state).items():
        active = torch.nonzero(run.z[layer][t]).flatten()
        if active.numel():
            top = contrib[active].abs().topk(min(limit, active.numel())).indices
            found += [(float(contrib[i]), "feature", (layer, int(i))) for i in active[top].tolist()]
    heads = head_contributions(run, state)  # [L, H, seq]
    if exclude_bos and run.bos_id is not None and int(run.tokens[0]) == run.bos_id:
        heads[:, :, 0] = 0
    flat = heads.flatten()
    n_keep = min(limit, int((flat != 0).sum()))
    if n_keep:
        for i in flat.abs().topk(n_keep).indices.tolist():
            layer, rest = divmod(i, run.n_heads * run.seq_len)
            head, source = divmod(rest, run.seq_len)
            found.append((float(flat[i]), "head", (layer, head, source)))
    found.sort(key=lambda c: -abs(c[0]))
    out = []
    for value, kind, where in found[:limit]:
        if kind == "emb":
            out.append(Path(path.steps + [Step(f"emb@{t}", value)], None))
        elif kind == "feature":
            layer, i = where
            link = float(run.transcoders[layer].W_dec[i].to(state.vector.dtype) @ state.vector)
            z = float(run.z[layer][t, i])
            step = Step(f"tc{layer}.f{i}@{t}", value, activation=z)
            out.append(Path(path.steps + [step], feature_state(run, layer, i, t, link=link)))
        else:
            layer, head, source = where
            a = float(run.pattern[layer, head, t, source])
            step = Step(f"L{layer}.H{head}@{t}:{source}", value, activation=a, source=source)
            nxt = head_state(run, state, layer, head, source)
            if nxt.stage == 0:  # reads the embedding alone: one path, ending there (module docstring)
                out.append(Path(path.steps + [step, Step(f"emb@{source}", value)], None))
            else:
                out.append(Path(path.steps + [step], nxt))
    return out


def search_paths(
    run: FrozenRun, target: Target, *, num_branches: int = 8, max_depth: int = 4, exclude_bos: bool = True
) -> tuple[Path, list[Path]]:
    """Beam search back from ``target``: returns (the root path, every path kept at any step, largest |value| first).

    num_branches: beam width (paths kept per step); max_depth: search steps back from the target (a layer-0 head
    and the embedding it reads are one step). Head sources at a leading BOS token are skipped when ``exclude_bos``
    (their contribution is mostly a bias).
    """
    if num_branches < 1 or max_depth < 1:
        raise ValueError(f"num_branches and max_depth must be at least 1, got {num_branches} and {max_depth}")
    root = Path([Step(target.node, target.value)], target.state)
    beam, kept = [root], []
    for _ in range(max_depth):
        candidates: list[tuple[Path, Path]] = []  # (parent, extension)
        for path in beam:
            path.expanded = True
            candidates += [(path, c) for c in _candidates(run, path, num_branches, exclude_bos)]
        candidates.sort(key=lambda pc: -abs(pc[1].value))
        chosen = [c for _, c in candidates[:num_branches]]
        for parent, path in candidates[:num_branches]:
            parent.children.append(path)
        kept += chosen
        beam = [p for p in chosen if p.state is not None]
        if not beam:
            break
    kept.sort(key=lambda p: -abs(p.value))
    return root, kept


def paths_table(paths: list[Path]) -> pd.DataFrame:
    """One row per path: rank, path (text), value, depth (nodes after the target; a layer-0 head and its embedding
    are two), start (earliest node), ends_in_embedding."""
    return pd.DataFrame(
        [
            {"rank": i, "path": p.describe(), "value": p.value, "depth": len(p.steps) - 1, "start": p.steps[-1].node,
             "ends_in_embedding": p.state is None}
            for i, p in enumerate(paths)
        ],
        columns=["rank", "path", "value", "depth", "start", "ends_in_embedding"],
    )
