"""Evaluating a cross-layer transcoder (or a per-layer transcoder set) on held-out text, streamed batch by batch.

Per layer: L0 (mean active features per token), FVU of that layer's MLP output (SSE / total variance, from the
clean run's MLP inputs), dead (never fired) and dense (fired on more than ``dense_threshold`` of tokens) fractions.
For the whole model: next-token loss clean, spliced (EVERY MLP output replaced by the transcoder's, all layers at
once: layer l's features read the spliced run's own MLP input at l, so errors compound as they would in the
replacement model), zero-ablated (every MLP output zero) and mean-ablated (every MLP output its mean over the
evaluation tokens), CE recovered ``(L_abl - L_spliced) / (L_abl - L_clean)`` against both, KL(clean || spliced).
A per-layer transcoder set is evaluated the same way through
:meth:`~circuits.dictionaries.clt.CrossLayerTranscoder.from_transcoders`. No metric is ever NaN (None where
undefined, with the reason in the warnings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import TokenSource
from circuits.dictionaries.clt import CrossLayerTranscoder
from circuits.dictionaries.evaluate import (
    DEAD_WARN,
    DENSE_WARN,
    _check_finite,
    _target_means,
    next_token_loss,
)
from circuits.dictionaries.train import NonFiniteActivationError
from workbench.harvest import _as_batch

__all__ = ["CltEval", "evaluate_clt", "spliced_logits"]


@dataclass
class CltEval:
    """``layers``: one dict per layer (layer, l0, fvu, mse, dead_fraction, dense_fraction); ``metrics``: the
    whole-model numbers (ce_clean, ce_spliced, ce_zero_ablated, ce_mean_ablated, ce_recovered_zero/mean, kl,
    l0_total, fvu_mean); ``frequencies`` [L, n] firing frequencies; ``warnings``."""

    layers: list[dict[str, Any]]
    metrics: dict[str, Any]
    frequencies: torch.Tensor
    tokens: int = 0
    warnings: list[str] = field(default_factory=list)


def _splice_hooks(clt: CrossLayerTranscoder) -> list[tuple[str, Any]]:
    """Hooks that replace every MLP output by the CLT's, layer l's codes read from the running MLP input at l."""
    codes: dict[int, torch.Tensor] = {}

    def read(act, hook=None, layer=0):  # noqa: ARG001
        codes[layer] = clt.encode_layer(act.to(clt.W_enc.dtype), layer)
        return act

    def write(act, hook=None, layer=0):  # noqa: ARG001
        return clt.decode_layer([codes[i] for i in range(layer + 1)], layer).to(act.dtype)

    hooks = []
    for layer in range(clt.n_layers):
        hooks.append((clt.hook_in(layer), lambda a, hook=None, layer=layer: read(a, hook, layer)))
        hooks.append((clt.hook_out(layer), lambda a, hook=None, layer=layer: write(a, hook, layer)))
    return hooks


@torch.no_grad()
def spliced_logits(model: Any, clt: CrossLayerTranscoder, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``model`` with every MLP output replaced by ``clt``'s (all layers at once)."""
    return model.run_with_hooks(tokens, fwd_hooks=_splice_hooks(clt), return_type="logits")


def _replace_all(values: list[torch.Tensor], names: list[str]) -> list[tuple[str, Any]]:
    def make(v):
        return lambda act, hook=None: v.to(act.dtype).expand_as(act).clone()  # noqa: ARG005
    return [(h, make(v)) for h, v in zip(names, values, strict=True)]


@torch.no_grad()
def evaluate_clt(model: Any, clt: CrossLayerTranscoder, source: TokenSource, *, max_tokens: int | None = None,
                 dense_threshold: float = 0.1, progress: bool = True, device: str | None = None) -> CltEval:
    """Evaluate ``clt`` on the batches of ``source`` (held-out text) up to ``max_tokens`` real tokens."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an integer >= 1 or None (the whole text), got {max_tokens!r}")
    for name, p in clt.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"the cross-layer transcoder's {name} holds NaN or Inf values; refusing to evaluate it")
    device = device or str(getattr(model.cfg, "device", "cpu"))
    clt = clt.to(device)
    L, n = clt.n_layers, clt.d_sae
    hooks_in = [clt.hook_in(i) for i in range(L)]
    hooks_out = [clt.hook_out(i) for i in range(L)]
    means = _target_means(model, source, hooks_out, max_tokens, device)
    sse = torch.zeros(L, dtype=torch.float64)
    sumsq = torch.zeros(L, dtype=torch.float64)
    tsum = torch.zeros(L, clt.d_model, dtype=torch.float64)
    fires = torch.zeros(L, n, dtype=torch.float64)
    active = torch.zeros(L, dtype=torch.float64)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0}
    kl, n_pred, n_tok = 0.0, 0, 0
    bar = tqdm(total=max_tokens, desc="eval-clt", unit="tok", disable=not progress)
    for batch in source():
        tokens, mask = (t.to(device) for t in _as_batch(batch))
        real = mask.bool()
        logits, cache = model.run_with_cache(tokens, names_filter=hooks_in + hooks_out)
        for h in hooks_in + hooks_out:
            _check_finite(f"activations at {h}", cache[h][real])
        x = torch.stack([cache[h][real] for h in hooks_in], 1).to(clt.W_enc.dtype)
        y = torch.stack([cache[h][real] for h in hooks_out], 1).double()
        out, acts = clt(x)
        sse += (y - out.double()).pow(2).sum((0, 2)).cpu()
        sumsq += y.pow(2).sum((0, 2)).cpu()
        tsum += y.sum(0).cpu()
        on = acts > 0
        fires += on.sum(0).double().cpu()
        active += on.sum((0, 2)).double().cpu()
        n_tok += int(real.sum())
        loss, count = next_token_loss(logits, tokens, mask)
        losses["clean"] += float(loss)
        n_pred += count
        spliced = spliced_logits(model, clt, tokens)
        _check_finite("spliced logits", spliced[real])
        losses["spliced"] += float(next_token_loss(spliced, tokens, mask)[0])
        logp_clean, logp = F.log_softmax(logits.double(), -1), F.log_softmax(spliced.double(), -1)
        kl += float((logp_clean.exp() * (logp_clean - logp)).sum(-1)[real].sum())
        for name, values in (("zero", [torch.zeros_like(means[h]) for h in hooks_out]),
                             ("mean", [means[h] for h in hooks_out])):
            ablated = model.run_with_hooks(tokens, fwd_hooks=_replace_all([v.to(device) for v in values], hooks_out),
                                           return_type="logits")
            losses[name] += float(next_token_loss(ablated, tokens, mask)[0])
        bar.update(int(real.sum()))
        if max_tokens is not None and n_tok >= max_tokens:
            break
    bar.close()
    if n_pred == 0:
        raise ValueError("the evaluation text gave no next-token prediction (rows shorter than two tokens?)")
    warnings: list[str] = []
    freq = (fires / max(1, n_tok)).float()
    layers = []
    for layer in range(L):
        total_var = float(sumsq[layer]) - float(tsum[layer].pow(2).sum()) / max(1, n_tok)
        fvu = float(sse[layer]) / total_var if total_var > 1e-12 * max(float(sumsq[layer]), 1e-300) else None
        if fvu is None:
            warnings.append(f"layer {layer}: FVU undefined (the MLP output is constant over the {n_tok} tokens)")
        row = {"layer": layer, "l0": float(active[layer]) / max(1, n_tok), "fvu": fvu,
               "mse": float(sse[layer]) / max(1, n_tok), "dead_fraction": float((freq[layer] == 0).float().mean()),
               "dense_fraction": float((freq[layer] > dense_threshold).float().mean())}
        if row["l0"] == 0:
            warnings.append(f"layer {layer}: no CLT feature fired on the {n_tok} evaluation tokens (L0 0): all dead")
        elif row["dead_fraction"] >= DEAD_WARN:
            warnings.append(f"layer {layer}: {row['dead_fraction']:.0%} of the {n} features never fired on the "
                            f"{n_tok} evaluation tokens")
        if row["dense_fraction"] >= DENSE_WARN:
            warnings.append(f"layer {layer}: {row['dense_fraction']:.0%} of the features fire on more than "
                            f"{dense_threshold:.0%} of tokens")
        layers.append(row)
    ce = {k: v / n_pred for k, v in losses.items()}
    fvus = [r["fvu"] for r in layers if r["fvu"] is not None]
    metrics: dict[str, Any] = {
        "tokens": n_tok, "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
        "ce_mean_ablated": ce["mean"], "kl": kl / max(1, n_tok), "l0_total": sum(r["l0"] for r in layers),
        "fvu_mean": sum(fvus) / len(fvus) if fvus else None,
        "dead_fraction": float((freq == 0).float().mean())}
    for name in ("zero", "mean"):
        gap = ce[name] - ce["clean"]
        metrics[f"ce_recovered_{name}"] = (ce[name] - ce["spliced"]) / gap if abs(gap) > 1e-12 else None
        if metrics[f"ce_recovered_{name}"] is None:
            warnings.append(f"ce_recovered_{name} undefined: {name}-ablating every MLP does not change the loss")
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteActivationError(f"the CLT metric {k} came out {v} (non-finite logits?)")
    if max_tokens is not None and n_tok < max_tokens:
        warnings.append(f"the evaluation text ran out after {n_tok} of the {max_tokens} tokens asked")
    return CltEval(layers=layers, metrics=metrics, frequencies=freq, tokens=n_tok, warnings=warnings)
