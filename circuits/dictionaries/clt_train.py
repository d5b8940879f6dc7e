"""Joint training of a cross-layer transcoder on every layer, resumable after a kill.

One harvest pass (:class:`~circuits.dictionaries.buffer.ActivationBuffer`) gives every layer's MLP input
(``blocks.l.ln2.hook_normalized``) and output (``blocks.l.hook_mlp_out``); a batch is x [B, L, d], y [B, L, d].
Loss per token, averaged over the batch (METHODS.md section 6)::

    sum_m ||y_m - y_hat_m||^2 + l1 * penalty
    ReLU:     penalty = sum_{l, i} a_{l,i} * ||W_dec,l,i||          (L1 weighted by the feature's decoder norm summed
                                                                    over its target layers, ||W_dec,l,i|| = sum_m ||W_dec,l->m,i||)
    JumpReLU: penalty = sum_{l, i} tanh(tanh_c * a_{l,i} * ||W_dec,l,i||)   (Anthropic's; thresholds learn through
                                                                    the straight-through estimator, circuits.dictionaries.clt)
    TopK:     no penalty (k per layer); plus auxk_coef * AuxK: the residual y - y_hat reconstructed (through the
              full cross-layer decoders) from the top d_model // 2 pre-activations of each layer's dead features
              (not fired in the last ``dead_tokens``), normalised by the residual's variance (Gao et al. 2024, as
              circuits.dictionaries.train does for one layer).

Every layer's input and output are divided by a fixed scale (measured on the first buffer block, kept in the
checkpoints) so that their mean squared norm is d_model: the losses, ``l1`` and the learning rate are in those
units, and the layers weigh alike. The scales are folded into the weights at the end (W_enc / s_in, W_dec and
b_dec times s_out; codes and thresholds unchanged), so the returned CLT reads and writes the model's own units.
``b_dec`` starts at each layer's mean output, the encoders are scaled so the first reconstructions are small, and
JumpReLU thresholds start at half the mean positive pre-activation of their layer. Adam, with the schedule, the
setting checks, budget warnings and the resumable checkpoints (weights, Adam state, dead counters, buffer
position, settings) of :mod:`circuits.dictionaries.train`: a resumed run ends with the same weights as an
uninterrupted one; other settings are refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.dictionaries import train as _t
from circuits.dictionaries.buffer import ActivationBuffer, TokenSource
from circuits.dictionaries.clt import CLT_ACTIVATIONS, CrossLayerTranscoder
from circuits.dictionaries.model import expansion_width
from circuits.dictionaries.train import (
    TrainDictConfig,
    TrainingConfigError,
    TrainingDivergedError,
    TrainResult,
)

__all__ = ["CltSpec", "clt_loss", "train_clt"]


@dataclass
class CltSpec:
    """The CLT to train: activation (relu | topk | jumprelu), ``expansion`` (features per layer / d_model) or
    ``d_sae``, ``l1`` (penalty coefficient, ReLU and JumpReLU), ``k`` (TopK, per layer), ``tanh_c`` and
    ``bandwidth`` (JumpReLU); ``cross_layer`` False keeps the cross-layer decoders at zero (a per-layer transcoder
    set trained with the same recipe, for comparisons). Checked when made (TrainingConfigError names the setting)."""

    activation: str = "relu"
    expansion: float = 4.0
    d_sae: int | None = None
    l1: float = 1e-3
    k: int | None = None
    tanh_c: float = 1.0
    bandwidth: float = 0.05
    cross_layer: bool = True

    def __post_init__(self) -> None:
        o = "CltSpec"
        if self.activation not in CLT_ACTIVATIONS:
            raise _t._bad(o, "activation", self.activation, f"one of {', '.join(CLT_ACTIVATIONS)}")
        _t._real(o, "expansion", self.expansion, 0, lo_open=True)
        _t._int(o, "d_sae", self.d_sae, 1, optional=True)
        _t._real(o, "l1", self.l1, 0)
        _t._real(o, "tanh_c", self.tanh_c, 0, lo_open=True)
        _t._real(o, "bandwidth", self.bandwidth, 0, lo_open=True)
        if self.activation == "topk":
            _t._int(o, "k", self.k, 1)

    def width(self, d_model: int) -> int:
        return self.d_sae or expansion_width(d_model, self.expansion)


def clt_loss(clt: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, spec: CltSpec,
             dead: torch.Tensor | None = None, auxk_coef: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y [B, L, d] -> (loss, mse (summed over layers, mean over tokens), penalty or AuxK, codes [B, L, n]).
    ``dead`` [L, n] (bool): the dead features of the AuxK term (TopK only)."""
    pre = clt.pre_activation(x)
    acts = clt.activate(pre)
    out = clt.decode(acts)
    mse = (out - y).pow(2).sum((-1, -2)).mean()
    if spec.activation == "topk":
        penalty = torch.zeros((), dtype=mse.dtype, device=mse.device)
        if dead is not None and auxk_coef > 0 and bool(dead.any()):
            k_aux = min(max(1, clt.d_model // 2), int(dead.sum(-1).max()))
            vals, idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
            aux_acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
            resid = (y - out).detach()
            e_hat = clt.decode(aux_acts) - clt.b_dec
            aux = (e_hat - resid).pow(2).sum((-1, -2)).mean() / \
                resid.sub(resid.mean(0)).pow(2).sum((-1, -2)).mean().clamp_min(1e-12)
            penalty = torch.nan_to_num(aux, 0.0)
        return mse + auxk_coef * penalty, mse, penalty, acts
    weighted = acts * clt.summed_decoder_norms()
    if spec.activation == "jumprelu":
        weighted = torch.tanh(spec.tanh_c * weighted)
    penalty = weighted.sum((-1, -2)).mean()
    return mse + spec.l1 * penalty, mse, penalty, acts


@torch.no_grad()
def init_clt_from_data(clt: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, ratio: float = 0.1,
                       rows: int = 4096) -> None:
    """b_dec[m] = mean of y_m; encoders scaled so the first reconstruction's centred norm is ``ratio`` times the
    target's (per layer); JumpReLU thresholds at half the mean positive pre-activation of their layer.
    x, y [N, L, d]."""
    x, y = x[:rows], y[:rows]
    clt.b_dec.copy_(y.mean(0))
    if clt.log_threshold is not None:
        clt.log_threshold.fill_(-30.0)  # thresholds ~0 while scaling: the code is the ReLU's
    for _ in range(2):  # the scale of layer m's output depends on the layers before it: scale twice
        out = clt.decode(clt.encode(x)) - clt.b_dec
        got = out.pow(2).sum(-1).mean(0).sqrt()
        want = (y - clt.b_dec).pow(2).sum(-1).mean(0).sqrt()
        scale = torch.where((got > 0) & (want > 0), ratio * want / got.clamp_min(1e-30), torch.ones_like(got))
        clt.W_enc.mul_(scale[:, None, None])
        clt.b_enc.mul_(scale[:, None])
    if clt.log_threshold is not None:
        pre = clt.pre_activation(x).clamp_min(0)
        mean_pos = pre.sum(0) / (pre > 0).sum(0).clamp_min(1)
        per_layer = mean_pos.mean(-1, keepdim=True).clamp_min(1e-6)
        clt.log_threshold.copy_((0.5 * per_layer).log().expand_as(clt.log_threshold))


class _Scaled(torch.nn.Module):
    """The CLT in training with its fixed input / output scales [L] (parameters that take no gradient, so that
    checkpoints hold them)."""

    def __init__(self, clt: CrossLayerTranscoder) -> None:
        super().__init__()
        self.clt = clt
        self.in_scale = torch.nn.Parameter(torch.ones(clt.n_layers, device=clt.b_dec.device), requires_grad=False)
        self.out_scale = torch.nn.Parameter(torch.ones(clt.n_layers, device=clt.b_dec.device), requires_grad=False)

    @torch.no_grad()
    def measure(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Scales from x, y [N, L, d]: sqrt(mean ||.||^2 / d) per layer (1 where zero)."""
        d = x.shape[-1]
        for scale, t in ((self.in_scale, x), (self.out_scale, y)):
            s = (t.double().pow(2).sum(-1).mean(0) / d).sqrt().float()
            scale.copy_(torch.where(s > 0, s, torch.ones_like(s)))

    def scaled(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x / self.in_scale[:, None], y / self.out_scale[:, None]

    @torch.no_grad()
    def folded(self) -> CrossLayerTranscoder:
        """The CLT in the model's units (the scales folded into the weights)."""
        clt = self.clt
        clt.W_enc.div_(self.in_scale[:, None, None])
        for layer, W in enumerate(clt.W_dec):
            W.mul_(self.out_scale[layer:][None, :, None])
        clt.b_dec.mul_(self.out_scale[:, None])
        return clt


def _stack(batch: dict[str, torch.Tensor], hooks: list[str]) -> torch.Tensor:
    return torch.stack([batch[h] for h in hooks], 1)


def train_clt(model: Any, source: TokenSource | None, spec: CltSpec, cfg: TrainDictConfig, *,
              workdir: Path | str | None = None, progress: bool = True, device: str | None = None,
              stop_after: int | None = None, buffer: Any = None, seed: int | None = None) -> TrainResult:
    """Train one CLT over every layer of ``model`` on activations harvested over ``source`` (or from ``buffer``,
    an object with ``blocks(start)`` and ``widths()`` such as TensorBuffer holding every layer's hooks).
    Returns a TrainResult whose ``dictionaries`` is ``{"clt": CrossLayerTranscoder}`` (on ``device``, eval form).
    ``stop_after``: end after that many steps in total (a later call with the same ``workdir`` resumes).
    Raises what :func:`circuits.dictionaries.train.train_dictionaries` raises."""
    cfg.check()
    n_layers = int(model.cfg.n_layers)
    d_model = int(model.cfg.d_model)
    device = device or str(model.W_E.device)
    d_sae = spec.width(d_model)
    if spec.activation == "topk" and spec.k > d_sae:
        raise TrainingConfigError(f"CltSpec.k ({spec.k}) exceeds the {d_sae} features per layer; accepted: "
                                  f"1 <= k <= {d_sae}")
    params = n_layers * (2 * d_model * d_sae + d_sae + d_model) + d_sae * d_model * n_layers * (n_layers - 1) // 2
    need = 4 * (4 * params + 4 * cfg.batch_size * n_layers * d_sae)
    available = _t._available_bytes()
    if available is not None and need > available:
        raise TrainingConfigError(
            f"training this cross-layer transcoder needs about {need / 2**30:.2f} GiB (weights, gradients, Adam "
            f"state, one batch of codes) but {available / 2**30:.2f} GiB is available; lower expansion or batch_size")
    workdir = Path(workdir) if workdir is not None else None
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise TrainingConfigError(f"workdir {workdir} is a file; give a folder for resume checkpoints")
    clt = CrossLayerTranscoder.create(n_layers, d_model, d_sae, activation=spec.activation, k=spec.k,
                                      bandwidth=spec.bandwidth, seed=cfg.seed if seed is None else seed).to(device)
    hooks_in = [clt.hook_in(i) for i in range(n_layers)]
    hooks_out = [clt.hook_out(i) for i in range(n_layers)]
    settings = _t._settings(cfg, [spec], {"n_layers": n_layers, "d_model": d_model})
    optim = torch.optim.Adam(clt.parameters(), lr=cfg.lr, betas=cfg.betas)
    if not spec.cross_layer:
        with torch.no_grad():
            for W in clt.W_dec:
                W[:, 1:].zero_()
    wrapper = _Scaled(clt)
    dicts, optims = {"clt": wrapper}, {"clt": optim}
    since = {"clt": torch.zeros(n_layers * d_sae, dtype=torch.long, device=device)}
    if buffer is None:
        buffer = ActivationBuffer(model, source, hooks_in + hooks_out, block_batches=cfg.block_batches,
                                  batch_size=cfg.batch_size, seed=cfg.seed, spill_dir=cfg.spill_dir, device=device)
    step, start_block, start_batch, history, saved_print = 0, 0, 0, [], None
    if workdir is not None:
        loaded = _t._load(workdir, dicts, optims, since, settings)
        if loaded:
            step, start_block, start_batch, history, saved_print = loaded
    total, dead_after, t0 = cfg.steps, cfg.dead_after(), time.perf_counter()
    warnings = cfg.budget_warnings()
    bar = tqdm(total=total, initial=step, desc="train-clt", unit="step", disable=not progress)
    last_save, first = _t._clock(), True
    for block in buffer.blocks(start_block) if step < total else ():
        _t._check_block(block, hooks_in + hooks_out)
        if first:
            if block.n_batches == 0 and step == 0:
                raise TrainingConfigError(
                    f"TrainDictConfig.batch_size ({cfg.batch_size}) exceeds the {block.n_rows} rows of one buffer "
                    "block: no training batch; lower batch_size or raise block_batches")
            _t._check_fingerprint(saved_print, block, workdir / "resume" if workdir else Path("."))
            first = False
        if step == 0 and start_batch == 0:
            for h in hooks_out:
                flat = _t.constant_warning(h, block.rows[h])
                if flat and flat not in warnings:
                    warnings.append(flat)
            x0, y0 = _stack(block.rows, hooks_in).to(device), _stack(block.rows, hooks_out).to(device)
            wrapper.measure(x0, y0)
            init_clt_from_data(clt, *wrapper.scaled(x0, y0))
        fingerprint = None
        for i in range(start_batch, block.n_batches):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            batch = block.batch(i)
            x, y = wrapper.scaled(_stack(batch, hooks_in).to(device), _stack(batch, hooks_out).to(device))
            for group in optim.param_groups:
                group["lr"] = cfg.lr_at(step)
            dead = (since["clt"] >= dead_after).reshape(n_layers, d_sae)
            loss, mse, penalty, acts = clt_loss(clt, x, y, spec, dead, cfg.auxk_coef)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if not spec.cross_layer:  # no gradient, so Adam never moves them off zero
                for W in clt.W_dec:
                    W.grad[:, 1:].zero_()
            optim.step()
            fired = (acts.detach() > 0).any(0).reshape(-1)
            since["clt"] += cfg.batch_size
            since["clt"].masked_fill_(fired, 0)
            if step % cfg.log_every == 0 or step == total - 1:
                m = float(mse.detach())
                if not math.isfinite(m):
                    raise TrainingDivergedError(f"the CLT's reconstruction loss became {m} at step {step}; lower lr "
                                                f"(now {cfg.lr:g})")
                l0 = (acts.detach() > 0).sum(-1).float().mean(0)
                history.append({"step": step, "clt": {"mse": m, "penalty": float(penalty.detach()),
                                                      "l0": float(l0.sum()), "l0_layers": l0.tolist(),
                                                      "dead": int((since["clt"] >= dead_after).sum())}})
            step += 1
            bar.update(1)
            timed = cfg.checkpoint_seconds is not None and _t._clock() - last_save >= cfg.checkpoint_seconds
            if workdir is not None and (step % cfg.checkpoint_every == 0 or step == total or timed):
                nxt = (block.index, i + 1) if i + 1 < block.n_batches else (block.index + 1, 0)
                fingerprint = fingerprint or _t._fingerprint(block)
                _t._save(workdir, step, nxt, dicts, optims, since, history, settings, fingerprint)
                last_save = _t._clock()
        start_batch = 0
        if step >= total or (stop_after is not None and step >= stop_after):
            break
    bar.close()
    finished = _t._schedule_end(step, total, stop_after, cfg.batch_size, warnings)
    bad = [n for n, p in clt.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDivergedError(f"the CLT's weights {bad} became NaN or Inf by step {step}; lower lr "
                                    f"(now {cfg.lr:g})")
    if finished and step > 0:
        dead = (since["clt"] >= dead_after).reshape(n_layers, d_sae)
        for layer in range(n_layers):
            n_dead = int(dead[layer].sum())
            if n_dead == d_sae:
                warnings.append(f"layer {layer}: all {d_sae} CLT features are dead (none fired in the last "
                                f"{dead_after} training tokens)")
            elif n_dead > d_sae // 2:
                warnings.append(f"layer {layer}: {n_dead} of {d_sae} CLT features are dead (did not fire in the "
                                f"last {dead_after} training tokens)")
    clt = wrapper.folded()
    clt.requires_grad_(False)
    clt.eval()
    return TrainResult(dictionaries={"clt": clt}, history=history, steps=step, tokens=step * cfg.batch_size,
                       seconds=time.perf_counter() - t0, warnings=warnings)
