"""Direct contributions into a target read from the residual stream, with patterns and norm scales frozen.

A :class:`State` is a vector ``w`` read from the residual stream at one position and one *stage*: stage ``2l`` is
the input of layer ``l``'s attention (``resid_pre``), ``2l + 1`` the input of its MLP (``resid_mid``) and ``2L`` the
input of the final norm. Its value is ``w . resid(stage, position) + constant``; the residual there is the sum of the
embedding and the outputs of the sublayers before the stage, so the value splits exactly into (METHODS.md section 1):

- embedding: ``w . embed[t]``;
- transcoder feature ``i`` of layer ``l`` at ``t``: ``z_i * (W_dec[i] . w)`` (``W_dec[i] . w`` is the pullback);
  its decoder bias ``b_dec . w``, skip term ``(W_skip^T w) . x``, and error node ``(mlp_out - transcoder out) . w``;
- an MLP without a transcoder: ``mlp_out[l, t] . w`` (one node);
- attention head ``h`` of layer ``l`` from source ``s``: ``A_h[t, s] * (W_V W_O,h w) . ln1[l, s]``, i.e. the vector
  ``A_h[t, s] / scale1[l, s] * P W_V W_O,h w`` read from ``resid_pre`` of layer ``l`` at ``s`` (P centres for
  LayerNorm; query heads sharing one key-value head use its W_V; rotary only touches Q and K);
  its value bias ``sum_s A_h[t, s] * b_V . (W_O,h w)`` and the layer's output bias ``b_O . w``;
- the target's own constant (``b_enc`` of a feature, ``b_U`` of a logit difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from circuits.dictionaries.model import Dictionary
from circuits.transcoder_paths.frozen import FrozenRun

__all__ = [
    "State",
    "Target",
    "de_embedding",
    "direct_contributions",
    "embedding_contribution",
    "feature_contributions",
    "feature_pullback",
    "feature_pullbacks",
    "feature_state",
    "feature_target",
    "head_contributions",
    "head_state",
    "logit_target",
    "state_value",
]


@dataclass
class State:
    """A vector ``w`` [d_model] read at ``stage`` (2l: before attention l, 2l+1: before MLP l, 2L: final norm) and
    ``position``; its value is ``w . resid(stage, position) + constant``."""

    vector: torch.Tensor
    stage: int
    position: int
    constant: float = 0.0


@dataclass
class Target:
    """What a circuit explains: its node id, its state and its actual value in the clean run."""

    node: str
    state: State
    value: float
    label: str = ""


def _position(run: FrozenRun, position: int) -> int:
    pos = position + run.seq_len if position < 0 else position
    if not 0 <= pos < run.seq_len:
        raise ValueError(f"position {position} is outside the prompt (length {run.seq_len})")
    return pos


def logit_target(run: FrozenRun, correct: int, incorrect: int, position: int = -1) -> Target:
    """Target: ``logit[correct] - logit[incorrect]`` at ``position``, the final norm frozen at its clean scale."""
    vocab = run.W_U.shape[1]
    for name, tok in (("correct", correct), ("incorrect", incorrect)):
        if not 0 <= int(tok) < vocab:
            raise ValueError(f"{name} token id {tok} is outside the vocabulary (0..{vocab - 1})")
    pos = _position(run, position)
    direction = run.W_U[:, int(correct)] - run.W_U[:, int(incorrect)]
    state = State(run.center(direction) / run.final_scale[pos], 2 * run.n_layers, pos,
                  float(run.b_U[int(correct)] - run.b_U[int(incorrect)]))
    value = float(run.logits[pos, int(correct)] - run.logits[pos, int(incorrect)])
    return Target("logit", state, value, f"logit[{int(correct)}] - logit[{int(incorrect)}] @ {pos}")


def feature_state(run: FrozenRun, layer: int, feature: int, position: int, link: float = 1.0) -> State:
    """``link`` times the pre-activation of transcoder feature ``feature`` of ``layer`` at ``position``, as a State
    read before that layer's MLP: vector ``link * P W_enc[:, feature] / scale2[layer, position]``."""
    if layer not in run.transcoders:
        raise LookupError(f"no transcoder at layer {layer}; transcoder layers: {sorted(run.transcoders)}")
    tc = run.transcoders[layer]
    if not 0 <= feature < tc.d_sae:
        raise ValueError(f"feature {feature} is outside the transcoder's {tc.d_sae} latents")
    pos = _position(run, position)
    w_enc = tc.W_enc[:, feature].detach()
    constant = float(tc.b_enc[feature]) - (float(tc.b_dec @ w_enc) if tc.apply_b_dec_to_input else 0.0)
    return State(link * run.center(w_enc) / run.ln2_scale[layer, pos], 2 * layer + 1, pos, link * constant)


def feature_target(run: FrozenRun, layer: int, feature: int, position: int = -1) -> Target:
    """Target: the pre-activation of transcoder feature ``feature`` of ``layer`` at ``position``."""
    state = feature_state(run, layer, feature, position)
    pre = run.transcoders[layer].pre_activation(run.ln2[layer, state.position])[feature]
    return Target(f"tc{layer}.f{feature}@{state.position}", state, float(pre), f"pre-activation of tc{layer}.f{feature}")


def state_value(run: FrozenRun, state: State) -> float:
    """``w . resid(stage, position) + constant``, the residual rebuilt from the frozen sublayer outputs."""
    t, stage = state.position, state.stage
    resid = run.embed[t].clone()
    for layer in range(run.n_layers):
        if 2 * layer + 1 <= stage:
            resid += run.attn_out[layer, t]
        if 2 * layer + 2 <= stage:
            resid += run.mlp_out[layer, t]
    return float(state.vector @ resid) + state.constant


def feature_pullbacks(run: FrozenRun, layer: int, state: State) -> torch.Tensor:
    """``W_dec[i] . w`` for every latent ``i`` of the layer-``layer`` transcoder [d_sae] (input-invariant)."""
    return run.transcoders[layer].W_dec.detach().to(state.vector.dtype) @ state.vector


def feature_pullback(source: Dictionary, target: Dictionary, feature: int, *, centered: bool = False) -> torch.Tensor:
    """The input-invariant pullback of ``target``'s feature onto every latent of an earlier transcoder ``source``:
    ``W_dec_source @ P W_enc_target[:, feature]`` [d_sae_source] (P centres when the model uses LayerNorm). The
    contribution of source latent i to the feature's pre-activation at a token is ``z_i * pullback_i / scale2``."""
    w_enc = target.W_enc[:, feature].detach()
    if centered:
        w_enc = w_enc - w_enc.mean()
    return source.W_dec.detach().to(w_enc.dtype) @ w_enc


def de_embedding(W_E: torch.Tensor, transcoder: Dictionary, feature: int, *, centered: bool = False) -> torch.Tensor:
    """One score per vocabulary token [vocab]: ``W_E P W_enc[:, feature]``, how much each token's embedding alone
    drives the feature (divide by the norm scale of a token to get its contribution at that token)."""
    w_enc = transcoder.W_enc[:, feature].detach().to(W_E.dtype)
    if centered:
        w_enc = w_enc - w_enc.mean()
    return W_E.detach() @ w_enc


def feature_contributions(run: FrozenRun, state: State) -> dict[int, torch.Tensor]:
    """Layer -> ``z_i * pullback_i`` [d_sae] for every transcoder upstream of ``state`` (zero where inactive)."""
    return {
        layer: run.z[layer][state.position] * feature_pullbacks(run, layer, state)
        for layer in sorted(run.transcoders)
        if 2 * layer + 2 <= state.stage
    }


def _ov_vectors(run: FrozenRun, state: State, layers: list[int]) -> torch.Tensor:
    """``W_V[kv(h)] W_O[h] w`` for the given layers [len(layers), H, d]."""
    lo, hi = layers[0], layers[-1] + 1
    if layers != list(range(lo, hi)):
        raise ValueError(f"layers must be consecutive, got {layers}")
    o = torch.einsum("lhed,d->lhe", run.W_O[lo:hi], state.vector)  # [l, H, d_head]
    o = o.view(hi - lo, run.W_V.shape[1], run.n_rep, -1)  # query heads grouped by their key-value head
    return torch.einsum("lkde,lkre->lkrd", run.W_V[lo:hi], o).reshape(hi - lo, run.n_heads, -1)


def head_contributions(run: FrozenRun, state: State) -> torch.Tensor:
    """Contribution of each (layer, head, source) to ``state`` [L, H, seq]: ``A[t, s] * ln1[l, s] . (W_V W_O w)``;
    zero for layers at or after the stage and for sources after the position."""
    out = torch.zeros(run.n_layers, run.n_heads, run.seq_len, device=state.vector.device, dtype=state.vector.dtype)
    layers = [layer for layer in range(run.n_layers) if 2 * layer + 1 <= state.stage]
    if not layers:
        return out
    ov = _ov_vectors(run, state, layers)  # [l, H, d]
    n = len(layers)
    reads = torch.einsum("lhd,lsd->lhs", ov, run.ln1[:n])  # [l, H, seq]
    out[:n] = run.pattern[:n, :, state.position, :] * reads
    return out


def head_state(run: FrozenRun, state: State, layer: int, head: int, source: int) -> State:
    """The State at ``source`` before layer ``layer``'s attention whose value is head ``head``'s contribution from
    ``source`` to ``state``: vector ``A[t, s] / scale1[l, s] * P W_V W_O,h w``."""
    if not 2 * layer + 1 <= state.stage:
        raise ValueError(f"layer {layer}'s attention is not upstream of stage {state.stage}")
    if not 0 <= source <= state.position:
        raise ValueError(f"source {source} must lie in 0..{state.position}")
    ov = _ov_vectors(run, state, [layer])[0, head]
    a = run.pattern[layer, head, state.position, source]
    return State(a * run.center(ov) / run.ln1_scale[layer, source], 2 * layer, source)


def embedding_contribution(run: FrozenRun, state: State) -> float:
    """``w . embed[t]`` (token and learned position embedding)."""
    return float(state.vector @ run.embed[state.position])


def _row(node: str, kind: str, value: float, **extra) -> dict:
    return {"node": node, "kind": kind, "layer": None, "head": None, "feature": None, "source": None,
            "value": float(value), **extra}


def direct_contributions(run: FrozenRun, state: State, *, min_abs: float = 0.0) -> pd.DataFrame:
    """Every direct contribution into ``state``, one row each: columns node, kind (emb, feature, error, mlp, head,
    skip, bias), layer, head, feature, source (head rows: source position; their node ``L{l}.H{h}@{t}:{s}``), value. The values sum to
    :func:`state_value` (the completeness identity); ``min_abs`` drops head and feature rows smaller than it."""
    t = state.position
    w = state.vector
    rows = [_row(f"emb@{t}", "emb", embedding_contribution(run, state))]
    heads = head_contributions(run, state)
    for layer in range(run.n_layers):
        if 2 * layer + 1 <= state.stage:
            o = torch.einsum("hed,d->he", run.W_O[layer], w)
            b_v = run.b_V[layer].repeat_interleave(run.n_rep, dim=0)  # [H, d_head]
            a_sum = run.pattern[layer, :, t, : t + 1].sum(-1)  # [H]
            for h in range(run.n_heads):
                for s in range(t + 1):
                    value = float(heads[layer, h, s])
                    if abs(value) >= min_abs:
                        rows.append(_row(f"L{layer}.H{h}@{t}:{s}", "head", value, layer=layer, head=h, source=s))
                rows.append(_row(f"bias:b_V{layer}.H{h}@{t}", "bias", a_sum[h] * (b_v[h] @ o[h]), layer=layer, head=h))
            rows.append(_row(f"bias:b_O{layer}@{t}", "bias", run.b_O[layer] @ w, layer=layer))
        if 2 * layer + 2 <= state.stage:
            if layer in run.transcoders:
                tc = run.transcoders[layer]
                contrib = run.z[layer][t] * feature_pullbacks(run, layer, state)
                for i in torch.nonzero(run.z[layer][t]).flatten().tolist():
                    if abs(float(contrib[i])) >= min_abs:
                        rows.append(_row(f"tc{layer}.f{i}@{t}", "feature", contrib[i], layer=layer, feature=i))
                rows.append(_row(f"bias:b_dec{layer}@{t}", "bias", tc.b_dec.detach().to(state.vector.dtype) @ w, layer=layer))
                if tc.W_skip is not None:
                    skip = run.ln2[layer, t] @ tc.W_skip.detach().to(state.vector.dtype) @ w
                    rows.append(_row(f"bias:skip{layer}@{t}", "skip", skip, layer=layer))
                rows.append(_row(f"err:tc{layer}@{t}", "error", run.error[layer][t] @ w, layer=layer))
            else:
                rows.append(_row(f"mlp{layer}@{t}", "mlp", run.mlp_out[layer, t] @ w, layer=layer))
    rows.append(_row(f"bias:target@{t}", "bias", state.constant))
    return pd.DataFrame(rows)
