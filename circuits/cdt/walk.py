"""The fast walk: carry only ``beta``, over only the positions and nodes the metric can see.

Three facts make it cheaper than walking both parts (:func:`circuits.cdt.decompose._walk`, the reference), while
computing the same numbers up to float rounding (the tests compare both in float64):

1. ``gamma = clean - beta`` at every node, because every rule keeps ``beta + gamma`` equal to the clean activation;
   with the clean run kept node by node (:mod:`circuits.cdt.clean`) each rule needs ``beta`` alone, so every matrix
   product runs once instead of twice, and the ``"ablated"`` attention rule computes one pattern instead of two.
2. Causality: a source at positions ``>= p0`` leaves ``beta`` exactly zero at every earlier position under every rule,
   and positions after the last one the metric (or a target) reads are never needed. A chunk of sources walks only the
   window ``[p0, t_end)``; attention reads the clean keys and values before ``p0``.
3. In the last block only the metric's positions feed the readout: its queries and MLP run there alone.

Rows are ``[s, B]`` (sources x examples) and broadcast against the clean run's ``[B]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from circuits.cdt import rules as R
from circuits.cdt.clean import FullCache, LayerCache
from circuits.cdt.nodes import Node
from circuits.cdt.weights import Weights, activation, rotate

__all__ = ["Window", "metric_positions", "readout", "walk_beta"]

Sel = slice | torch.Tensor  # a window of positions, or per-example positions [B, P]


class Window:
    """Where a chunk walks: positions ``[p0, t_end)`` and the metric's positions ``idx`` [B, P]."""

    def __init__(self, p0: int, t_end: int, idx: torch.Tensor):
        self.p0, self.t_end, self.idx = p0, t_end, idx
        self.span = slice(p0, t_end)


def metric_positions(task, B: int, device) -> torch.Tensor:
    """[B, P] the positions whose logits the task's metric reads (P = 1, or the score positions of ``log_prob``)."""
    if task.metric_name == "log_prob":
        pos = task.score_positions.to(device)
        return pos[None].expand(B, -1)
    return task.answer_positions.to(device)[:, None]


def _at(t: torch.Tensor, sel: Sel, dim: int = 1) -> torch.Tensor:
    """The clean tensor ``t`` [B, T, ...] (positions on ``dim``) at a window or at per-example positions [B, P]."""
    if isinstance(sel, slice):
        return t[(slice(None),) * dim + (sel,)]
    rows = torch.arange(t.shape[0], device=t.device)[:, None]
    if dim == 1:
        return t[rows, sel]
    return t[rows, :, sel].transpose(1, 2) if dim == 2 else t  # [B, P, H, ...] -> [B, H, P, ...]


def _gather(x: torch.Tensor, idx: torch.Tensor, p0: int) -> torch.Tensor:
    """Rows ``x`` [s, B, W, ...] of the window starting at ``p0``, at positions ``idx`` [B, P]; zero before ``p0``."""
    local = (idx - p0).clamp_min(0)
    rows = torch.arange(x.shape[1], device=x.device)[:, None]
    out = x[:, rows, local]
    keep = (idx >= p0).to(x.dtype).view(1, *idx.shape, *([1] * (x.dim() - 3)))
    return out * keep


def _bias(beta: torch.Tensor, lin_clean: torch.Tensor, bias: torch.Tensor | None, rules: R.Rules,
          by: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``beta`` plus its share of ``bias`` (:func:`circuits.cdt.rules.bias_share` of ``|W beta|`` and ``|W gamma|``,
    ``W gamma = lin_clean - W beta``; or of ``|x_beta|`` and ``|x_clean - x_beta|`` for ``by = (x_beta, x_clean)``)."""
    if bias is None or rules.bias_split == "gamma" or not bool(bias.any()):
        return beta
    a, clean = (beta, lin_clean) if by is None else by
    return beta + bias * R.bias_share(a.abs(), (clean - a).abs(), rules)


def _norm(w: Weights, beta, scale, normed, weight, bias, rules: R.Rules, x_clean: torch.Tensor) -> torch.Tensor:
    """The norm's beta: scaled by the clean run's statistics (LayerNorm: centred first, then its bias shared by the
    normed parts or, ``norm_bias="input"``, by the input's parts ``beta`` and ``x_clean - beta``)."""
    if w.rms:
        return beta * scale * weight
    by = (beta, x_clean) if rules.norm_bias == "input" else None
    return _bias((beta - beta.mean(-1, keepdim=True)) * scale * weight, normed, bias, rules, by)


def _sign(beta: torch.Tensor, total: torch.Tensor, rules: R.Rules) -> torch.Tensor:
    """The sign rule on ``(beta, total - beta)`` (only when ``rules.sign_rule``)."""
    if not rules.sign_rule:
        return beta
    gamma = total - beta
    opposite = (beta * gamma) < 0
    return torch.where(opposite, torch.where(beta.abs() > gamma.abs(), total, torch.zeros_like(total)), beta)


def _attention(w: Weights, lc: LayerCache, layer: int, h_beta: torch.Tensor, q_sel: Sel, win: Window,
               rot, rules: R.Rules) -> torch.Tensor:
    """Context beta [s, B, Q, H, dh] at the query positions ``q_sel`` from the normed window rows ``h_beta``."""
    p0, t_end, span = win.p0, win.t_end, win.span
    group = w.n_heads // w.n_kv

    def project(x, W, b, lin_sel, rotated):
        out = _bias(torch.einsum("sbtd,hde->sbthe", x, W), _at(lin_sel[0], lin_sel[1]), b, rules)
        if rotated is not None:
            out = rotate(out, *rotated)
        return out

    k_beta = project(h_beta, w.W_K[layer], w.b_K[layer], (lc.k_lin, span), None if rot is None else
                     (rot[0][span], rot[1][span]))
    v_beta = project(h_beta, w.W_V[layer], w.b_V[layer], (lc.v_lin, span), None)
    if isinstance(q_sel, slice):
        h_q, q_rot = h_beta, None if rot is None else (rot[0][span][:, None], rot[1][span][:, None])
        qpos = torch.arange(p0, t_end, device=h_beta.device)[None].expand(h_beta.shape[1], -1)
    else:
        h_q, qpos = _gather(h_beta, q_sel, p0), q_sel
        q_rot = None if rot is None else (rot[0][q_sel][:, :, None], rot[1][q_sel][:, :, None])
    q_beta = _bias(torch.einsum("sbtd,hde->sbthe", h_q, w.W_Q[layer]), _at(lc.q_lin, q_sel), w.b_Q[layer], rules)
    if q_rot is not None:
        half = q_beta.shape[-1] // 2
        rotated = torch.cat([-q_beta[..., half:], q_beta[..., :half]], dim=-1)
        q_beta = q_beta * q_rot[0] + rotated * q_rot[1]
    pad = (0, 0, 0, 0, p0, 0)  # zero beta before the window: [s, B, t_end, KV, dh]
    k_full, v_full = F.pad(k_beta, pad), F.pad(v_beta, pad)
    allowed = torch.arange(t_end, device=qpos.device)[None, None, :] <= qpos[:, :, None]  # [B, Q, t_end]
    if rules.attention == "total":
        A = _at(lc.pattern, q_sel, dim=2)[..., :t_end]  # [B, H, Q, t_end]
        return torch.einsum("bhqk,sbkhe->sbqhe", A, v_full.repeat_interleave(group, dim=-2))
    if rules.attention == "ablated":
        q = _at(lc.q, q_sel) - q_beta
        k = lc.k[:, :t_end] - k_full
        v = lc.v[:, :t_end] - v_full
    else:  # "own"
        q, k, v = q_beta, k_full, v_full
    s, B, Q = q.shape[:3]
    qh = q.reshape(s * B, Q, w.n_heads, -1).transpose(1, 2)
    kh = k.expand(s, *k.shape[1:]).reshape(s * B, t_end, w.n_kv, -1).transpose(1, 2)
    vh = v.expand(s, *v.shape[1:]).reshape(s * B, t_end, w.n_kv, -1).transpose(1, 2)
    if group > 1:
        kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
    mask = allowed[None].expand(s, -1, -1, -1).reshape(s * B, 1, Q, t_end)
    ctx = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2).reshape(s, B, Q, w.n_heads, -1)
    return _at(lc.z, q_sel) - ctx if rules.attention == "ablated" else ctx


def _activation_(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP nonlinearity applied to ``x`` in place where torch has an in-place form (ReLU, SiLU)."""
    if kind == "relu":
        return F.relu_(x)
    if kind == "silu":
        return F.silu(x, inplace=True)
    return activation(kind, x)


def _mlp(w: Weights, lc: LayerCache, layer: int, mid_beta: torch.Tensor, sel: Sel, rules: R.Rules) -> torch.Tensor:
    """The MLP output's beta at ``sel`` from the residual's beta there (sign rule applied)."""
    h = _norm(w, mid_beta, _at(lc.scale2, sel), _at(lc.normed2, sel), w.ln2_w[layer], w.ln2_b[layer], rules,
              _at(lc.resid_mid, sel))
    # gamma's parts, formed in place (large [s, B, T, m] temporaries dominate the elementwise cost), the sign rule on
    # the pre-activations first: up_gamma = up - up_beta; gated: gate_gamma = act(gate_pre - gate_beta), post_beta =
    # post - up_gamma * gate_gamma; otherwise post_beta = post - act(up_gamma).
    up = _at(lc.up, sel)
    up_beta = _sign(_bias(h @ w.W_in[layer], _at(lc.up_lin, sel), w.b_in[layer], rules), up, rules)
    up_gamma = up_beta.neg_().add_(up)
    if w.gated:
        gate_pre = _at(lc.gate_pre, sel)
        gate_gamma = _activation_(w.act, _sign(h @ w.W_gate[layer], gate_pre, rules).neg_().add_(gate_pre))
        post_gamma = up_gamma.mul_(gate_gamma)
    else:
        post_gamma = _activation_(w.act, up_gamma)
    post_beta = post_gamma.neg_().add_(_at(lc.post, sel))
    out = _bias(post_beta @ w.W_out[layer], _at(lc.out_lin, sel), w.b_out[layer], rules)
    return _sign(out, _at(lc.mlp_out, sel), rules)


def walk_beta(w: Weights, fc: FullCache, start: Node, beta0: torch.Tensor, win: Window, targets: list[Node],
              rules: R.Rules, last_at_metric: bool):
    """Walk rows ``beta0`` [s, B, W, ...] (the source's beta on the window) from ``start`` to the metric's positions.

    Returns ``(resid_beta [s, B, P, d] at ``win.idx``, {target index: (mean|beta|, mean|gamma|) [s, B]})``. With
    ``last_at_metric`` the last block computes its queries and MLP at the metric's positions only.
    """
    T = fc.tokens.shape[1]
    span, p0 = win.span, win.p0
    rot = fc.rotary
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(i: int, t: Node, beta_win: torch.Tensor, clean: torch.Tensor) -> None:
        beta = F.pad(beta_win, (0, 0) * (beta_win.dim() - 3) + (p0, T - win.t_end))  # [s, B, T, ...]
        if t.positions is not None:
            pos = torch.tensor(t.positions, device=beta.device)
            beta, clean = beta[:, :, pos], clean[:, pos]
        found[i] = (beta.abs().flatten(2).mean(2), (clean - beta).abs().flatten(2).mean(2))

    first = 0 if start.kind == "emb" else start.layer
    resid = beta0 if start.kind == "emb" else None
    sel: Sel = span
    for layer in range(first, w.n_layers):
        lc = fc.layers[layer]
        last = last_at_metric and layer == w.n_layers - 1
        at_start = layer == first and start.kind != "emb"
        if at_start and start.kind == "mlp":
            out = _gather(beta0, win.idx, p0) if last else beta0
            sel = win.idx if last else span
            resid = _sign(out, _at(lc.resid_post, sel), rules)
            continue
        if at_start:
            z = _gather(beta0, win.idx, p0) if last else beta0
            sel = win.idx if last else span
        else:
            h = _norm(w, resid, _at(lc.scale1, span), _at(lc.normed1, span), w.ln1_w[layer], w.ln1_b[layer], rules,
                      _at(lc.resid_pre, span))
            sel = win.idx if last else span
            z = _attention(w, lc, layer, h, sel, win, rot, rules)
        for i, t in enumerate(targets):
            if t.kind == "head" and t.layer == layer:
                W_O = w.W_O[layer, t.head]
                record(i, t, z[..., t.head, :] @ W_O, lc.z[..., t.head, :] @ W_O)
        attn = _bias(torch.einsum("sbthe,hed->sbtd", z, w.W_O[layer]), _at(lc.attn_lin, sel), w.b_O[layer], rules)
        base = 0 if at_start else (_gather(resid, win.idx, p0) if last else resid)
        mid = base + attn  # no sign rule after the attention branch (as published)
        out = _mlp(w, lc, layer, mid, sel, rules)
        for i, t in enumerate(targets):
            if t.kind == "mlp" and t.layer == layer:
                record(i, t, out, lc.mlp_out)
        resid = _sign(mid + out, _at(lc.resid_post, sel), rules)
    if not (last_at_metric and isinstance(sel, torch.Tensor)):
        resid = _gather(resid, win.idx, p0)
    return resid, found


def readout(w: Weights, fc: FullCache, task, resid: torch.Tensor, idx: torch.Tensor, rules: R.Rules):
    """Logit parts at the metric's positions: ``(beta, gamma)`` [s*B, P, V'] (V' = 2 for ``logit_diff``)."""
    s, B, P, _ = resid.shape
    scale, normed = _at(fc.final_scale, idx), _at(fc.final_normed, idx)
    n_beta = _norm(w, resid, scale, normed, w.lnf_w, w.lnf_b, rules, _at(fc.layers[-1].resid_post, idx))
    h_clean = normed if w.rms else normed + w.lnf_b  # RMSNorm has no bias
    if task.metric_name == "logit_diff":
        ids = torch.stack([task.correct, task.incorrect], -1).to(resid.device)  # [B, 2]
        W = w.W_U.T[ids].transpose(1, 2)  # [B, d, 2]
        lin_clean, lin_beta, bias = h_clean @ W, n_beta @ W, w.b_U[ids][:, None, :]
    else:
        lin_clean, lin_beta, bias = h_clean @ w.W_U, n_beta @ w.W_U, w.b_U
    beta = _bias(lin_beta, lin_clean, bias, rules)
    gamma = lin_clean + bias - beta
    return beta.flatten(0, 1), gamma.flatten(0, 1)
