"""Evaluating dictionaries on held-out text, streamed batch by batch (METHODS.md section 1, "Metrics").

For each dictionary: L0 (mean active latents per token), FVU = SSE / total variance of the target (explained
variance = 1 - FVU), the model's next-token loss clean, spliced (the hook's output replaced by the dictionary's
reconstruction), zero-ablated and mean-ablated (the target replaced by zeros / by its mean over the evaluation
tokens, computed in a first pass that stops at the hook; the spliced and ablated forwards restart at the hook's block
from the clean run's cached residual stream), CE-loss-recovered ``(L_abl - L_spliced) / (L_abl - L_clean)``
against both, KL(clean || spliced) per token, per-latent firing frequencies, dead (never fired) and dense
(fired on more than ``dense_threshold`` of tokens) fractions.
Memory stays bounded by one batch whatever the token count.

No metric is ever NaN: where one is undefined (FVU of a constant target, CE recovered when ablating changes
nothing) it is None and :attr:`EvalResult.undefined` says why. Each dictionary's ``warnings`` (also in its
metrics) flag a dead dictionary (no latent fired, or at least ``DEAD_WARN`` of them never fired), a dense one (at
least ``DENSE_WARN`` of the latents fire on more than ``dense_threshold`` of tokens), and a text shorter than the
token budget. Non-finite dictionary weights or model activations are refused, naming the tensor or hook.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import TokenSource
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.train import NonFiniteActivationError
from workbench.harvest import _as_batch, harvest


@dataclass
class _Acc:
    """Running sums for one dictionary (float64)."""

    d_sae: int
    d_out: int
    tokens: int = 0
    active: float = 0.0
    sse: float = 0.0
    sumsq: float = 0.0
    loss_spliced: float = 0.0
    kl: float = 0.0
    fires: torch.Tensor | None = None
    tsum: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64, device="cpu")
        self.tsum = torch.zeros(self.d_out, dtype=torch.float64, device="cpu")


#: at least this fraction of never-fired latents flags a dictionary as (mostly) dead
DEAD_WARN = 0.5
#: at least this fraction of dense latents flags a dictionary as dense
DENSE_WARN = 0.1


@dataclass
class EvalResult:
    """Metrics per dictionary label (JSON numbers, None where undefined, and ``warnings``: a list of strings),
    firing frequencies per label ([d_sae] float), and per label the reason of each undefined metric."""

    metrics: dict[str, dict[str, Any]]
    frequencies: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    undefined: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)


def _check_weights(label: str, d: Dictionary) -> None:
    for name, p in d.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"dictionary {label}: {name} holds NaN or Inf values; refusing to evaluate it")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteActivationError(f"the model's {name} hold NaN or Inf values on the evaluation text; "
                                       "check the model's weights")


def dictionary_warnings(m: Mapping[str, Any], d_sae: int, dense_threshold: float) -> list[str]:
    """Flags of one dictionary's metrics (``l0``, ``dead_fraction``, ``dense_fraction``, ``tokens``)."""
    out = []
    if m["l0"] == 0:
        out.append(f"dead dictionary: no latent fired on the {m['tokens']} evaluation tokens (L0 0)")
    elif m["dead_fraction"] >= DEAD_WARN:
        out.append(f"mostly dead: {m['dead_fraction']:.0%} of the {d_sae} latents never fired on the "
                   f"{m['tokens']} evaluation tokens")
    if m["dense_fraction"] >= DENSE_WARN:
        out.append(f"dense: {m['dense_fraction']:.0%} of the {d_sae} latents fire on more than "
                   f"{dense_threshold:.0%} of tokens (L0 {m['l0']:.1f})")
    return out


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over positions whose token and next token are real; (sum, count)."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return nll[valid].sum(), int(valid.sum())


def _target_means(model, source: TokenSource, hooks: list[str], max_tokens: int | None, device) -> dict[str, torch.Tensor]:
    class Mean:
        def __init__(self) -> None:
            self.hooks, self.s, self.n = hooks, {}, 0

        def consume(self, name, act, mask) -> None:
            rows = act.reshape(*act.shape[:2], -1)[mask.bool()].double()
            self.s[name] = self.s.get(name, 0) + rows.sum(0)
            if name == hooks[0]:
                self.n += rows.shape[0]

    m = Mean()
    harvest(model, source(), [m], max_tokens=max_tokens, progress=False, device=device)
    return {h: (m.s[h] / max(1, m.n)).float() for h in hooks}


def _replace(value: torch.Tensor):
    def hook(act, hook=None):  # noqa: ARG001
        return value.to(act.dtype).expand_as(act).clone()
    return hook


def _layer_of(hook: str) -> int | None:
    """The block index of a ``blocks.L....`` hook (the forward can start there), else None."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def _run_from(model, tokens: torch.Tensor, cache, hook: str, layer: int | None, fn) -> torch.Tensor:
    """Logits with ``fn`` replacing ``hook``; the forward restarts at the hook's block from the cached residual
    stream (the blocks before it are unchanged), or runs whole for hooks outside the blocks."""
    if layer is None:
        return model.run_with_hooks(tokens, fwd_hooks=[(hook, fn)], return_type="logits")
    resid = cache[f"blocks.{layer}.hook_resid_pre"]
    return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(hook, fn)], return_type="logits")


@torch.no_grad()
def evaluate_dictionaries(
    model, dictionaries: Mapping[str, Dictionary], source: TokenSource, *, max_tokens: int | None = None,
    dense_threshold: float = 0.1, progress: bool = True, device: str | None = None,
) -> EvalResult:
    """Evaluate every dictionary on the batches of ``source`` (held-out text) up to ``max_tokens`` real tokens."""
    if not dictionaries:
        raise ValueError("evaluate_dictionaries needs at least one dictionary")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an integer >= 1 or None (the whole text), got {max_tokens!r}")
    if not (isinstance(dense_threshold, (int, float)) and 0 < dense_threshold <= 1):
        raise ValueError(f"dense_threshold must be a number in (0, 1], got {dense_threshold!r}")
    for lab, d in dictionaries.items():
        _check_weights(lab, d)
    device = device or str(getattr(model.cfg, "device", "cpu"))
    dicts = {lab: d.to(device) for lab, d in dictionaries.items()}
    outs = sorted({d.hook_out for d in dicts.values()})
    starts = {h: _layer_of(h) for h in outs}
    resids = {f"blocks.{L}.hook_resid_pre" for L in starts.values() if L is not None}
    hooks = sorted({d.hook_in for d in dicts.values()} | set(outs) | resids)
    means = _target_means(model, source, outs, max_tokens, device)
    acc = {lab: _Acc(d.d_sae, d.d_out) for lab, d in dicts.items()}
    clean_loss = n_pred = n_tok = 0.0
    abl = {h: {"zero": 0.0, "mean": 0.0} for h in outs}
    bar = tqdm(total=max_tokens, desc="eval-dict", unit="tok", disable=not progress)
    for batch in source():
        tokens, mask = (t.to(device) for t in _as_batch(batch))
        logits, cache = model.run_with_cache(tokens, names_filter=hooks)
        for h in hooks:
            _check_finite(f"activations at {h}", cache[h][mask.bool()])
        _check_finite("logits", logits[mask.bool()])
        loss, count = next_token_loss(logits, tokens, mask)
        clean_loss += float(loss)
        n_pred += count
        real = mask.bool()
        n_tok += int(real.sum())
        logp_clean = F.log_softmax(logits.double(), -1)
        for lab, d in dicts.items():
            a = acc[lab]
            x, y = cache[d.hook_in], cache[d.hook_out]
            out, z = d(x)
            zr, yr, orr = z[real], y[real].double(), out[real].double()
            a.tokens += zr.shape[0]
            a.active += float((zr > 0).sum())
            a.fires += (zr > 0).sum(0).double().cpu()
            a.sse += float((yr - orr).pow(2).sum())
            a.sumsq += float(yr.pow(2).sum())
            a.tsum += yr.sum(0).cpu()
            spliced = _run_from(model, tokens, cache, d.hook_out, starts[d.hook_out], _replace(out))
            a.loss_spliced += float(next_token_loss(spliced, tokens, mask)[0])
            logp = F.log_softmax(spliced.double(), -1)
            kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
            a.kl += float(kl[real].sum())
        for h in outs:
            for name, value in (("zero", torch.zeros_like(means[h])), ("mean", means[h])):
                ablated = _run_from(model, tokens, cache, h, starts[h], _replace(value.to(device)))
                abl[h][name] += float(next_token_loss(ablated, tokens, mask)[0])
        bar.update(int(real.sum()))
        if max_tokens is not None and n_tok >= max_tokens:
            break
    bar.close()
    if n_pred == 0:
        raise ValueError("the evaluation text gave no next-token prediction (rows shorter than two tokens?)")
    metrics, freqs, undefined, warns = {}, {}, {}, {}
    ce_clean = clean_loss / n_pred
    short = (f"the evaluation text ran out after {int(n_tok)} of the {max_tokens} tokens asked"
             if max_tokens is not None and n_tok < max_tokens else None)
    for lab, d in dicts.items():
        a = acc[lab]
        why: dict[str, str] = {}
        total_var = a.sumsq - float(a.tsum.pow(2).sum()) / max(1, a.tokens)
        if total_var > 1e-12 * max(a.sumsq, 1e-300):
            fvu = a.sse / total_var
        else:
            fvu = None
            why["fvu"] = why["explained_variance"] = (
                f"the target {d.hook_out} is constant over the {a.tokens} evaluation tokens (zero variance)")
        freq = (a.fires / max(1, a.tokens)).float()
        ce_spliced = a.loss_spliced / n_pred
        m: dict[str, Any] = {
            "tokens": a.tokens, "l0": a.active / max(1, a.tokens), "fvu": fvu,
            "explained_variance": None if fvu is None else 1 - fvu, "mse": a.sse / max(1, a.tokens),
            "ce_clean": ce_clean, "ce_spliced": ce_spliced, "kl": a.kl / max(1, a.tokens),
            "dead_fraction": float((freq == 0).float().mean()),
            "dense_fraction": float((freq > dense_threshold).float().mean())}
        for name in ("zero", "mean"):
            ce_abl = abl[d.hook_out][name] / n_pred
            m[f"ce_{name}_ablated"] = ce_abl
            gap = ce_abl - ce_clean
            if abs(gap) > 1e-12:
                m[f"ce_recovered_{name}"] = (ce_abl - ce_spliced) / gap
            else:
                m[f"ce_recovered_{name}"] = None
                why[f"ce_recovered_{name}"] = (f"{name}-ablating {d.hook_out} does not change the loss "
                                               f"({ce_abl:.6g} vs clean {ce_clean:.6g}): nothing to recover")
        for k, v in m.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise NonFiniteActivationError(f"dictionary {lab}: metric {k} came out {v} (non-finite logits?)")
        flags = dictionary_warnings(m, d.d_sae, dense_threshold)
        flags += [f"{k} undefined: {r}" for k, r in why.items() if k != "explained_variance"]
        if short:
            flags.append(short)
        m["warnings"] = flags
        metrics[lab], freqs[lab], undefined[lab], warns[lab] = m, freq, why, flags
    return EvalResult(metrics=metrics, frequencies=freqs, tokens=int(n_tok), undefined=undefined, warnings=warns)
