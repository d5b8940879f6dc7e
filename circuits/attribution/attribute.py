"""Attribution: rows of the replacement model's Jacobian by batched backward passes, assembled into a graph.

Definitions (circuit-tracer's ``attribute``, matched term by term):

- a source feature s at (layer l, position p) writes ``a_s * W_dec[l -> m][s]`` into MLP output m at p for every
  layer m it decodes to (a per-layer transcoder: m = l); an error node (l, p) writes ``err[l, p]`` into MLP output l;
  a token node p writes its token embedding ``W_E[token_p]`` into the residual stream (learned positions are a constant,
  part of the bias share, as circuit-tracer's ``hook_embed`` excludes them);
- a target feature t at (layer l, position p) reads its pre-activation ``W_enc[:, t] . mlp_in[l, p] + b_enc[t]``;
  a target logit k reads ``final[T-1] . (W_U[:, k] - mean_v W_U[:, v])`` (circuit-tracer's demeaned unembedding), or
  a custom direction;
- edge weight ``A[t, s]`` = source value times the derivative of the target's input along the source's write, in the
  model with attention patterns and norm scales frozen (the linear map of
  :class:`~circuits.attribution.replacement.ReplacementModel`): one backward pass from a batch of targets gives, for
  each, the gradient at every write point, contracted with every source's write vector (its rows of the adjacency).

``max_feature_nodes`` works as circuit-tracer's: the logit rows first, then the features in order of their influence
on the logits estimated from the rows computed so far (re-ranked every ``update_interval`` batches); the graph keeps
only the visited features (their columns too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from circuits.attribution.graph import AttributionGraph
from circuits.attribution.replacement import ReplacementModel, Sources

__all__ = ["LogitTargets", "TargetError", "attribute", "custom_target", "feature_target", "logit_difference",
           "salient_logits", "token_logits"]


class TargetError(ValueError):
    """An attribution target that does not fit the model (token id out of range, wrong direction shape)."""


@dataclass
class LogitTargets:
    """The output nodes: labels, vocabulary ids (-1 for a custom target), weights (probabilities) [K],
    directions [K, d] read from the final norm's output at the last position, constants [K] added to that read.

    ``read_layer`` / ``read_position``: where the directions are read (default None: the final norm's output at the
    last position; a layer l: the MLP input of layer l, as a feature's encoder reads it, see :func:`feature_target`).
    """

    labels: list[str]
    token_ids: list[int]
    probabilities: torch.Tensor
    vectors: torch.Tensor
    constants: torch.Tensor
    read_layer: int | None = None
    read_position: int | None = None

    def where(self, rm: ReplacementModel) -> tuple[int, int]:
        """(layer, position) of the read: layer ``rm.n_layers`` is the final norm's output."""
        layer = rm.n_layers if self.read_layer is None else self.read_layer
        return layer, rm.n_pos - 1 if self.read_position is None else self.read_position


def _decode(rm: ReplacementModel, tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


def token_logits(rm: ReplacementModel, token_ids: list[int], tokenizer=None) -> LogitTargets:
    """Logit nodes for the given vocabulary ids: demeaned unembedding columns, weighted by their probabilities."""
    V = rm.w.W_U.shape[1]
    bad = [t for t in token_ids if not 0 <= int(t) < V]
    if bad or not token_ids:
        raise TargetError(f"target token ids must be in 0..{V - 1}, got {bad or 'none'}")
    ids = torch.tensor([int(t) for t in token_ids], device=rm.device)
    probs = torch.softmax(rm.logits[-1], -1)[ids]
    W_U, b_U = rm.w.W_U, rm.w.b_U
    return LogitTargets([_decode(rm, tokenizer, int(t)) for t in ids.tolist()], ids.tolist(), probs,
                        (W_U[:, ids] - W_U.mean(1, keepdim=True)).T, b_U[ids] - b_U.mean())


def salient_logits(rm: ReplacementModel, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                   tokenizer=None) -> LogitTargets:
    """The most likely next tokens at the last position until their probabilities sum to ``desired_logit_prob``,
    at most ``max_n_logits`` (circuit-tracer's ``compute_salient_logits``)."""
    if max_n_logits < 1 or not 0 < desired_logit_prob <= 1:
        raise TargetError("max_n_logits must be at least 1 and desired_logit_prob in (0, 1]")
    probs = torch.softmax(rm.logits[-1], -1)
    top_p, top_idx = probs.topk(min(max_n_logits, probs.numel()))
    cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob, dtype=top_p.dtype,
                                                                device=top_p.device))) + 1
    return token_logits(rm, top_idx[:cut].tolist(), tokenizer)


def custom_target(rm: ReplacementModel, label: str, vector: torch.Tensor, constant: float = 0.0,
                  weight: float = 1.0) -> LogitTargets:
    """One output node reading ``vector`` [d] from the final norm's output at the last position, plus ``constant``;
    ``weight`` is its weight in the influence (circuit-tracer's ``CustomTarget.prob``)."""
    d = rm.w.W_U.shape[0]
    vector = torch.as_tensor(vector).to(rm.w.W_U)
    if tuple(vector.shape) != (d,):
        raise TargetError(f"a custom target's direction must have shape ({d},), got {tuple(vector.shape)}")
    return LogitTargets([label], [-1], torch.tensor([float(weight)], dtype=rm.dtype, device=rm.device), vector[None],
                        torch.tensor([float(constant)], dtype=rm.dtype, device=rm.device))


def feature_target(rm: ReplacementModel, layer: int, position: int, feature: int, weight: float = 1.0
                   ) -> LogitTargets:
    """One output node: the pre-activation of ``feature`` of ``layer``'s feature set at ``position`` (a graph of
    what drives one feature). TargetError for a layer without features, a position or feature index out of range."""
    if layer not in rm.sets:
        raise TargetError(f"no feature set reads layer {layer}; layers with features: {sorted(rm.sets)}")
    s = rm.sets[layer]
    if not 0 <= feature < s.n_features:
        raise TargetError(f"feature index {feature} out of range: layer {layer} has features 0..{s.n_features - 1}")
    if not -rm.n_pos <= position < rm.n_pos:
        raise TargetError(f"position {position} out of range: the prompt has positions 0..{rm.n_pos - 1}")
    position %= rm.n_pos
    return LogitTargets([f"{s.name}{layer}.f{feature}@{position}"], [-1],
                        torch.tensor([float(weight)], dtype=rm.dtype, device=rm.device), s.W_enc[:, feature][None],
                        s.b_enc[feature].reshape(1), layer, position)


def logit_difference(rm: ReplacementModel, correct: int, incorrect: int, tokenizer=None) -> LogitTargets:
    """One output node: ``logit[correct] - logit[incorrect]`` at the last position (weight 1)."""
    V = rm.w.W_U.shape[1]
    for t in (correct, incorrect):
        if not 0 <= int(t) < V:
            raise TargetError(f"target token id {t} is not in the vocabulary 0..{V - 1}")
    W_U, b_U = rm.w.W_U, rm.w.b_U
    label = f"{_decode(rm, tokenizer, correct)}-{_decode(rm, tokenizer, incorrect)}"
    return custom_target(rm, label, W_U[:, correct] - W_U[:, incorrect], float(b_U[correct] - b_U[incorrect]))


def _as_slice(idx: torch.Tensor) -> torch.Tensor | slice:
    """``idx`` as a slice when it is a run of consecutive increasing integers (then writes need no scatter)."""
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx.diff() == 1).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    return idx


class _Jacobian:
    """Rows of the direct-effect Jacobian, ``batch`` targets per backward pass over one retained linear graph."""

    def __init__(self, rm: ReplacementModel, batch: int) -> None:
        self.rm, self.batch = rm, batch
        L, T, d = rm.n_layers, rm.n_pos, rm.w.W_E.shape[1]
        kw = {"dtype": rm.dtype, "device": rm.device}
        zero = Sources(torch.zeros(batch, rm.n_features, **kw), torch.zeros(batch, L, T, d, **kw),
                       torch.zeros(batch, T, d, **kw))
        self.probes = {name: torch.zeros(batch, T, d, **kw, requires_grad=True)
                       for name in ["emb", *(f"mlp{m}" for m in range(L))]}
        with torch.enable_grad():
            self.mlp_in, self.final = rm.run(zero, constants=False, writes=self.probes, stacked=False)
        # what each feature writes into each MLP output: layer m -> (feature indices, positions, a_s * W_dec rows)
        self.writes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for layer, sl in rm.set_slices().items():
            for m, W in rm.sets[layer].decoders.items():
                idx = torch.arange(sl.start, sl.stop, device=rm.device)
                vecs = rm.activations[sl, None] * W[rm.active[sl, 2]]
                old = self.writes.get(m)
                if old is not None:
                    idx, pos, vecs = torch.cat([old[0], idx]), torch.cat([old[1], rm.active[sl, 1]]), torch.cat([old[2], vecs])
                else:
                    pos = rm.active[sl, 1]
                self.writes[m] = (idx, pos, vecs)
        # the same writes grouped by position: layer m -> [(position, feature indices or their slice when they are
        # consecutive, as for a per-layer transcoder, a_s * W_dec rows transposed [d, c])]
        self.by_pos: dict[int, list[tuple[int, torch.Tensor | slice, torch.Tensor]]] = {
            m: [(int(p), _as_slice(idx[pos == p]), vecs[pos == p].T.contiguous()) for p in pos.unique().tolist()]
            for m, (idx, pos, vecs) in self.writes.items()}
        self.n_cols = rm.n_features + (L + 1) * T

    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """[b, n_features + (L + 1) * T]: the direct effects of every feature, error and token node on b targets, each
        reading ``vectors[i]`` [d] at (``layers[i]``, ``positions[i]``) (layer L: the final norm's output)."""
        rm, b = self.rm, int(vectors.shape[0])
        L, T = rm.n_layers, rm.n_pos
        top = int(layers.max())  # the backward pass starts at the highest layer read (as circuit-tracer's does)
        rows = torch.arange(b, device=rm.device)
        final = layers == L
        outputs, grad_outputs = [], []
        for m in range(min(top + 1, L)):
            g = torch.zeros_like(self.mlp_in[m])
            sel = layers == m
            g[rows[sel], positions[sel]] = vectors[sel]
            outputs.append(self.mlp_in[m])
            grad_outputs.append(g)
        if top == L:
            g = torch.zeros_like(self.final)
            g[rows[final], positions[final]] = vectors[final]
            outputs.append(self.final)
            grad_outputs.append(g)
        names = ["emb", *(f"mlp{m}" for m in range(min(top, L)))]  # writes at or above layer top reach no read
        grads = torch.autograd.grad(outputs, [self.probes[n] for n in names], grad_outputs, retain_graph=True,
                                    allow_unused=True)
        zero = torch.zeros_like(self.probes["emb"][:b])
        g = {n: zero for n in self.probes}
        g.update({n: (zero if gr is None else gr[:b]) for n, gr in zip(names, grads, strict=True)})
        out = torch.zeros(b, self.n_cols, dtype=rm.dtype, device=rm.device)
        for m, groups in self.by_pos.items():
            if m >= top:
                continue
            gm = g[f"mlp{m}"]
            for p, idx, vecs_t in groups:  # one matrix product per (layer, position): [b, d] @ [d, c]
                out[:, idx] += gm[:, p] @ vecs_t
        F = rm.n_features
        for m in range(min(top, L)):
            out[:, F + m * T:F + (m + 1) * T] = (g[f"mlp{m}"] * rm.errors[m]).sum(-1)
        out[:, F + L * T:] = (g["emb"] * rm.embed[None]).sum(-1)
        return out


def _partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, logit_p: torch.Tensor, n_cols: int,
                       max_iter: int = 256) -> torch.Tensor:
    """Influence on the logits [n_cols] from the rows computed so far (rows [R, n_cols] of nodes ``row_nodes``;
    the first K rows are the logits, whose node indices are ``n_cols + k``)."""
    A = rows.abs()
    A = A / A.sum(1, keepdim=True).clamp(min=1e-10)
    weight = torch.zeros(n_cols + logit_p.numel(), dtype=A.dtype, device=A.device)
    weight[n_cols:] = logit_p.to(A.dtype)
    influence = torch.zeros(n_cols, dtype=A.dtype, device=A.device)
    for _ in range(max_iter):
        prod = weight[row_nodes] @ A
        if not bool(prod.any()):
            break
        influence += prod
        weight = torch.zeros_like(weight)
        weight[:n_cols] = prod
    return influence


@torch.no_grad()
def attribute(rm: ReplacementModel, targets: LogitTargets | None = None, *, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, batch_size: int = 64, max_feature_nodes: int | None = None,
              update_interval: int = 4, tokenizer=None, progress: bool = False) -> AttributionGraph:
    """The attribution graph of ``rm``'s prompt (see the module docstring) for ``targets`` (default: the salient
    logits, :func:`salient_logits`), ``batch_size`` target rows per backward pass, at most ``max_feature_nodes``
    feature nodes (None: every active feature). The adjacency is returned on the CPU in the replacement's dtype."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be 0 or more, got {max_feature_nodes}")
    targets = targets or salient_logits(rm, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob,
                                        tokenizer=tokenizer)
    L, T, F, K = rm.n_layers, rm.n_pos, rm.n_features, len(targets.labels)
    jac = _Jacobian(rm, batch_size)
    n_cols = jac.n_cols
    n_sel = F if max_feature_nodes is None else min(max_feature_nodes, F)
    rows = torch.zeros(K + n_sel, n_cols, dtype=rm.dtype, device=rm.device)
    row_nodes = torch.zeros(K + n_sel, dtype=torch.long, device=rm.device)
    for start in range(0, K, batch_size):
        sl = slice(start, min(K, start + batch_size))
        n = sl.stop - sl.start
        read_layer, read_pos = targets.where(rm)
        rows[sl] = jac.rows(torch.full((n,), read_layer, device=rm.device),
                            torch.full((n,), read_pos, device=rm.device), targets.vectors[sl])
        row_nodes[sl] = torch.arange(sl.start, sl.stop, device=rm.device) + n_cols
    enc = _encoder_rows(rm)
    visited = torch.zeros(F, dtype=torch.bool, device=rm.device)
    done = K
    bar = _bar(progress, n_sel)
    while done < K + n_sel:
        if n_sel == F:
            pending = torch.arange(F, device=rm.device)
        else:
            influence = _partial_influence(rows[:done], row_nodes[:done], targets.probabilities, n_cols)
            rank = influence[:F].argsort(descending=True)
            pending = rank[~visited[rank]][:min(update_interval * batch_size, K + n_sel - done)]
            pending = pending[rm.active[pending, 0].argsort(stable=True)]  # batches of nearby layers: shorter passes
        for start in range(0, pending.numel(), batch_size):
            idx = pending[start:start + batch_size]
            n = idx.numel()
            rows[done:done + n] = jac.rows(rm.active[idx, 0], rm.active[idx, 1], enc[idx])
            row_nodes[done:done + n] = idx
            visited[idx] = True
            done += n
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    selected = torch.nonzero(visited).reshape(-1)
    keep_cols = torch.cat([selected, torch.arange(F, n_cols, device=rm.device)])
    N = n_sel + (L + 1) * T + K
    adjacency = torch.zeros(N, N, dtype=rm.dtype, device=rm.device)
    feat_rows = rows[K:][row_nodes[K:].argsort()]
    adjacency[:n_sel] = torch.cat([feat_rows[:, keep_cols], torch.zeros(n_sel, K, dtype=rm.dtype, device=rm.device)], 1)
    adjacency[N - K:, :N - K] = rows[:K][:, keep_cols]
    inputs, bias = _inputs_and_bias(rm, targets, selected, N)
    layers = sorted(rm.sets)
    return AttributionGraph(
        tokens=rm.tokens.cpu(), token_strings=[_decode(rm, tokenizer, int(t)) for t in rm.tokens.tolist()],
        n_layers=L, features=rm.active[selected].cpu(), activations=rm.activations[selected].cpu(),
        adjacency=adjacency.cpu(), inputs=inputs.cpu(), bias=bias.cpu(), logit_tokens=list(targets.token_ids),
        logit_labels=list(targets.labels), logit_probabilities=targets.probabilities.cpu(),
        names={la: rm.sets[la].name for la in layers}, n_active=F,
        metadata={"dtype": str(rm.dtype).removeprefix("torch."), "batch_size": batch_size,
                  "max_feature_nodes": max_feature_nodes, "desired_logit_prob": desired_logit_prob,
                  "max_n_logits": max_n_logits})


def _encoder_rows(rm: ReplacementModel) -> torch.Tensor:
    """[F, d]: each active feature's encoder column (the direction its pre-activation reads)."""
    out = torch.zeros(rm.n_features, rm.w.W_E.shape[1], dtype=rm.dtype, device=rm.device)
    for layer, sl in rm.set_slices().items():
        out[sl] = rm.sets[layer].W_enc[:, rm.active[sl, 2]].T
    return out


def _encoder_bias(rm: ReplacementModel) -> torch.Tensor:
    """[F]: each active feature's encoder bias."""
    out = torch.zeros(rm.n_features, dtype=rm.dtype, device=rm.device)
    for layer, sl in rm.set_slices().items():
        out[sl] = rm.sets[layer].b_enc[rm.active[sl, 2]]
    return out


def _inputs_and_bias(rm: ReplacementModel, targets: LogitTargets, selected: torch.Tensor, N: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's input (feature pre-activation, logit node value) and bias share (the input with every source off)."""
    K = len(targets.labels)
    kw = {"dtype": rm.dtype, "device": rm.device}
    off = Sources(torch.zeros_like(rm.sources.acts), torch.zeros_like(rm.sources.errors),
                  torch.zeros_like(rm.sources.embed))
    inputs, bias = torch.zeros(N, **kw), torch.zeros(N, **kw)
    enc, b_enc = _encoder_rows(rm)[selected], _encoder_bias(rm)[selected]
    layer, pos = rm.active[selected, 0], rm.active[selected, 1]
    for out, src in ((inputs, rm.sources), (bias, off)):
        mlp_in, final = rm.run(src)
        out[:selected.numel()] = (mlp_in[0, layer, pos] * enc).sum(-1) + b_enc
        read_layer, read_pos = targets.where(rm)
        at = final[0, read_pos] if read_layer == rm.n_layers else mlp_in[0, read_layer, read_pos]
        out[N - K:] = at @ targets.vectors.T + targets.constants
    return inputs, bias


def _bar(progress: bool, total: int):
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="attribution rows", unit="feature", mininterval=math.inf if total < 2 else 0.1)
