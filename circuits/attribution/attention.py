"""Attention-side (QK) attribution: one head's pre-softmax score at a (query, key) pair split into pairwise terms of
the sources at the query side and the key side.

In the frozen replacement model (:class:`~circuits.attribution.replacement.ReplacementModel`: norm scales frozen from
the clean run, MLPs written as transcoder features plus error nodes) the residual stream entering layer l at position
p is a sum of source vectors: the token embedding ``emb@p``, each earlier head's output ``L{l'}.H{h}@p`` (attention
outputs are frozen, each its own source), each active feature's decoded write ``tc{l'}.f{i}@p``, each error node
``err:tc{l'}@p`` (``mlp{l'}@p``, the whole MLP output, for a layer without features) and one ``bias`` (learned
position, output and decoder biases, norm biases). A skip transcoder's ``x @ W_skip`` term is linear in its
frozen-norm input, so it is shared out to the sources of that input. With the norm's scale frozen, the query and key
are linear in the sources too (the rotary rotation at a fixed position is linear; the query/key biases and the
norm bias join ``bias``), so

    score = q . k / sqrt(d_head) = sum_i sum_j  q_i . k_j / sqrt(d_head)

with q_i the query of source i at the query position and k_j the key of source j at the key position: the terms
[i, j] sum to the model's score exactly (up to float rounding).

Shapes: S sources at one position, d = d_model, dh = d_head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from circuits.attribution.replacement import ReplacementModel

__all__ = ["QKAttribution", "qk_attribution", "residual_sources"]


@dataclass
class QKAttribution:
    """One head's score at (query_pos, key_pos) split by source: ``terms`` [Sq, Sk] (query source i, key source j),
    ``query_sources`` / ``key_sources`` their node ids, ``score`` the model's pre-softmax score (from the clean run)."""

    layer: int
    head: int
    query_pos: int
    key_pos: int
    query_sources: list[str]
    key_sources: list[str]
    terms: torch.Tensor
    score: float

    @property
    def query_totals(self) -> torch.Tensor:
        """[Sq]: each query-side source's share of the score (its row summed over every key source)."""
        return self.terms.sum(1)

    @property
    def key_totals(self) -> torch.Tensor:
        """[Sk]: each key-side source's share of the score."""
        return self.terms.sum(0)


def _lin_norm(rm: ReplacementModel, C: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The frozen norm's linear part on source rows C [S, d] (centred for LayerNorm, times scale and weight)."""
    if not rm.w.rms:
        C = C - C.mean(-1, keepdim=True)
    return C * scale * weight


def residual_sources(rm: ReplacementModel, layer: int, position: int) -> tuple[list[str], torch.Tensor]:
    """(ids, C [S, d]): the sources of the residual stream entering ``layer`` at ``position`` (``layer`` = n_layers:
    the final residual), rows summing to that residual exactly. Row 0 is ``bias``, row 1 ``emb@p``."""
    w, p = rm.w, position
    d = w.W_E.shape[1]
    ids = ["bias", f"emb@{p}"]
    first = w.W_pos[p] if w.W_pos is not None else torch.zeros(d, dtype=rm.dtype, device=rm.device)
    C = torch.stack([first, rm.embed[p]])
    row: dict[str, int] = {}
    names = {m: s.name for s in rm.sets.values() for m in s.decoders}
    for lay in range(layer):
        lc = rm.clean.layers[lay]
        heads = torch.einsum("he,hed->hd", lc.z[0, p], w.W_O[lay])
        ids += [f"L{lay}.H{h}@{p}" for h in range(heads.shape[0])]
        C = torch.cat([C, heads])
        C[0] = C[0] + w.b_O[lay]
        s = rm.sets.get(lay)
        if s is not None and s.W_skip is not None:
            skip = _lin_norm(rm, C, lc.scale2[0, p], w.ln2_w[lay]) @ s.W_skip
            if not w.rms:
                skip[0] = skip[0] + w.ln2_b[lay] @ s.W_skip
            C = C + skip
        new = []
        for src_layer, sl in rm.set_slices().items():
            src = rm.sets[src_layer]
            W = src.decoders.get(lay)
            if W is None:
                continue
            C[0] = C[0] + src.b_dec.get(lay, 0)
            at = (rm.active[sl, 1] == p).nonzero().reshape(-1) + sl.start
            for i in at.tolist():
                node = f"{src.name}{src_layer}.f{int(rm.active[i, 2])}@{p}"
                vec = rm.activations[i] * W[rm.active[i, 2]]
                if node in row:
                    C[row[node]] += vec
                else:
                    row[node] = len(ids) + len(new)
                    new.append((node, vec))
        if new:
            ids += [n for n, _ in new]
            C = torch.cat([C, torch.stack([v for _, v in new])])
        ids.append(f"err:{names[lay]}{lay}@{p}" if lay in names else f"mlp{lay}@{p}")
        C = torch.cat([C, rm.errors[lay, p][None]])
    return ids, C


def _side(rm: ReplacementModel, layer: int, pos: int, W: torch.Tensor, b: torch.Tensor
          ) -> tuple[list[str], torch.Tensor]:
    """(ids, [S, dh]): each source's query (or key, by W [d, dh] and b [dh]) at ``pos``, rotated there."""
    w = rm.w
    ids, C = residual_sources(rm, layer, pos)
    h = _lin_norm(rm, C, rm.clean.layers[layer].scale1[0, pos], w.ln1_w[layer])
    if not w.rms:
        h[0] = h[0] + w.ln1_b[layer]
    out = h @ W
    out[0] = out[0] + b
    if rm.clean.rotary is not None:
        cos, sin = rm.clean.rotary[0][pos], rm.clean.rotary[1][pos]
        half = out.shape[-1] // 2
        out = out * cos + torch.cat([-out[:, half:], out[:, :half]], -1) * sin
    return ids, out


@torch.no_grad()
def qk_attribution(rm: ReplacementModel, layer: int, head: int, query_pos: int, key_pos: int) -> QKAttribution:
    """Split head ``head`` of ``layer``'s pre-softmax score at (``query_pos``, ``key_pos``) into the pairwise
    terms of the query- and key-side sources (module docstring). ValueError for a layer, head or position out of
    range, or a key after the query (masked)."""
    w = rm.w
    if not 0 <= layer < rm.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{rm.n_layers - 1}")
    if not 0 <= head < w.n_heads:
        raise ValueError(f"head {head} out of range: layer {layer} has heads 0..{w.n_heads - 1}")
    for what, pos in (("query", query_pos), ("key", key_pos)):
        if not 0 <= pos < rm.n_pos:
            raise ValueError(f"{what} position {pos} is outside the prompt (positions 0..{rm.n_pos - 1})")
    if key_pos > query_pos:
        raise ValueError(f"key position {key_pos} comes after query position {query_pos}: causal attention masks it")
    kv = head // (w.n_heads // w.n_kv)
    q_ids, q = _side(rm, layer, query_pos, w.W_Q[layer, head], w.b_Q[layer, head])
    k_ids, k = _side(rm, layer, key_pos, w.W_K[layer, kv], w.b_K[layer, kv])
    scale = math.sqrt(w.d_head)
    lc = rm.clean.layers[layer]
    score = float(lc.q[0, query_pos, head] @ lc.k[0, key_pos, kv]) / scale
    return QKAttribution(layer, head, query_pos, key_pos, q_ids, k_ids, (q @ k.T / scale).cpu(), score)
