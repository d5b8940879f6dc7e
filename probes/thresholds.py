"""Performance-aware activation thresholds and top-k: how sparse can the MLPs be made before the loss notices.

- :func:`performance_thresholds`: per layer, the largest cutoff at which held-out next-token loss rises by at most
  ``max_rise`` (default 1%) when that layer's MLP activations with ``|a| < cutoff`` are set to zero (the other layers
  untouched). Two cutoff families, both read from calibration activations of the training split:
  ``"quantile"`` (CATS-style: one cutoff per layer, the q-quantile of ``|a|`` over all its neurons) and ``"channel"``
  (CHESS-style: one cutoff per neuron, the q-quantile of that neuron's ``|a|``). The search bisects a grid of
  quantile levels q, assuming the loss rises with q. Reported with the fraction of activations left active.
- :func:`topk_losses`: held-out loss when every layer keeps only the k largest ``|a|`` per token.

Departure from CATS: CATS thresholds ``|SiLU(gate)|`` of gated MLPs; here the cutoff applies to the MLP's hidden
activation ``blocks.L.mlp.hook_post`` (what ``W_out`` reads), the same thing for ungated MLPs.
Loss: mean cross-entropy of next-token prediction over real tokens (a target counts when it and the token
before it are both unmasked). Layers are evaluated from a cached ``hook_resid_pre`` (``start_at_layer``); the
bridge still runs the layers below the start (on inputs nothing reads), so each evaluation costs a whole forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from probes.sparsity import POST, check_layers
from workbench.harvest import check_hooks

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
METHODS = ("quantile", "channel")


def _tensors(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return batch, torch.ones_like(batch)
    return batch.tokens, batch.attention_mask


def next_token_loss_sum(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token cross-entropies, number of targets); logits [b, s, vocab], tokens / mask [b, s]."""
    keep = (mask[:, 1:] * mask[:, :-1]).bool()
    logp = F.log_softmax(logits[:, :-1].detach().float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return float(nll[keep].sum()), int(keep.sum())


def heldout_loss(model, batches: Sequence, fwd_hooks: Sequence[tuple[str, Callable]] = (),
                 on_batch: Callable[[torch.Tensor], None] | None = None) -> float:
    """Mean next-token loss of ``model`` over ``batches`` (TokenBatch or LongTensor [b, s]) with ``fwd_hooks`` on.

    ``on_batch(mask)`` is called before each forward pass (hooks that need the attention mask read it there).
    """
    total, count = 0.0, 0
    device = str(getattr(model.cfg, "device", "cpu"))
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        for batch in batches:
            tokens, mask = (t.to(device) for t in _tensors(batch))
            if on_batch is not None:
                on_batch(mask)
            s, n = next_token_loss_sum(model(tokens, return_type="logits"), tokens, mask)
            total, count = total + s, count + n
    if count == 0:
        raise ValueError("no next-token targets in the evaluation batches (empty corpus?)")
    return total / count


def calibration_activations(model, batches: Iterable, layers: Sequence[int], n_tokens: int = 1024,
                            post: str = POST) -> dict[int, torch.Tensor]:
    """|MLP activations| of the first ``n_tokens`` real tokens: {layer: FloatTensor [n_tokens, d_mlp]} (CPU)."""
    names = {post.format(layer=layer): layer for layer in layers}
    check_hooks(model, names)
    got: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    have = 0
    state = {}

    def hook(act, hook):
        got[names[hook.name]].append(act[state["mask"].bool()].abs().float().cpu())

    device = str(getattr(model.cfg, "device", "cpu"))
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, hook) for n in names]):
        for batch in batches:
            tokens, mask = (t.to(device) for t in _tensors(batch))
            state["mask"] = mask
            model(tokens, return_type=None, stop_at_layer=max(layers) + 1)
            have += int(mask.sum())
            if have >= n_tokens:
                break
    if have == 0:
        raise ValueError("no calibration tokens (empty corpus?)")
    return {layer: torch.cat(v)[:n_tokens] for layer, v in got.items()}


def _cutoffs(calib: torch.Tensor, method: str, q: float) -> torch.Tensor:
    """Cutoff for quantile level q: a scalar tensor ("quantile") or [d_mlp] ("channel")."""
    if method == "quantile":
        flat = calib.flatten()
        k = max(1, min(flat.numel(), int(round(q * flat.numel()))))
        return flat.kthvalue(k).values
    if method == "channel":
        return torch.quantile(calib, q, dim=0)
    raise ValueError(f"unknown threshold method {method!r}; accepted: {', '.join(METHODS)}")


def _try(ev: _Evaluator, layer: int, cut: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(loss, fraction of activations kept, cut) with ``|a| < cut`` zeroed at ``layer``."""
    active: list[float] = []

    def edit(a: torch.Tensor) -> torch.Tensor:
        keep = a.abs() >= cut.to(a.device, a.dtype)
        active.append(float(keep.float().mean()))
        return a * keep

    loss = ev.loss(layer, edit)
    return loss, sum(active) / len(active), cut


@dataclass
class _Evaluator:
    """Loss of the model with one layer's hook_post edited, run from that layer's cached residual stream."""

    model: object
    tokens: list[torch.Tensor]
    masks: list[torch.Tensor]
    resid: dict[int, list[torch.Tensor]]
    post: str

    def loss(self, layer: int | None, edit: Callable[[torch.Tensor], torch.Tensor] | None) -> float:
        total, count = 0.0, 0
        hooks = [] if layer is None else [(self.post.format(layer=layer), lambda a, hook: edit(a))]
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            for i, (tokens, mask) in enumerate(zip(self.tokens, self.masks, strict=False)):
                if layer is None:
                    logits = self.model(tokens, return_type="logits")
                else:
                    logits = self.model(self.resid[layer][i], start_at_layer=layer, return_type="logits")
                s, n = next_token_loss_sum(logits, tokens, mask)
                total, count = total + s, count + n
        return total / count


def _evaluator(model, eval_batches: Sequence, layers: Sequence[int], post: str) -> _Evaluator:
    device = str(getattr(model.cfg, "device", "cpu"))
    pairs = [tuple(t.to(device) for t in _tensors(b)) for b in eval_batches]
    if not pairs:
        raise ValueError("no evaluation batch (empty held-out corpus?)")
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    resid: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for tokens, _ in pairs:
            _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=max(layers) + 1)
            for layer in layers:
                resid[layer].append(cache[f"blocks.{layer}.hook_resid_pre"])
    return _Evaluator(model, [p[0] for p in pairs], [p[1] for p in pairs], resid, post)


def performance_thresholds(
    model,
    calib_batches: Iterable,
    eval_batches: Sequence,
    *,
    layers: Iterable[int] | None = None,
    methods: Sequence[str] = METHODS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    max_rise: float = 0.01,
    calib_tokens: int = 1024,
    post: str = POST,
    progress: bool = True,
) -> pd.DataFrame:
    """Per layer and method, the largest quantile level whose cutoff keeps the loss within ``(1 + max_rise)`` x clean.

    Returns a table: layer, method, quantile (0 when even the smallest level breaks the budget), cutoff (mean over
    neurons for "channel"), loss, clean_loss, rise (loss / clean - 1), active_fraction (fraction of held-out
    activations with ``|a| >= cutoff``), evaluations (forward passes spent), plus one row per method with
    layer = -1: every layer at its chosen cutoff at once.
    """
    layers = check_layers(model, layers)
    for m in methods:
        _cutoffs(torch.zeros(2, 2), m, 0.5)  # validates the name
    grid = sorted(float(q) for q in quantiles)
    if not grid or grid[0] <= 0 or grid[-1] >= 1:
        raise ValueError(f"quantiles must lie strictly between 0 and 1, got {quantiles}")
    check_hooks(model, [post.format(layer=layer) for layer in layers])
    calib = calibration_activations(model, calib_batches, layers, calib_tokens, post)
    ev = _evaluator(model, list(eval_batches), layers, post)
    clean = ev.loss(None, None)
    rows, chosen = [], {m: {} for m in methods}
    bar = tqdm(total=len(layers) * len(methods), desc="thresholds", disable=not progress)
    for layer in layers:
        for method in methods:
            lo, hi, best, evals = -1, len(grid), None, 0  # invariant: grid[lo] ok (or lo = -1), grid[hi] too costly
            while hi - lo > 1:
                mid = (lo + hi) // 2
                result = _try(ev, layer, _cutoffs(calib[layer], method, grid[mid]))
                evals += 1
                if result[0] <= clean * (1 + max_rise):
                    lo, best = mid, result
                else:
                    hi = mid
            if best is None:
                rows.append(dict(layer=layer, method=method, quantile=0.0, cutoff=0.0, loss=clean, clean_loss=clean,
                                 rise=0.0, active_fraction=1.0, evaluations=evals))
                bar.update(1)
                continue
            loss, frac, cut = best
            chosen[method][layer] = cut
            rows.append(dict(layer=layer, method=method, quantile=grid[lo], cutoff=float(cut.float().mean()),
                             loss=loss, clean_loss=clean, rise=loss / clean - 1, active_fraction=frac,
                             evaluations=evals))
            bar.update(1)
    bar.close()
    for method in methods:
        rows.append(_combined(model, ev, chosen[method], method, clean, post))
    return pd.DataFrame(rows)


def _combined(model, ev: _Evaluator, cuts: dict[int, torch.Tensor], method: str, clean: float, post: str) -> dict:
    """Loss with every layer at its chosen cutoff at the same time (layer = -1)."""
    active: list[float] = []

    def make(cut):
        def hook(a, hook):
            keep = a.abs() >= cut.to(a.device, a.dtype)
            active.append(float(keep.float().mean()))
            return a * keep
        return hook

    hooks = [(post.format(layer=layer), make(cut)) for layer, cut in cuts.items()]
    pairs = [_Pair(t, m) for t, m in zip(ev.tokens, ev.masks, strict=False)]
    loss = heldout_loss(model, pairs, hooks) if hooks else clean
    return dict(layer=-1, method=method, quantile=float("nan"), cutoff=float("nan"), loss=loss, clean_loss=clean,
                rise=loss / clean - 1, active_fraction=sum(active) / len(active) if active else float("nan"),
                evaluations=1)


@dataclass
class _Pair:
    tokens: torch.Tensor
    attention_mask: torch.Tensor


def topk_losses(model, eval_batches: Sequence, ks: Sequence[int], *, layers: Iterable[int] | None = None,
                post: str = POST, progress: bool = True) -> pd.DataFrame:
    """Held-out loss when every layer in ``layers`` keeps only its k largest ``|a|`` per token (ties kept).

    Returns a table: k, fraction (k / d_mlp), loss, clean_loss, rise. ValueError for k outside 1..d_mlp.
    """
    layers = check_layers(model, layers)
    d_mlp = int(model.cfg.d_mlp)
    bad = [k for k in ks if not 1 <= int(k) <= d_mlp]
    if bad or not ks:
        raise ValueError(f"k must lie in 1..{d_mlp} (d_mlp), got {list(ks)}")
    names = [post.format(layer=layer) for layer in layers]
    check_hooks(model, names)
    batches = list(eval_batches)
    clean = heldout_loss(model, batches)
    rows = []
    for k in tqdm(list(ks), desc="top-k", disable=not progress):
        def hook(a, hook, k=int(k)):
            kth = a.abs().topk(k, dim=-1).values[..., -1:]
            return a * (a.abs() >= kth)

        loss = heldout_loss(model, batches, [(n, hook) for n in names])
        rows.append(dict(k=int(k), fraction=int(k) / d_mlp, loss=loss, clean_loss=clean, rise=loss / clean - 1))
    return pd.DataFrame(rows)
