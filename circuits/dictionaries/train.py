"""Training several dictionaries in one pass over the model, resumable after a kill.

Losses (METHODS.md section 1), per token, averaged over the batch:
- ReLU: ``||y - out||^2 + l1 * sum_i z_i * ||W_dec[i]||`` (penalty weighted by decoder norms; the norms are folded
  into the encoder at the end so saved decoders have unit rows and the function is unchanged).
- TopK: ``||y - out||^2 + auxk_coef * AuxK``; AuxK reconstructs the residual ``y - out`` from the top ``d_in // 2``
  pre-activations of the dead latents (not fired in the last ``dead_tokens`` tokens), normalised by the residual's
  variance (as in Gao et al. 2024). Decoder rows are kept at unit norm (the gradient's component along each row is
  removed before the step, the rows renormalised after it). TopK runs the sparse path: only the k chosen decoder
  rows and encoder columns get gradients.
``b_dec`` starts at the mean of the target over the first buffer block and the encoder is scaled so the first
reconstructions are small (:func:`init_from_data`). Adam with linear warm-up, then a constant
learning rate, then a linear decay to zero over the last ``decay_fraction`` of the steps.

Resume: with a ``workdir``, every ``checkpoint_every`` steps the weights, Adam state and dead-latent counters of every
dictionary and the buffer position (block, batch) are written atomically to ``workdir/resume/step-<N>/``. Starting
again with the same arguments continues from there and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import ActivationBuffer, TokenSource
from circuits.dictionaries.fused import relu_code
from circuits.dictionaries.model import (
    Dictionary,
    _SparseDecode,
    _SparseGatherLinear,
    csr_plan,
    expansion_width,
)
from circuits.dictionaries.saelens_io import hook_widths
from workbench.atomic import atomic_dir, clean_stale_tmp, write_json
from workbench.train import _optim_from_tensors, _optim_to_tensors, saved_steps, step_dir


@dataclass
class DictSpec:
    """One dictionary to train: where it reads (``hook_in``) and writes (``hook_out``), its shape and sparsity."""

    hook_in: str
    kind: str = "sae"
    hook_out: str | None = None
    activation: str = "relu"
    expansion: float = 8.0
    d_sae: int | None = None
    l1: float = 1e-3
    k: int | None = None
    name: str | None = None

    def label(self) -> str:
        """A short name: ``<kind>-<hook_in>-<relu-l1 | topk-k>``, unless ``name`` is given."""
        if self.name:
            return self.name
        sparsity = f"topk{self.k}" if self.activation == "topk" else f"l1-{self.l1:g}"
        return f"{self.kind}-{self.hook_in}-{sparsity}"


@dataclass
class TrainDictConfig:
    """Optimisation settings shared by every dictionary of one training pass."""

    tokens: int
    batch_size: int = 4096
    lr: float = 4e-4
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    block_batches: int = 16
    seed: int = 0
    auxk_coef: float = 1 / 32
    dead_tokens: int | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    spill_dir: str | None = None

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last ``decay_fraction`` of the steps."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        decay_start = int(self.steps * (1 - self.decay_fraction))
        if self.decay_fraction > 0 and step >= decay_start:
            warm = min(warm, (self.steps - step) / max(1, self.steps - decay_start))
        return self.lr * warm

    def dead_after(self) -> int:
        return self.dead_tokens if self.dead_tokens is not None else max(10 * self.batch_size, self.tokens // 10)


@dataclass
class TrainResult:
    """Trained dictionaries (by label), per-step history rows, steps and tokens done, wall seconds."""

    dictionaries: dict[str, Dictionary]
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def build_dictionaries(model, specs: Sequence[DictSpec], seed: int = 0,
                       widths: dict[str, int] | None = None) -> dict[str, Dictionary]:
    """Randomly initialised dictionaries for ``specs`` with widths read from the model's hooks (or ``widths``)."""
    hooks = sorted({s.hook_in for s in specs} | {s.hook_out or s.hook_in for s in specs})
    widths = widths if widths is not None else hook_widths(model, hooks)
    missing = [h for h in hooks if h not in widths]
    if missing:
        raise ValueError(f"no activations for hooks {missing}; the buffer holds {sorted(widths)}")
    out: dict[str, Dictionary] = {}
    for i, s in enumerate(specs):
        label = s.label()
        if label in out:
            raise ValueError(f"two dictionaries share the label {label!r}; give them distinct names")
        d_in = widths[s.hook_in]
        d_sae = s.d_sae or expansion_width(d_in, s.expansion)
        out[label] = Dictionary.create(
            s.kind, d_in, d_sae, activation=s.activation, k=s.k, hook_in=s.hook_in,
            hook_out=s.hook_out if s.kind != "sae" else None,
            d_out=widths[s.hook_out] if s.kind != "sae" and s.hook_out else None, seed=seed + i,
        )
    return out


@torch.no_grad()
def init_from_data(d: Dictionary, x: torch.Tensor, y: torch.Tensor, ratio: float = 0.1, rows: int = 4096) -> None:
    """Data-dependent start: ``b_dec`` = mean of the target y [N, d_out]; the encoder scaled so that the initial
    reconstruction's centred RMS norm is ``ratio`` times the target's (a small start whatever the activations' scale)."""
    x, y = x[:rows], y[:rows]
    d.b_dec.copy_(y.mean(0))
    got = (d.decode(d.encode(x), x) - d.b_dec).pow(2).sum(-1).mean().sqrt()
    want = (y - d.b_dec).pow(2).sum(-1).mean().sqrt()
    if float(got) > 0 and float(want) > 0:
        scale = ratio * want / got
        d.W_enc.mul_(scale)
        d.b_enc.mul_(scale)


def _step_losses(d: Dictionary, x: torch.Tensor, y: torch.Tensor, spec: DictSpec, dead: torch.Tensor,
                 auxk_coef: float, log: bool = True) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Loss of one batch (x [B, d_in], y [B, d_out]); returns (loss, numbers to log, latents fired [d_sae] bool).
    The logged numbers (L0, MSE, penalty or AuxK) are computed only when ``log`` is true."""
    logs: dict[str, float] = {}
    if d.activation == "relu":
        recon, penalty, z_sum, z = relu_code(x, d.b_dec if d.apply_b_dec_to_input else None, d.W_enc, d.b_enc,
                                             d.W_dec)
        out = d._add_skip(recon + d.b_dec, x)
        mse = (out - y).pow(2).sum(-1).mean()
        loss = mse + spec.l1 * penalty
        fired = z_sum > 0  # the code is non-negative: a latent fired in the batch iff its column sum is positive
        if log:
            logs["l0"] = float((z > 0).sum()) / x.shape[0]
            logs["l1"] = float(penalty.detach())
    else:
        shift = d.b_dec if d.apply_b_dec_to_input else None
        with torch.no_grad():
            pre = torch.addmm(d.b_enc, x - shift if shift is not None else x, d.W_enc)
            vals, idx = pre.topk(d.k, dim=-1, sorted=False)
            plan = csr_plan(idx, d.d_sae)  # one index sort shared by the encoder and decoder gradients
        acts = F.relu(_SparseGatherLinear.apply(x, shift, d.W_enc, d.b_enc, idx, vals, plan))
        out = d._add_skip(_SparseDecode.apply(acts, idx, d.W_dec, plan) + d.b_dec, x)
        mse = (out - y).pow(2).sum(-1).mean()
        loss = mse
        fired = torch.zeros(d.d_sae, dtype=torch.bool).index_fill_(0, idx[acts > 0], True)
        if log:
            logs["l0"] = float((acts > 0).sum()) / x.shape[0]
        n_dead = int(dead.sum())
        if n_dead and auxk_coef > 0:
            k_aux = min(max(1, d.d_in // 2), n_dead)
            with torch.no_grad():
                a_vals, a_idx = pre.masked_fill_(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
                a_plan = csr_plan(a_idx, d.d_sae)
            a_acts = F.relu(_SparseGatherLinear.apply(x, shift, d.W_enc, d.b_enc, a_idx, a_vals, a_plan))
            resid = (y - out).detach()
            e_hat = _SparseDecode.apply(a_acts, a_idx, d.W_dec, a_plan)
            aux = (e_hat - resid).pow(2).sum(-1).mean() / resid.sub(resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + auxk_coef * torch.nan_to_num(aux, 0.0)
            if log:
                logs["auxk"] = float(aux.detach())
    if log:
        logs["mse"] = float(mse.detach())
    return loss, logs, fired


def _save(workdir: Path, step: int, position: tuple[int, int], dicts, optims, since, history, cfg_json) -> None:
    root = workdir / "resume"
    with atomic_dir(step_dir(root, step), overwrite=True) as tmp:
        for i, (label, d) in enumerate(dicts.items()):
            save_file({n: p.detach().clone().contiguous() for n, p in d.named_parameters()}, str(tmp / f"d{i}.safetensors"))
            tensors, meta = _optim_to_tensors(optims[label])
            tensors["since"] = since[label].clone()
            save_file(tensors, str(tmp / f"o{i}.safetensors"))
        write_json(tmp / "state.json", {"step": step, "block": position[0], "batch": position[1], "history": history,
                                         "labels": list(dicts), "config": cfg_json,
                                         "optim": {lab: _optim_to_tensors(o)[1] for lab, o in optims.items()}})
    for old in saved_steps(root):
        if old != step:
            shutil.rmtree(step_dir(root, old), ignore_errors=True)


def _load(workdir: Path, dicts, optims, since) -> tuple[int, int, int, list[dict]] | None:
    root = workdir / "resume"
    clean_stale_tmp(root)
    steps = saved_steps(root)
    if not steps:
        return None
    folder = step_dir(root, steps[-1])
    state = json.loads((folder / "state.json").read_text())
    if state["labels"] != list(dicts):
        raise ValueError(f"{folder}: the checkpoint holds {state['labels']}, this run trains {list(dicts)}")
    for i, (label, d) in enumerate(dicts.items()):
        weights = load_file(str(folder / f"d{i}.safetensors"))
        with torch.no_grad():
            for n, p in d.named_parameters():
                p.copy_(weights[n])
        tensors = load_file(str(folder / f"o{i}.safetensors"))
        since[label] = tensors.pop("since")
        optims[label].load_state_dict(_optim_from_tensors(tensors, state["optim"][label]))
    return int(state["step"]), int(state["block"]), int(state["batch"]), list(state["history"])


def train_dictionaries(
    model, source: TokenSource, specs: Sequence[DictSpec], cfg: TrainDictConfig, *, workdir: Path | str | None = None,
    progress: bool = True, device: str | None = None, stop_after: int | None = None, buffer=None,
) -> TrainResult:
    """Train one dictionary per spec on activations harvested from ``model`` over ``source`` (one pass for all).

    ``buffer``: instead of ``model`` and ``source``, any object with ``blocks(start_block)`` and ``widths()`` such as
    :class:`circuits.dictionaries.buffer.TensorBuffer` (activations already in memory).
    ``stop_after`` ends the call after that many steps in total (used to test resumption); the run then continues
    from ``workdir`` when called again. Returns :class:`TrainResult` (dictionaries on the CPU, in eval form).
    """
    specs = list(specs)
    dicts = build_dictionaries(model, specs, seed=cfg.seed, widths=buffer.widths() if buffer is not None else None)
    spec_of = dict(zip(dicts, specs, strict=True))
    optims = {lab: torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=cfg.betas) for lab, d in dicts.items()}
    since = {lab: torch.zeros(d.d_sae, dtype=torch.long) for lab, d in dicts.items()}
    hooks = sorted({d.hook_in for d in dicts.values()} | {d.hook_out for d in dicts.values()})
    if buffer is None:
        buffer = ActivationBuffer(model, source, hooks, block_batches=cfg.block_batches, batch_size=cfg.batch_size,
                                  seed=cfg.seed, spill_dir=cfg.spill_dir, device=device)
    step, start_block, start_batch, history = 0, 0, 0, []
    workdir = Path(workdir) if workdir is not None else None
    if workdir is not None:
        loaded = _load(workdir, dicts, optims, since)
        if loaded:
            step, start_block, start_batch, history = loaded
    total, dead_after, t0 = cfg.steps, cfg.dead_after(), time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="train-dict", unit="step", disable=not progress)
    cfg_json = asdict(cfg)
    for block in buffer.blocks(start_block) if step < total else ():
        if step == 0 and start_batch == 0:
            for d in dicts.values():
                init_from_data(d, block.rows[d.hook_in], block.rows[d.hook_out])
        for i in range(start_batch, block.n_batches):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            batch = block.batch(i)
            row = {"step": step}
            log = step % cfg.log_every == 0 or step == total - 1
            for lab, d in dicts.items():
                for group in optims[lab].param_groups:
                    group["lr"] = cfg.lr_at(step)
                loss, logs, fired = _step_losses(d, batch[d.hook_in], batch[d.hook_out], spec_of[lab],
                                                 since[lab] >= dead_after, cfg.auxk_coef, log=log)
                optims[lab].zero_grad(set_to_none=True)
                loss.backward()
                if d.activation == "topk":
                    d.remove_parallel_gradient()
                optims[lab].step()
                if d.activation == "topk":
                    with torch.no_grad():
                        d.W_dec.div_(d.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
                since[lab] += cfg.batch_size
                since[lab].masked_fill_(fired, 0)
                if log:
                    row[lab] = {**logs, "dead": int((since[lab] >= dead_after).sum())}
            if len(row) > 1:
                history.append(row)
            step += 1
            bar.update(1)
            if workdir is not None and (step % cfg.checkpoint_every == 0 or step == total):
                nxt = (block.index, i + 1) if i + 1 < block.n_batches else (block.index + 1, 0)
                _save(workdir, step, nxt, dicts, optims, since, history, cfg_json)
        start_batch = 0
        if step >= total or (stop_after is not None and step >= stop_after):
            break
    bar.close()
    if step >= total or stop_after is None:
        for d in dicts.values():
            if d.activation == "relu":
                d.normalize_decoder()
    for d in dicts.values():
        d.requires_grad_(False)
        d.eval()
    return TrainResult(dictionaries=dicts, history=history, steps=step, tokens=step * cfg.batch_size,
                       seconds=time.perf_counter() - t0)
