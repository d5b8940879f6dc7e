"""The model walk: many sources decomposed through the rest of the model in batched passes.

Each source is one block of batch rows (``rows = sources x examples``). A group of sources that start at the same place
(the embedding, the heads of layer l, or layer l's MLP) begins from the clean cache just there: the residual stream before
it is all ``gamma``, the source's own activation is split ``beta = a - mu``, ``gamma = mu`` (mean ablation, ``mu`` the
per-position mean over the reference prompts) or ``beta = a``, ``gamma = 0`` (zero ablation), everything else at that
place is ``gamma``. The walk then applies the rules of :mod:`circuits.cdt.rules` layer by layer up to the task's metric,
recording the parts of any target components on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuits.cdt import rules as R
from circuits.cdt.clean import FullCache, clean_forward, full_forward
from circuits.cdt.nodes import Node
from circuits.cdt.walk import Window, metric_positions, readout, walk_beta
from circuits.cdt.weights import CleanCache, Weights, rotate
from workbench.data.task_base import Task

__all__ = ["Decomposition", "Means", "decompose", "reference_means"]

Probe = Callable[[str, torch.Tensor, torch.Tensor], None]


@dataclass
class Means:
    """Per-position means over the reference prompts (zeros for zero ablation)."""

    embed: torch.Tensor  # [T, d]
    z: list[torch.Tensor]  # per layer [T, H, dh]
    mlp_out: list[torch.Tensor]  # per layer [T, d]


def reference_means(w: Weights, tokens: torch.Tensor | None, seq_len: int, ablation: str) -> Means:
    """Means over ``tokens`` [N, T] for ``ablation == "mean"``; zeros for ``"zero"`` (then ``tokens`` is unused)."""
    if ablation not in ("mean", "zero"):
        raise ValueError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    if ablation == "zero" or tokens is None:
        d, zero = w.W_E.shape[1], torch.zeros((), dtype=w.W_E.dtype, device=w.W_E.device)
        return Means(
            zero.expand(seq_len, d),
            [zero.expand(seq_len, w.n_heads, w.d_head)] * w.n_layers,
            [zero.expand(seq_len, d)] * w.n_layers,
        )
    cache = clean_forward(w, tokens)
    return Means(cache.embed.mean(0), [z.mean(0) for z in cache.z], [m.mean(0) for m in cache.mlp_out])


@dataclass
class Decomposition:
    """What a walk returns, per source (rows of S sources) and example (B).

    metric_beta: [S, B] the beta part of the task metric, ``m(total) - m(gamma)``; metric_total: [B] the clean metric.
    target_beta / target_gamma: [S, n_targets] mean |beta| and mean |gamma| of each target component (over examples, its
    positions and its output dimensions); NaN where the target does not come after the source.
    """

    metric_beta: torch.Tensor
    metric_total: torch.Tensor
    target_beta: torch.Tensor
    target_gamma: torch.Tensor

    def target_relevance(self) -> torch.Tensor:
        """[S, n_targets] ``mean|beta| / (mean|beta| + mean|gamma|)`` (NaN where not after the source)."""
        total = self.target_beta + self.target_gamma
        return torch.where(total == 0, torch.zeros_like(total), self.target_beta / total)


def _metric(task: Task, logits: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """The task metric of rows whose logits [R, P, V'] were taken at the metric's positions (see ``_readout``)."""
    name = task.metric_name
    if name == "logit_diff":
        return logits[:, 0, 0] - logits[:, 0, 1]
    if name == "prob_diff":
        probs = logits[:, 0].softmax(-1)[:, task.candidate_tokens.to(logits.device)]
        return (probs * task.candidate_signs.to(logits.device, logits.dtype)[examples]).sum(-1)
    targets = task.clean_tokens.to(logits.device)[examples][:, task.score_positions.to(logits.device) + 1]
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(-1)


def _readout(w: Weights, task: Task, pair: R.Pair, examples: torch.Tensor, rules: R.Rules) -> R.Pair:
    """Final norm and unembedding at the metric's positions only: logit pairs [R, P, V'] (V' = 2 for logit_diff:
    the correct and incorrect tokens)."""
    beta, gamma = pair
    rows = torch.arange(beta.shape[0], device=beta.device)
    if task.metric_name == "log_prob":
        pos = task.score_positions.to(beta.device)
        beta, gamma = beta[:, pos], gamma[:, pos]
    else:
        pos = task.answer_positions.to(beta.device)[examples]
        beta, gamma = beta[rows, pos][:, None], gamma[rows, pos][:, None]
    beta, gamma = R.norm((beta, gamma), w, w.lnf_w, w.lnf_b, rules)
    if task.metric_name != "logit_diff":
        return R.linear((beta, gamma), w.W_U, w.b_U, rules)
    ids = torch.stack([task.correct, task.incorrect], -1).to(beta.device)[examples]  # [R, 2]
    W = w.W_U.T[ids].transpose(1, 2)  # [R, d, 2]
    return R.add_bias(beta @ W, gamma @ W, w.b_U[ids][:, None, :], rules)


def _walk(w: Weights, task: Task, cache: CleanCache, start: Node, beta0: torch.Tensor, examples: torch.Tensor,
          targets: list[Node], rules: R.Rules, probe: Probe | None):
    """Walk one chunk of rows from ``start``'s place; returns (metric parts, {target index: (|beta|, |gamma|) [R]})."""
    ex = examples
    rot = w.rotary(cache.tokens.shape[1])
    group = w.n_heads // w.n_kv
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    note = probe or (lambda name, b, g: None)

    def record(i: int, t: Node, pair: R.Pair) -> None:
        b, g = pair
        if t.positions is not None:
            pos = torch.tensor(t.positions, device=b.device)
            b, g = b[:, pos], g[:, pos]
        found[i] = (b.abs().flatten(1).mean(1), g.abs().flatten(1).mean(1))

    first = 0 if start.kind == "emb" else start.layer
    if start.kind == "emb":
        resid = (beta0, cache.embed[ex] - beta0)
    else:
        clean = (cache.resid_pre if start.kind == "head" else cache.resid_mid)[first][ex]
        resid = (torch.zeros_like(clean), clean)
    for layer in range(first, w.n_layers):
        at_start = layer == first and start.kind != "emb"
        if not (at_start and start.kind == "mlp"):
            if at_start:
                z = (beta0, cache.z[layer][ex] - beta0)
            else:
                note(f"blocks.{layer}.hook_resid_pre", *resid)
                h = R.norm(resid, w, w.ln1_w[layer], w.ln1_b[layer], rules)
                q = R.linear(h, w.W_Q[layer], w.b_Q[layer], rules, "rtd,hde->rthe")
                k = R.linear(h, w.W_K[layer], w.b_K[layer], rules, "rtd,hde->rthe")
                v = R.linear(h, w.W_V[layer], w.b_V[layer], rules, "rtd,hde->rthe")
                if rot is not None:
                    q = (rotate(q[0], *rot), rotate(q[1], *rot))
                    k = (rotate(k[0], *rot), rotate(k[1], *rot))
                z = R.attention(q, k, v, group, rules)
            note(f"blocks.{layer}.attn.hook_z", *z)
            for i, t in enumerate(targets):
                if t.kind == "head" and t.layer == layer:
                    W_O = w.W_O[layer, t.head]
                    record(i, t, (z[0][:, :, t.head] @ W_O, z[1][:, :, t.head] @ W_O))
            out = R.linear(z, w.W_O[layer], w.b_O[layer], rules, "rthe,hed->rtd")
            resid = (resid[0] + out[0], resid[1] + out[1])  # no sign rule here (as published)
            note(f"blocks.{layer}.hook_resid_mid", *resid)
        if at_start and start.kind == "mlp":
            mlp = (beta0, cache.mlp_out[layer][ex] - beta0)
        else:
            h = R.norm(resid, w, w.ln2_w[layer], w.ln2_b[layer], rules)
            up = R.sign_rule(R.linear(h, w.W_in[layer], w.b_in[layer], rules), rules)
            if w.gated:
                gate = R.nonlinear(R.sign_rule(R.linear(h, w.W_gate[layer], None, rules), rules), w.act)
                post = R.gated_product(up, gate)
            else:
                post = R.nonlinear(up, w.act)
            note(f"blocks.{layer}.mlp.hook_post", *post)
            mlp = R.sign_rule(R.linear(post, w.W_out[layer], w.b_out[layer], rules), rules)
        note(f"blocks.{layer}.hook_mlp_out", *mlp)
        for i, t in enumerate(targets):
            if t.kind == "mlp" and t.layer == layer:
                record(i, t, mlp)
        resid = R.sign_rule((resid[0] + mlp[0], resid[1] + mlp[1]), rules)
        note(f"blocks.{layer}.hook_resid_post", *resid)
    logits = _readout(w, task, resid, ex, rules)
    note("logits", *logits)
    return logits, found


def _source_masks(nodes: list[Node], w: Weights, T: int, device) -> torch.Tensor:
    """[s, T, H] (heads) or [s, T] where each source sits (bool), built with one scatter."""
    heads = nodes[0].kind == "head"
    masks = torch.zeros((len(nodes), T, w.n_heads) if heads else (len(nodes), T), dtype=torch.bool)
    rows, pos, hd = [], [], []
    for i, node in enumerate(nodes):
        where = range(T) if node.positions is None else node.positions
        rows += [i] * len(where)
        pos += list(where)
        hd += [node.head if heads else 0] * len(where)
    index = (torch.tensor(rows), torch.tensor(pos)) + ((torch.tensor(hd),) if heads else ())
    masks[index] = True
    return masks.to(device)


def _start_position(node: Node) -> int:
    return 0 if node.positions is None else min(node.positions)


def _chunks(sources: list[Node], per_chunk: int) -> list[list[int]]:
    """Source indices in chunks of at most ``per_chunk`` that start at the same place, sorted by first position."""
    chunks: list[list[int]] = []
    for i in sorted(range(len(sources)), key=lambda i: (sources[i].order, _start_position(sources[i]))):
        if chunks and len(chunks[-1]) < per_chunk and sources[chunks[-1][0]].order == sources[i].order:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _delta(start: Node, cache: CleanCache, means: Means) -> torch.Tensor:
    """The source's activation minus its ablation value: [B, T, d] (inputs, MLPs) or [B, T, H, dh] (heads)."""
    if start.kind == "emb":
        return cache.embed - means.embed
    if start.kind == "head":
        return cache.z[start.layer] - means.z[start.layer]
    return cache.mlp_out[start.layer] - means.mlp_out[start.layer]


@torch.no_grad()
def decompose(w: Weights, task: Task, cache: CleanCache, means: Means, sources: list[Node], *,
              targets: list[Node] = (), rules: R.Rules = R.Rules(), chunk_rows: int = 256,
              probe: Probe | None = None, progress: bool = False, reference: bool = False,
              full: FullCache | None = None) -> Decomposition:
    """Decompose every source through the model; see :class:`Decomposition` for what comes back.

    ``cache`` is :func:`clean_forward` of ``task.clean_tokens``, ``means`` from :func:`reference_means`. Sources are
    grouped by where they start and walked ``max(1, chunk_rows // B)`` sources at a time. ``probe(name, beta, gamma)``
    (optional) sees every recorded node (``blocks.L.hook_resid_pre``, ``blocks.L.attn.hook_z``, ``blocks.L.hook_resid_mid``,
    ``blocks.L.mlp.hook_post``, ``blocks.L.hook_mlp_out``, ``blocks.L.hook_resid_post``, ``logits``) with rows
    ``source x example``.

    ``rules.norm_eps`` (when not None and not the model's) replaces the epsilon of every norm, and ``rules.share_eps > 0``
    adds every bias as :func:`circuits.cdt.rules.total_bias` says: the clean run is then recomputed here for that model
    (``metric_total`` and ``beta + gamma`` are its), while ``means`` stay as given (the published code, too, takes its
    ablation means from the model's own run).

    Without a probe the decomposition runs the beta-only walk of :mod:`circuits.cdt.walk` over each chunk's window of
    positions (``full``: the clean run node by node, from :func:`circuits.cdt.clean.full_forward`, computed here when
    not given); ``reference=True`` (or a probe) walks both parts through every position, the slower reference the tests
    compare it with.
    """
    from tqdm.auto import tqdm

    if rules.changes_model(w):  # another norm epsilon or lossy bias shares: that model's own clean run (means stay)
        w = rules.weights(w)
        full = full_forward(w, cache.tokens, rules)
        cache = full.clean_cache()
    B, T = cache.tokens.shape
    device = cache.embed.device
    S, n_t = len(sources), len(targets)
    metric_beta = torch.zeros(S, B, dtype=w.W_E.dtype, device=device)
    t_beta = torch.full((S, n_t), float("nan"), dtype=w.W_E.dtype, device=device)
    t_gamma = t_beta.clone()
    # the fast walk needs beta + gamma = clean at every node, which the published shares (share_eps > 0) do not keep
    fast = probe is None and not reference and not rules.share_eps
    if fast:
        full = full if full is not None else full_forward(w, cache.tokens)
        idx = metric_positions(task, B, device)
        t_end = int(idx.max()) + 1
        for t in targets:
            t_end = T if t.positions is None else max(t_end, max(t.positions) + 1)
        last_at_metric = not any(t.layer == w.n_layers - 1 for t in targets)
    metric_total = None
    for chunk in tqdm(_chunks(sources, max(1, chunk_rows // B)), desc="CD-T", disable=not progress, leave=False):
        start, s = sources[chunk[0]], len(chunk)
        delta = _delta(start, cache, means)
        masks = _source_masks([sources[i] for i in chunk], w, T, device)  # [s, T(, H)]
        rows = torch.arange(B, device=device).repeat(s)
        if fast:  # beta only, over the chunk's window of positions
            p0 = min(min(_start_position(sources[i]) for i in chunk), t_end - 1)
            beta0 = masks[:, None, p0:t_end, ..., None].to(delta.dtype) * delta[None, :, p0:t_end]  # [s, B, W, ...]
            resid, found = walk_beta(w, full, start, beta0, Window(p0, t_end, idx), targets, rules, last_at_metric)
            beta, gamma = readout(w, full, task, resid, idx, rules)
            found = {j: (b.flatten(), g.flatten()) for j, (b, g) in found.items()}
        else:  # both parts, every position
            beta0 = (masks[:, None, ..., None].to(delta.dtype) * delta[None]).flatten(0, 1)  # [s*B, ...]
            (beta, gamma), found = _walk(w, task, cache, start, beta0, rows, targets, rules, probe)
        total = _metric(task, beta + gamma, rows)
        metric_beta[chunk] = (total - _metric(task, gamma, rows)).view(s, B)
        metric_total = total.view(s, B)[0]
        for j, (b, g) in found.items():
            if targets[j].order > start.order:
                t_beta[chunk, j] = b.view(s, B).mean(1)
                t_gamma[chunk, j] = g.view(s, B).mean(1)
    return Decomposition(metric_beta, metric_total, t_beta, t_gamma)
