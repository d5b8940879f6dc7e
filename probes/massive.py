"""Massive activations in the residual stream (Sun et al. 2024), streamed, and the intervention test.

:class:`MassiveCounter` (a :func:`workbench.harvest.harvest` consumer on ``blocks.L.hook_resid_post``) reads each
sequence's ``|h|`` [positions, d_model] per layer and keeps, with memory independent of the token count:

- per layer, the sums over sequences of the top-1/2/3 ``|h|`` and of the median ``|h|`` (so their means over
  sequences, as the paper reports), and the largest top-3 values seen with their (sequence, position, dimension,
  token);
- a layer x dimension matrix of max ``|h|``, split into the first position and the others;
- massive activations: entries with ``|a| > abs_threshold`` (default 100) and ``|a| / median > ratio_threshold``
  (default 1000), the median being that sequence's median ``|h|`` at that layer: counts per layer and dimension,
  on the first position and elsewhere, per token id, and the sums of their signed values (for mean-setting).

:func:`massive_intervention` runs the paper's test on held-out text: next-token loss with the massive activations
(detected live by the same rule, at the chosen layers) set to zero, set to their mean value (per layer,
dimension, and first position versus other positions), and, as a control, an equal number of random other
entries of the same sequence set to zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from probes.sparsity import check_layers
from probes.thresholds import _tensors, next_token_loss_sum
from workbench.harvest import check_hooks, harvest

RESID = "blocks.{layer}.hook_resid_post"
MODES = ("clean", "zero", "mean", "random")


@dataclass
class MassiveStats:
    """Residual-stream magnitude statistics over ``n_seqs`` sequences for ``layers`` (L of them).

    top_mean [L, 3], median_mean [L]: means over sequences of the top-1/2/3 and median |h|.
    record_value [L, 3], record_seq / record_pos / record_dim / record_token [L, 3] (long): the largest |h| seen.
    max_abs_first / max_abs_rest [L, d_model]: max |h| on position 0 / on the other positions.
    massive_first / massive_rest [L, d_model] (long): massive-activation counts on position 0 / elsewhere.
    massive_sum [L, d_model, 2]: sums of signed massive values ([..., 0] position 0, [..., 1] the others).
    token_counts: {token id: massive activations on that token, at positions > 0, over all layers}.
    """

    layers: list[int]
    n_seqs: int
    n_tokens: int
    abs_threshold: float
    ratio_threshold: float
    top_mean: torch.Tensor
    median_mean: torch.Tensor
    record_value: torch.Tensor
    record_seq: torch.Tensor
    record_pos: torch.Tensor
    record_dim: torch.Tensor
    record_token: torch.Tensor
    max_abs_first: torch.Tensor
    max_abs_rest: torch.Tensor
    massive_first: torch.Tensor
    massive_rest: torch.Tensor
    massive_sum: torch.Tensor
    token_counts: dict[int, int] = field(default_factory=dict)

    def ratio(self) -> torch.Tensor:
        """[L] mean top-1 |h| / mean median |h|."""
        return self.top_mean[:, 0] / self.median_mean.clamp_min(1e-12)

    def massive_counts(self) -> torch.Tensor:
        """[L] number of massive activations per layer."""
        return (self.massive_first + self.massive_rest).sum(-1)

    def massive_layers(self) -> list[int]:
        """Layers (model indices) where at least one massive activation was found."""
        return [layer for layer, n in zip(self.layers, self.massive_counts().tolist(), strict=False) if n > 0]

    def massive_dims(self) -> list[int]:
        """Dimensions holding massive activations in any layer, most frequent first."""
        per_dim = (self.massive_first + self.massive_rest).sum(0)
        order = per_dim.argsort(descending=True)
        return [int(d) for d in order if per_dim[d] > 0]

    def means(self) -> torch.Tensor:
        """[L, d_model, 2] mean signed massive value per layer, dimension, (first position, others); NaN where none."""
        counts = torch.stack([self.massive_first, self.massive_rest], -1).double()
        return self.massive_sum / counts.where(counts > 0, torch.tensor(float("nan"), dtype=torch.float64))


def massive_mask(a: torch.Tensor, median: torch.Tensor, abs_threshold: float, ratio_threshold: float) -> torch.Tensor:
    """BoolTensor like ``a`` [..., d]: ``|a| > abs_threshold`` and ``|a| / median > ratio_threshold``."""
    mag = a.abs()
    return (mag > abs_threshold) & (mag > ratio_threshold * median)


def row_median(x: torch.Tensor) -> torch.Tensor:
    """[r]: the median of each row of ``x`` [r, m], the lower of the two middle values when m is even (as
    ``torch.median``). On the CPU a numpy selection, several times faster than ``torch.median``."""
    k = (x.shape[1] - 1) // 2
    if x.device.type != "cpu" or x.dtype != torch.float32 or bool(x.isnan().any()):
        return x.median(dim=1).values
    import numpy as np

    return torch.from_numpy(np.partition(x.detach().numpy(), k, axis=1)[:, k].copy())


class MassiveCounter:
    """Harvest consumer of ``blocks.L.hook_resid_post`` [batch, seq, d_model] keeping :class:`MassiveStats` sums."""

    def __init__(self, layers: Sequence[int], d_model: int, *, abs_threshold: float = 100.0,
                 ratio_threshold: float = 1000.0, hook: str = RESID):
        if abs_threshold < 0 or ratio_threshold < 0:
            raise ValueError(f"thresholds must be non-negative, got {abs_threshold}, {ratio_threshold}")
        self.layers = list(layers)
        self.abs_threshold, self.ratio_threshold = float(abs_threshold), float(ratio_threshold)
        self._index = {hook.format(layer=layer): i for i, layer in enumerate(self.layers)}
        self.hooks = list(self._index)
        n, d = len(self.layers), int(d_model)
        self.top_sum = torch.zeros(n, 3, dtype=torch.float64)
        self.median_sum = torch.zeros(n, dtype=torch.float64)
        self.record = torch.full((n, 3), -1.0, dtype=torch.float64)
        self.where = torch.full((n, 3, 4), -1, dtype=torch.long)  # seq, pos, dim, token
        self.max_first = torch.zeros(n, d)
        self.max_rest = torch.zeros(n, d)
        self.massive = torch.zeros(n, d, 2, dtype=torch.long)
        self.massive_sum = torch.zeros(n, d, 2, dtype=torch.float64)
        self.token_counts: Counter[int] = Counter()
        self.n_seqs = self.n_tokens = 0
        self._tokens: torch.Tensor | None = None
        self._seq_base = 0

    def set_tokens(self, tokens: torch.Tensor) -> None:
        """Token ids [batch, seq] of the batch about to run (for the token and sequence of each record)."""
        self._tokens = tokens.cpu()
        self._seq_base = self.n_seqs

    def consume(self, name: str, activation: torch.Tensor, mask: torch.Tensor) -> None:
        i = self._index[name]
        lengths = mask.sum(1)
        if i == 0:
            self.n_seqs += int((lengths > 0).sum())
            self.n_tokens += int(lengths.sum())
        full = lengths == activation.shape[1]
        if bool(full.all()):  # no padding: the whole batch in one pass, no copy
            self._rows(i, activation, torch.arange(activation.shape[0]))
            return
        if bool(full.any()):  # rows without padding: one batched pass
            self._rows(i, activation[full], full.nonzero().flatten())
        for b in ((~full) & (lengths > 0)).nonzero().flatten().tolist():
            self._rows(i, activation[b : b + 1, : int(lengths[b])], torch.tensor([b]))

    def _rows(self, i: int, act: torch.Tensor, rows: torch.Tensor) -> None:
        """Statistics of sequences ``act`` [r, n, d] (all real tokens), batch rows ``rows`` (LongTensor [r])."""
        a = act.float()
        mag = a.abs()
        r, n, d = mag.shape
        flat = mag.reshape(r, n * d)
        top = flat.topk(min(3, flat.shape[1]), dim=1)
        median = row_median(flat)  # [r]
        self.top_sum[i, : top.values.shape[1]] += top.values.double().sum(0).cpu()
        self.median_sum[i] += float(median.double().sum())
        self.max_first[i] = torch.maximum(self.max_first[i], mag[:, 0].amax(0).cpu())
        if n > 1:
            self.max_rest[i] = torch.maximum(self.max_rest[i], mag[:, 1:].amax((0, 1)).cpu())
        self._update_record(i, rows.tolist(), top.values, top.indices, d)
        # a row holds a massive activation only if its largest |h| passes both thresholds: test the rest on those rows
        peak = top.values[:, 0]
        maybe = ((peak > self.abs_threshold) & (peak > self.ratio_threshold * median)).nonzero().flatten()
        if maybe.numel():
            sel = a[maybe]
            self._add_massive(i, rows[maybe.cpu()], sel, massive_mask(sel, median[maybe, None, None], self.abs_threshold,
                                                                      self.ratio_threshold))

    def _update_record(self, i: int, rows: list[int], values: torch.Tensor, indices: torch.Tensor, d: int) -> None:
        """Merge candidates values / flat indices [r, k] into the layer's three largest records."""
        cand = torch.cat([self.record[i], values.double().flatten().cpu()])
        keep = cand.argsort(descending=True)[:3]
        where = self.where[i].clone()
        k = values.shape[1]
        new = []
        for c in keep.tolist():
            if c < 3:
                new.append(where[c])
                continue
            j, idx = divmod(c - 3, k)
            flat = int(indices[j, idx])
            b = rows[j]
            new.append(torch.tensor([self._seq_base + b, flat // d, flat % d, self._token(b, flat // d)]))
        self.record[i], self.where[i] = cand[keep], torch.stack(new)

    def _token(self, b: int, pos: int) -> int:
        return int(self._tokens[b, pos]) if self._tokens is not None else -1

    def _add_massive(self, i: int, rows: torch.Tensor, a: torch.Tensor, hit: torch.Tensor) -> None:
        """Count and sum the massive entries ``hit`` of sequences ``a`` [s, n, d] (batch rows ``rows`` [s])."""
        first, rest = hit[:, 0], hit[:, 1:]
        self.massive[i, :, 0] += first.sum(0).cpu()
        self.massive_sum[i, :, 0] += (a[:, 0] * first).double().sum(0).cpu()
        self.massive[i, :, 1] += rest.sum((0, 1)).cpu()
        self.massive_sum[i, :, 1] += (a[:, 1:] * rest).double().sum((0, 1)).cpu()
        if self._tokens is not None:
            per_pos = rest.sum(-1).cpu()  # [s, n - 1] massive entries per (sequence, position > 0)
            j, pos = per_pos.nonzero(as_tuple=True)
            tokens = self._tokens[rows[j], pos + 1].tolist()
            for token, count in zip(tokens, per_pos[j, pos].tolist(), strict=True):
                self.token_counts[token] += count

    def stats(self) -> MassiveStats:
        """The sums so far as :class:`MassiveStats`."""
        if self.n_seqs == 0:
            raise ValueError("no sequence was read (empty corpus, or the hooks never fired)")
        return MassiveStats(
            self.layers, self.n_seqs, self.n_tokens, self.abs_threshold, self.ratio_threshold,
            (self.top_sum / self.n_seqs).float(), (self.median_sum / self.n_seqs).float(),
            self.record.float(), *(self.where[..., j].clone() for j in range(4)),
            self.max_first.clone(), self.max_rest.clone(), self.massive[..., 0].clone(), self.massive[..., 1].clone(),
            self.massive_sum.clone(), dict(self.token_counts),
        )


class _TokenFeeder:
    """Wraps batches so the counter learns each batch's token ids (and its sequence offset) before it runs."""

    def __init__(self, batches: Iterable, counter: MassiveCounter):
        self.batches, self.counter = batches, counter

    def __iter__(self):
        for batch in self.batches:
            tokens, _ = _tensors(batch)
            self.counter.set_tokens(tokens)
            yield batch


def measure_massive(model, batches: Iterable, *, layers: Iterable[int] | None = None, abs_threshold: float = 100.0,
                    ratio_threshold: float = 1000.0, max_tokens: int | None = None, progress: bool = True,
                    hook: str = RESID) -> MassiveStats:
    """Stream ``batches`` through ``model`` and collect :class:`MassiveStats` on the residual stream.

    ValueError for a layer or hook the model lacks, or when no batch arrives.
    """
    layers = check_layers(model, layers)
    counter = MassiveCounter(layers, model.cfg.d_model, abs_threshold=abs_threshold,
                             ratio_threshold=ratio_threshold, hook=hook)
    check_hooks(model, counter.hooks)
    harvest(model, _TokenFeeder(batches, counter), [counter], max_tokens=max_tokens, progress=progress)
    return counter.stats()


def massive_intervention(model, stats: MassiveStats, batches: Sequence, *, layers: Iterable[int] | None = None,
                         seed: int = 0, hook: str = RESID) -> dict[str, float]:
    """Held-out next-token loss for each mode of ``MODES`` and how many entries each intervention changed.

    layers: where to intervene (default: the layers where ``stats`` found massive activations). At each of them the
    entries flagged by :func:`massive_mask` (per sequence median, live activations) are set to zero ("zero"), to
    ``stats.means()`` ("mean"; the entry keeps its value where no mean was recorded), or, as a control, as many random
    unflagged entries of the same sequence are set to zero ("random").
    Returns {"loss_<mode>": float, "changed_<mode>": int, "layers": list}.
    """
    layers = check_layers(model, layers if layers is not None else stats.massive_layers() or None)
    missing = [layer for layer in layers if layer not in stats.layers]
    if missing:
        raise ValueError(f"layers {missing} were not measured in the stats (measured: {stats.layers})")
    check_hooks(model, [hook.format(layer=layer) for layer in layers])
    means = stats.means().float()
    row = {layer: stats.layers.index(layer) for layer in layers}
    device = str(getattr(model.cfg, "device", "cpu"))
    pairs = [tuple(t.to(device) for t in _tensors(b)) for b in batches]
    if not pairs:
        raise ValueError("no evaluation batch (empty held-out corpus?)")
    out: dict = {"layers": layers}
    for mode in MODES:
        gen = torch.Generator().manual_seed(seed)
        state = {"changed": 0}

        def edit(act, hook, mode=mode, gen=gen, state=state):
            layer = int(hook.name.split(".")[1])
            mean = means[row[layer]].to(act.device)  # [d, 2]
            act = act.clone()
            for b, n in enumerate(state["mask"].sum(1).tolist()):
                if n == 0:
                    continue
                a = act[b, : int(n)]
                hit = massive_mask(a, a.abs().float().flatten().median(), stats.abs_threshold, stats.ratio_threshold)
                count = int(hit.sum())
                if count == 0:
                    continue
                if mode == "zero":
                    a[hit] = 0
                elif mode == "mean":
                    fill = torch.cat([mean[None, :, 0], mean[None, :, 1].expand(a.shape[0] - 1, -1)]).to(a.dtype)
                    a[hit] = torch.where(fill.isnan(), a, fill)[hit]
                else:
                    free = (~hit).flatten().nonzero().flatten()
                    pick = free[torch.randperm(free.numel(), generator=gen)[:count].to(free.device)]
                    a.view(-1)[pick] = 0
                state["changed"] += count
            return act

        hooks = [] if mode == "clean" else [(hook.format(layer=layer), edit) for layer in layers]
        total, count = 0.0, 0
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            for tokens, mask in pairs:
                state["mask"] = mask
                s, n = next_token_loss_sum(model(tokens, return_type="logits"), tokens, mask)
                total, count = total + s, count + n
        out[f"loss_{mode}"] = total / count
        out[f"changed_{mode}"] = state["changed"]
    return out
