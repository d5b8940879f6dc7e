"""The edge-masked forward: every receiver reads its own mix of each sender's output in this run and when ablated.

For a receiver ``r`` (a head, an MLP, the logits) and a mask ``m`` [E] over the edges of :class:`EdgeGraph`::

    input_r = sum over senders s before r of  m[s->r] * out_s(this run) + (1 - m[s->r]) * out_s(ablated)

with ``out_s(ablated)`` the sender's output in a plain run on the corrupted tokens (ablation ``corrupted``, row by
row) or its mean over that batch at each position (``mean``). Each head receiver normalizes its own input (norms
are recomputed, never frozen) and computes its query, key and value from it, so a head's three inputs are one
(with the graph's ``qkv`` each of the three has its own input and norm). The
mask is a float tensor (differentiable, any value, a batch [K, E] of masks at once).

Biases: the embedding sender is ``W_E[token] + W_pos[position]``; a head's output is ``z_h W_O[h] + b_O / H`` (the
layer's output bias shared equally among its heads) and an MLP's output includes ``b_out``. These biases are the same
in every run, so they cancel in every difference ``out_s(this run) - out_s(ablated)``: where they are counted
changes no mask's result. All ones gives the model's own logits, all zeros the corrupted run's (``ablated`` from
the corrupted run). The forward runs on the weights' device in their dtype (float64 included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from circuits.edges.graph import EdgeGraph
from circuits.frozen.weights import Weights, activation, normalize, rotate

__all__ = ["ABLATIONS", "EdgeRun", "ablated_outputs", "edge_forward", "embed"]

ABLATIONS: tuple[str, ...] = ("corrupted", "mean")


@dataclass
class EdgeRun:
    """One edge-masked run over K masks and [B, T] tokens.

    logits [K, B, T, V]; outputs [S, K, B, T, d] each sender's output in this run; inputs: the receiver inputs as
    computed, ``(first receiver index, tensor [K, n, B, T, d])`` per group of receivers (with ``keep`` they retain
    their gradient, read by :meth:`input_grads`).
    """

    logits: torch.Tensor
    outputs: torch.Tensor | None
    inputs: list[tuple[int, torch.Tensor]]

    def input_grads(self) -> torch.Tensor:
        """d(backpropagated scalar)/d input_r of every receiver: [R, K, B, T, d] (after ``backward``)."""
        parts = []
        for _, x in self.inputs:
            g = x.grad if x.grad is not None else torch.zeros_like(x)
            parts.append(g.transpose(0, 1))
        return torch.cat(parts, 0)


def _heads(w: Weights, layer: int, x: torch.Tensor, rot) -> torch.Tensor:
    """Head outputs [H, K, B, T, d] of ``layer`` from each head's own input x [K, H, B, T, d] (or its query, key
    and value inputs, x [K, 3H, B, T, d]: every head's q, then every k, then every v)."""
    H, rep = w.n_heads, w.n_heads // w.n_kv
    h = normalize(w, x, w.ln1_w[layer], w.ln1_b[layer])
    hq, hk, hv = (h[:, :H], h[:, H:2 * H], h[:, 2 * H:]) if h.shape[1] == 3 * H else (h, h, h)
    W_K, W_V = w.W_K[layer].repeat_interleave(rep, 0), w.W_V[layer].repeat_interleave(rep, 0)
    b_K, b_V = w.b_K[layer].repeat_interleave(rep, 0), w.b_V[layer].repeat_interleave(rep, 0)
    q = torch.einsum("khbtd,hde->kbthe", hq, w.W_Q[layer]) + w.b_Q[layer]
    k = torch.einsum("khbtd,hde->kbthe", hk, W_K) + b_K
    v = torch.einsum("khbtd,hde->kbthe", hv, W_V) + b_V
    if rot is not None:
        q, k = rotate(q, *rot), rotate(k, *rot)
    scores = torch.einsum("kbqhe,kbshe->kbhqs", q, k) / math.sqrt(w.d_head)
    T = q.shape[-3]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
    z = torch.einsum("kbhqs,kbshe->kbqhe", pattern, v)
    return torch.einsum("kbqhe,hed->hkbqd", z, w.W_O[layer]) + w.b_O[layer] / H


def _mlp(w: Weights, layer: int, x: torch.Tensor) -> torch.Tensor:
    """MLP output [K, B, T, d] from its input x [K, B, T, d]."""
    h = normalize(w, x, w.ln2_w[layer], w.ln2_b[layer])
    up = h @ w.W_in[layer] + w.b_in[layer]
    post = up * activation(w.act, h @ w.W_gate[layer]) if w.gated else activation(w.act, up)
    return post @ w.W_out[layer] + w.b_out[layer]


def edge_forward(w: Weights, graph: EdgeGraph, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                 ablated: torch.Tensor | None = None, *, emb: torch.Tensor | None = None,
                 keep: bool = False) -> EdgeRun:
    """The edge-masked run of ``tokens`` [B, T] (see the module docstring).

    mask: [E] or [K, E] (None: every edge at 1, the plain run); ablated: [S, B or 1, T, d] each sender's ablated
    output (None: zeros, which with an all-ones mask is again the plain run); emb: [B, T, d] replaces the embedding
    sender's output of this run (integrated gradients along the input). ``keep``: keep the sender outputs and let the
    receiver inputs retain their gradients. Returns :class:`EdgeRun` (logits [K, B, T, V], K = 1 for a 1-D mask).
    """
    device, dtype = w.W_E.device, w.W_E.dtype
    tokens = tokens.to(device)
    B, T = tokens.shape
    plain = mask is None  # every edge at 1: each receiver reads the residual stream, summed as it goes
    if mask is None:
        mask = torch.ones(1, graph.n_edges, dtype=dtype, device=device)
    mask = mask.to(device, dtype)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape[-1] != graph.n_edges:
        raise ValueError(f"the mask has {mask.shape[-1]} entries, the graph {graph.n_edges} edges")
    K, S, H = mask.shape[0], len(graph.senders), w.n_heads
    M = graph.dense(mask)  # [K, S, R]
    if ablated is None:
        ablated = torch.zeros(S, 1, T, w.W_E.shape[1], dtype=dtype, device=device)
    ablated = ablated.to(device, dtype)
    prefix = torch.cat([torch.zeros_like(ablated[:1]), ablated.cumsum(0)])  # prefix[p] = sum of ablated[:p]
    rot = w.rotary(T)

    emb = embed(w, tokens) if emb is None else emb.to(device, dtype)
    blocks: list[tuple[int, torch.Tensor]] = [(0, (emb - ablated[0]).expand(K, B, T, -1)[None])]  # out - ablated
    outputs = [emb.expand(K, B, T, -1)[None]] if keep else []
    inputs: list[tuple[int, torch.Tensor]] = []
    resid = [emb[None]]  # the plain run's residual stream [1, B, T, d]

    def gather(p: int, r0: int, r1: int) -> torch.Tensor:
        """Inputs [K, r1 - r0, B, T, d] of receivers r0..r1-1, which read the senders before index p."""
        if plain:
            x = resid[0][:, None].expand(1, r1 - r0, B, T, -1)
        else:
            x = prefix[p].expand(B, T, -1)[None, None]
            for start, diff in blocks:
                if start >= p:
                    break
                x = x + torch.einsum("ksr,skbtd->krbtd", M[:, start:start + diff.shape[0], r0:r1], diff)
        if keep and x.requires_grad:
            x.retain_grad()
        inputs.append((r0, x))
        return x

    s, r = 1, 0  # the next sender (after emb) and receiver
    for layer in range(w.n_layers):
        n_in = 3 * H if graph.qkv else H
        out = _heads(w, layer, gather(s, r, r + n_in), rot)  # [H, K, B, T, d]
        if plain:
            resid[0] = resid[0] + out.sum(0)
        else:
            blocks.append((s, out - ablated[s:s + H, None]))
        if keep:
            outputs.append(out)
        s, r = s + H, r + n_in
        if w.has_mlp:
            out = _mlp(w, layer, gather(s, r, r + 1)[:, 0])[None]
            if plain:
                resid[0] = resid[0] + out[0]
            else:
                blocks.append((s, out - ablated[s:s + 1, None]))
            if keep:
                outputs.append(out)
            s, r = s + 1, r + 1
    final = normalize(w, gather(S, r, r + 1)[:, 0], w.lnf_w, w.lnf_b)
    logits = final @ w.W_U + w.b_U
    return EdgeRun(logits, torch.cat(outputs) if keep else None, inputs)


def embed(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """The embedding sender's output [B, T, d]: ``W_E[token]`` plus the learned position embedding if any."""
    tokens = tokens.to(w.W_E.device)
    emb = w.W_E[tokens]
    return emb + w.W_pos[:tokens.shape[1]] if w.W_pos is not None else emb


def ablated_outputs(w: Weights, graph: EdgeGraph, corrupted: torch.Tensor, ablation: str = "corrupted"
                    ) -> torch.Tensor:
    """Each sender's ablated output: [S, B, T, d] from a plain run on ``corrupted`` [B, T] (``corrupted``), or its
    mean over the batch at each position, [S, 1, T, d] (``mean``)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; edge ablations: {', '.join(ABLATIONS)}")
    with torch.no_grad():
        out = edge_forward(w, graph, corrupted, keep=True).outputs[:, 0]
    return out.mean(1, keepdim=True) if ablation == "mean" else out
