"""Feature cards for the features of an attribution graph: a streamed harvest over held-out text, written in
circuit-tracer's feature JSON shape (``frontend/feature_models.py``, Neuronpedia's).

A feature's activation is computed exactly as the replacement model does it: ``encode(x @ W_enc + b_enc)`` with ``x``
the layer's MLP input (``blocks.L.ln2.hook_normalized``, plus the norm's bias where the model has one), the whole
layer encoded (TopK needs every pre-activation), then the wanted columns kept. Two passes over the same tokens
(memory bounded by one batch plus the fixed-size state below, whatever the token count):

1. per feature: the number of positive activations and their maximum (``act_max``);
2. per feature: the histogram of the positive activations on ``bins`` equal bins of (0, act_max] (counts sum to the
   number of positive activations), the ``examples`` largest activations ("Top activations"), and for each of
   ``intervals`` equal intervals of (0, act_max] a uniform random sample of ``examples`` occurrences (priority
   sampling with seeded priorities: the activation-quantile groups of Neuronpedia's feature pages, highest first).

Each example is the window of ``before`` tokens, the activating token and ``after`` tokens of its row, as token
strings with the feature's activation at every one (``tokens_acts_list``; ``train_token_ind`` is the activating
token's index in it). ``activation_frequency`` = positive activations / tokens scanned; ``quantile_values``: the
activation at percentiles 1..100 of the positive activations, read from the histogram (linear within a bin);
``top_logits`` / ``bottom_logits``: the tokens the decoder direction (summed over the layers it writes to) most
raises / lowers through ``W_U`` (the final norm ignored, as circuit-tracer does). Tokens scanned exclude
``exclude_tokens`` (the BOS: its activations are outliers of most features).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from circuits.attribution.replacement import FeatureSet
from workbench.harvest import _as_batch, harvest

__all__ = ["card_index", "feature_cards", "grouped_top"]


def card_index(layer: int, feature: int) -> int:
    """circuit-tracer's feature index (the Cantor pairing of layer and feature): its feature files' names."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def grouped_top(keys: torch.Tensor, priority: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For entries with group ``keys`` [n] and ``priority`` [n]: (indices of the at most ``m`` highest-priority
    entries of every group, their rank 0..m-1 within the group)."""
    o1 = priority.argsort(descending=True, stable=True)
    order = o1[keys[o1].argsort(stable=True)]
    ks = keys[order].contiguous()
    rank = torch.arange(ks.numel(), device=ks.device) - torch.searchsorted(ks, ks)
    keep = rank < m
    return order[keep], rank[keep]


class _Harvester:
    """The consumer of both passes (see the module docstring); ``tokens`` is set to each batch before its forward."""

    def __init__(self, sets: Mapping[int, FeatureSet], features: Sequence[tuple[int, int]],
                 input_bias: Mapping[int, torch.Tensor], *, examples: int, intervals: int, bins: int, before: int,
                 after: int, seed: int, exclude: Sequence[int]) -> None:
        self.sets, self.bias = sets, input_bias
        self.cols: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for g, (layer, feat) in enumerate(features):
            cols, gidx = self.cols.setdefault(layer, ([], []))
            cols.append(feat)
            gidx.append(g)
        self.cols = {la: (torch.tensor(c), torch.tensor(g)) for la, (c, g) in self.cols.items()}
        self.hooks = [f"blocks.{la}.ln2.hook_normalized" for la in sorted(self.cols)]
        self.F, self.m, self.Q, self.bins, self.before, self.after = (len(features), examples, intervals, bins, before,
                                                                      after)
        self.exclude = torch.tensor(list(exclude), dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens: torch.Tensor | None = None
        self.n_tokens, self.second = 0, False
        self.state: dict[str, torch.Tensor] = {}

    def batches(self, source: Iterable[Any]) -> Iterable[Any]:
        """``source``'s batches, each first recorded as the current one (with BOS-like tokens masked out)."""
        for batch in source:
            tokens, real = _as_batch(batch)
            mask = real.clone()
            if self.exclude.numel():
                mask[torch.isin(tokens, self.exclude.to(tokens.device))] = 0
            self.tokens, self.real, self.mask = tokens, real, mask
            if not self.second:
                self.n_tokens += int(mask.sum())
            yield batch

    def _acts(self, name: str, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The wanted features' activations [B, S, F_layer] (zero on masked positions) and their global indices."""
        layer = int(name.split(".")[1])
        s = self.sets[layer]
        x = act.to(s.W_enc.dtype)
        if layer in self.bias:
            x = x + self.bias[layer]
        cols, gidx = self.cols[layer]
        a = s.encode(x @ s.W_enc + s.b_enc)[..., cols.to(x.device)]
        return a * self.mask.to(a.device, a.dtype)[..., None], gidx.to(a.device)

    def _init(self, device: torch.device, dtype: torch.dtype) -> None:
        G, m, W = self.F * (self.Q + 1), self.m, self.before + 1 + self.after
        self.state = {"count": torch.zeros(self.F, dtype=torch.long, device=device),
                      "max": torch.zeros(self.F, dtype=dtype, device=device),
                      "hist": torch.zeros(self.F * self.bins, dtype=torch.long, device=device),
                      "pri": torch.full((G, m), -torch.inf, dtype=dtype, device=device),
                      "val": torch.zeros(G, m, dtype=dtype, device=device),
                      "tok": torch.full((G, m, W), -1, dtype=torch.long, device=device),
                      "act": torch.zeros(G, m, W, dtype=dtype, device=device)}

    def consume(self, name: str, act: torch.Tensor, mask: torch.Tensor) -> None:
        a, gidx = self._acts(name, act)
        if not self.state:
            self._init(a.device, a.dtype)
        st = self.state
        if not self.second:
            st["count"].index_add_(0, gidx, (a > 0).sum((0, 1)))
            st["max"][gidx] = torch.maximum(st["max"][gidx], a.amax((0, 1)))
            return
        b, s, j = torch.nonzero(a > 0, as_tuple=True)
        if not b.numel():
            return
        v, g = a[b, s, j], gidx[j]
        frac = v / st["max"][g]
        st["hist"].index_add_(0, g * self.bins + (frac * self.bins).ceil().long().clamp(1, self.bins) - 1,
                              torch.ones_like(g))
        q = (frac * self.Q).ceil().long().clamp(1, self.Q) - 1
        n = v.numel()
        keys = torch.cat([g * (self.Q + 1), g * (self.Q + 1) + self.Q - q])  # slot 0: top; slot 1: highest interval
        pri = torch.cat([v, torch.rand(n, generator=self.gen, dtype=torch.float64).to(v.device, v.dtype)])
        sel, rank = grouped_top(keys, pri, self.m)
        entry = sel % n
        self._merge(keys[sel], rank, pri[sel], v[entry], *self._windows(a, b[entry], s[entry], j[entry]))

    def _windows(self, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, j: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [n, W] (-1 outside the row or on padding) and activations [n, W] around each entry."""
        pad = (self.before, self.after)
        tokens = self.tokens.to(a.device).masked_fill(self.real.to(a.device) == 0, -1)
        tokens = torch.nn.functional.pad(tokens, pad, value=-1)
        acts = torch.nn.functional.pad(a.transpose(1, 2), pad)  # [B, F_layer, S + W - 1]
        offs = torch.arange(self.before + 1 + self.after, device=a.device)
        idx = s[:, None] + offs
        return tokens[b[:, None], idx], acts[b[:, None], j[:, None], idx]

    def _merge(self, keys, rank, pri, val, tok, act) -> None:
        st = self.state
        rows = keys.unique()
        local = torch.searchsorted(rows, keys)
        R, m = rows.numel(), self.m
        cand = {"pri": torch.full((R, m), -torch.inf, dtype=pri.dtype, device=pri.device),
                "val": torch.zeros(R, m, dtype=val.dtype, device=val.device),
                "tok": torch.full((R, m, tok.shape[1]), -1, dtype=torch.long, device=tok.device),
                "act": torch.zeros(R, m, act.shape[1], dtype=act.dtype, device=act.device)}
        for k, x in (("pri", pri), ("val", val), ("tok", tok), ("act", act)):
            cand[k][local, rank] = x
        both = {k: torch.cat([st[k][rows], cand[k]], 1) for k in cand}
        top = both["pri"].topk(m, dim=1).indices
        for k, x in both.items():
            index = top if x.ndim == 2 else top[..., None].expand(-1, -1, x.shape[2])
            st[k][rows] = x.gather(1, index)


def _quantile_values(hist: list[int], act_max: float) -> list[float]:
    """The activation at percentiles 1..100 of a histogram on equal bins of (0, act_max] (linear within a bin)."""
    n = sum(hist)
    if n == 0:
        return [0.0] * 100
    width, out, i, below = act_max / len(hist), [], 0, 0
    for p in range(1, 101):
        target = p / 100 * n
        while i < len(hist) - 1 and below + hist[i] < target:
            below += hist[i]
            i += 1
        out.append(min(act_max, width * (i + (target - below) / max(hist[i], 1))))
    return out


def feature_cards(model: Any, sets: Mapping[int, FeatureSet], features: Sequence[tuple[int, int]],
                  source: Callable[[], Iterable[Any]], *, max_tokens: int | None = None, examples: int = 8,
                  intervals: int = 4, bins: int = 32, before: int = 8, after: int = 3, n_logits: int = 10,
                  exclude_tokens: Sequence[int] = (), input_bias: Mapping[int, torch.Tensor] | None = None,
                  seed: int = 0, progress: bool = False, device: str | None = None) -> list[dict[str, Any]]:
    """One card (a JSON dict in circuit-tracer's feature shape, plus ``layer``, ``feature``, ``n_tokens`` and
    ``n_positive``) per ``(layer, feature)`` of ``features``, from two passes over ``source()`` (a restartable
    token source: TokenBatch or LongTensor [batch, seq] batches) up to ``max_tokens`` tokens (see the module
    docstring). ``sets``: layer -> FeatureSet (a replacement model's ``sets``); ``input_bias``: layer -> the norm bias
    added to ``ln2.hook_normalized`` (LayerNorm models). ValueError for a feature outside its set."""
    for name, value, lo in (("examples", examples, 1), ("intervals", intervals, 1), ("bins", bins, 1),
                            ("before", before, 0), ("after", after, 0), ("n_logits", n_logits, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"feature_cards: {name} must be an integer >= {lo}, got {value!r}")
    features = [(int(la), int(f)) for la, f in features]
    for layer, feat in features:
        if layer not in sets or not 0 <= feat < sets[layer].n_features:
            raise ValueError(f"feature ({layer}, {feat}) is not in the feature sets (layers {sorted(sets)})")
    if not features:
        return []
    h = _Harvester(sets, features, input_bias or {}, examples=examples, intervals=intervals, bins=bins,
                   before=before, after=after, seed=seed, exclude=exclude_tokens)
    for second in (False, True):
        h.second = second
        harvest(model, h.batches(source()), [h], max_tokens=max_tokens, progress=progress, device=device)
    return _cards(model, sets, features, h, n_logits)


def _logit_effects(model: Any, sets: Mapping[int, FeatureSet], features: list[tuple[int, int]], n_logits: int
                   ) -> list[tuple[list[int], list[float], list[int], list[float]]]:
    """Per feature: (top ids, their effects, bottom ids, their effects) of its decoder direction (summed over the
    layers it writes to) through ``W_U``."""
    W_U = model.W_U.detach()
    out: list[Any] = [None] * len(features)
    for layer in sorted({la for la, _ in features}):
        idx = [g for g, (la, _) in enumerate(features) if la == layer]
        cols = torch.tensor([features[g][1] for g in idx])
        direction = sum(W[cols.to(W.device)] for W in sets[layer].decoders.values())
        eff = (direction.to(W_U) @ W_U).float()
        k = min(n_logits, eff.shape[1])
        top, bottom = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        for j, g in enumerate(idx):
            out[g] = (top.indices[j].tolist(), top.values[j].tolist(), bottom.indices[j].tolist(),
                      bottom.values[j].tolist())
    return out


def _cards(model: Any, sets: Mapping[int, FeatureSet], features: list[tuple[int, int]], h: _Harvester,
           n_logits: int) -> list[dict[str, Any]]:
    from circuits.attribution.export import process_token

    tokenizer = getattr(model, "tokenizer", None)
    vocab: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in vocab:
            vocab[i] = process_token(tokenizer.decode([i]) if tokenizer is not None else str(i))
        return vocab[i]

    G = len(features) * (h.Q + 1)
    W = h.before + 1 + h.after
    st = {k: v.cpu().tolist() for k, v in h.state.items()} if h.state else {
        "count": [0] * len(features), "max": [0.0] * len(features), "hist": [0] * (len(features) * h.bins),
        "pri": [[-math.inf] * h.m] * G, "tok": [[[-1] * W] * h.m] * G, "act": [[[0.0] * W] * h.m] * G}
    out = []
    for g, ((layer, feat), (top_i, top_v, bot_i, bot_v)) in enumerate(
            zip(features, _logit_effects(model, sets, features, n_logits), strict=True)):
        count, act_max = int(st["count"][g]), float(st["max"][g])
        hist = [int(x) for x in st["hist"][g * h.bins:(g + 1) * h.bins]]
        groups = []
        for slot in range(h.Q + 1):
            row = g * (h.Q + 1) + slot
            examples = []
            for e in range(h.m):
                if not math.isfinite(st["pri"][row][e]):
                    continue
                ids, acts = st["tok"][row][e], st["act"][row][e]
                lead = next((i for i, t in enumerate(ids) if t >= 0), len(ids))
                tail = next((i for i, t in enumerate(ids[h.before:], h.before) if t < 0), len(ids))
                examples.append({"tokens": [text(t) for t in ids[lead:tail]],
                                 "tokens_acts_list": [float(x) for x in acts[lead:tail]],
                                 "train_token_ind": h.before - lead, "is_repeated_datapoint": False})
            if slot == 0:
                name = "Top activations"
            else:
                q = h.Q - slot
                name = f"Interval {q + 1}/{h.Q}: activation in ({q / h.Q * act_max:.3g}, {(q + 1) / h.Q * act_max:.3g}]"
                examples.sort(key=lambda ex: -ex["tokens_acts_list"][ex["train_token_ind"]])
            groups.append({"quantile_name": name, "examples": examples})
        out.append({
            "transcoder_id": f"{sets[layer].name}{layer}", "index": card_index(layer, feat), "layer": layer,
            "feature": feat, "examples_quantiles": groups,
            "top_logits": [text(i) for i in top_i], "bottom_logits": [text(i) for i in bot_i],
            "top_logit_values": top_v, "bottom_logit_values": bot_v,
            "act_min": 0.0, "act_max": act_max, "quantile_values": _quantile_values(hist, act_max),
            "histogram": hist, "activation_frequency": count / h.n_tokens if h.n_tokens else 0.0,
            "n_tokens": h.n_tokens, "n_positive": count,
        })
    return out
