"""Activation sparsity of MLP neurons ("The Lazy Neuron Phenomenon", Li et al. 2023), streamed with bounded memory.

Per layer and per neuron, over any token budget, a :class:`SparsityCounter` (a :func:`workbench.harvest.harvest`
consumer) keeps integer counts only, never activations:

- ``nonzero``: tokens on which the MLP activation (``blocks.L.mlp.hook_post``) is exactly nonzero. For ReLU models
  this is the lazy-neuron metric: the mean over tokens of ``||a||_0 / d_mlp`` equals ``nonzero.sum() / (n * d_mlp)``.
- ``positive_pre``: tokens on which the pre-activation (``blocks.L.mlp.hook_pre``; the gate branch in gated MLPs)
  is > 0. A neuron *fires* on a token when its pre-activation is > 0; for ReLU that is exactly ``a != 0``.
- ``above_tau``: tokens with ``|a| > tau`` for each tau of a grid (GELU / SiLU / gated models have no exact zeros).

Memory: three integer tensors of ``[layers, (taus,) d_mlp]`` whatever the number of tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from workbench.data import token_batches
from workbench.harvest import check_hooks, harvest

DEFAULT_TAUS: tuple[float, ...] = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0)
POST = "blocks.{layer}.mlp.hook_post"
PRE = "blocks.{layer}.mlp.hook_pre"


def activation_kind(model) -> str:
    """``"relu"``, ``"gated-<act>"`` or the activation's name (e.g. ``"gelu_new"``), from the model's config."""
    act = str(getattr(model.cfg, "act_fn", "") or "unknown").lower()
    return f"gated-{act}" if getattr(model.cfg, "gated_mlp", False) else act


def check_layers(model, layers: Iterable[int] | None) -> list[int]:
    """The layer indices to read (all when None); ValueError naming the model's range for a bad one."""
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    out = [int(layer) for layer in layers]
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad or not out:
        raise ValueError(f"layers {bad or out} do not exist: the model has layers 0..{n - 1}")
    return out


def check_budget(max_tokens: int | None, batch_size: int, seq_len: int) -> None:
    """ValueError when a token budget is below one batch (``batch_size * seq_len`` tokens)."""
    if max_tokens is not None and max_tokens < batch_size * seq_len:
        raise ValueError(
            f"token budget {max_tokens} is below one batch ({batch_size} x {seq_len} = {batch_size * seq_len} tokens); "
            "raise max_tokens or lower batch_size / seq_len"
        )


@dataclass
class SparsityStats:
    """Counts over ``n_tokens`` real tokens for ``layers`` (L of them) and ``d_mlp`` neurons.

    nonzero, positive_pre: LongTensor [L, d_mlp]; above_tau: LongTensor [L, len(taus), d_mlp].
    """

    layers: list[int]
    taus: tuple[float, ...]
    n_tokens: int
    nonzero: torch.Tensor
    positive_pre: torch.Tensor
    above_tau: torch.Tensor
    activation: str = "unknown"
    extra: dict = field(default_factory=dict)

    @property
    def d_mlp(self) -> int:
        return int(self.nonzero.shape[-1])

    def _freq(self, counts: torch.Tensor) -> torch.Tensor:
        if self.n_tokens == 0:
            raise ValueError("no tokens were counted")
        return counts.double() / self.n_tokens

    def fraction_nonzero(self) -> torch.Tensor:
        """[L] mean over tokens of ``||a||_0 / d_mlp`` (exact)."""
        return self._freq(self.nonzero).mean(-1)

    def fraction_pre_positive(self) -> torch.Tensor:
        """[L] fraction of pre-activations > 0."""
        return self._freq(self.positive_pre).mean(-1)

    def fraction_above(self) -> torch.Tensor:
        """[L, len(taus)] fraction of activations with ``|a| > tau``."""
        return self._freq(self.above_tau).mean(-1)

    def firing_frequency(self) -> torch.Tensor:
        """[L, d_mlp] per neuron, the fraction of tokens on which its pre-activation is > 0."""
        return self._freq(self.positive_pre)

    def dead(self) -> torch.Tensor:
        """BoolTensor [L, d_mlp]: neurons that never fired (pre-activation never > 0) on the tokens seen."""
        return self.positive_pre == 0

    def overall_nonzero(self) -> float:
        """Fraction of nonzero activations over all layers read and all tokens."""
        return float(self.fraction_nonzero().mean())

    def frequency_histogram(self, bins: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
        """Histogram of log10 firing frequency over all neurons: (counts [bins], edges [bins + 1]).

        Dead neurons (frequency 0) are put in the first bin, at ``log10(1 / (n_tokens + 1))``.
        """
        freq = self.firing_frequency().flatten()
        floor = 1.0 / (self.n_tokens + 1)
        logf = torch.log10(freq.clamp_min(floor))
        edges = torch.linspace(float(torch.log10(torch.tensor(floor))), 0.0, bins + 1, dtype=torch.float64)
        counts = torch.histc(logf, bins=bins, min=float(edges[0]), max=0.0)
        return counts.long(), edges


def count_above(a: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """LongTensor [d]: per column of ``a`` [n, d], how many entries are > ``threshold`` (exact integer counts)."""
    return _column_count(a > threshold)


def count_nonzero(a: torch.Tensor) -> torch.Tensor:
    """LongTensor [d]: per column of ``a`` [n, d], how many entries are != 0."""
    return _column_count(a != 0)


def _column_count(hit: torch.Tensor) -> torch.Tensor:
    # summing bytes into int32 is several times faster than summing bools into int64; n < 2**31 rows per batch
    return hit.view(torch.uint8).sum(0, dtype=torch.int32).long()


class SparsityCounter:
    """Harvest consumer counting nonzero / positive-pre / above-tau MLP activations (real tokens only).

    Hooks: ``post.format(layer=L)`` and ``pre.format(layer=L)`` for every layer given. Activations [batch, seq, d_mlp].
    """

    def __init__(self, layers: Sequence[int], taus: Sequence[float] = DEFAULT_TAUS, *, post: str = POST, pre: str = PRE):
        if not layers:
            raise ValueError("SparsityCounter needs at least one layer")
        taus = tuple(float(t) for t in taus)
        if any(t < 0 for t in taus) or list(taus) != sorted(taus):
            raise ValueError(f"taus must be non-negative and increasing, got {taus}")
        self.layers = list(layers)
        self.taus = taus
        self._post = {post.format(layer=layer): i for i, layer in enumerate(self.layers)}
        self._pre = {pre.format(layer=layer): i for i, layer in enumerate(self.layers)}
        self.hooks = [*self._post, *self._pre]
        self.n_tokens = 0
        self._counts: dict[str, list[torch.Tensor | None]] = {
            k: [None] * len(self.layers) for k in ("nonzero", "positive_pre", "above_tau")
        }
        self._tau = torch.tensor(taus) if taus else None

    def _add(self, key: str, i: int, value: torch.Tensor) -> None:
        slot = self._counts[key]
        slot[i] = value if slot[i] is None else slot[i] + value

    @staticmethod
    def _real(activation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[n_real, d_mlp]: a view of ``activation`` when the batch has no padding, else a copy of the real rows."""
        if bool(mask.all()):
            return activation.reshape(-1, activation.shape[-1])
        return activation[mask.bool()]

    def consume(self, name: str, activation: torch.Tensor, mask: torch.Tensor) -> None:
        a = self._real(activation, mask)  # [n_real, d_mlp]
        if name in self._pre:
            self._add("positive_pre", self._pre[name], count_above(a, 0.0))
            return
        i = self._post[name]
        if i == 0:
            self.n_tokens += a.shape[0]
        self._add("nonzero", i, count_nonzero(a))
        if self._tau is not None:
            mag = a.abs()
            taus = self._tau.to(a.device, a.dtype)  # 0-d tensors: compared in the activations' dtype
            self._add("above_tau", i, torch.stack([count_above(mag, tau) for tau in taus]))  # [n_tau, d_mlp]

    def stats(self, activation: str = "unknown") -> SparsityStats:
        """The counts so far as :class:`SparsityStats` (on the CPU)."""
        if self.n_tokens == 0 or any(v is None for v in self._counts["nonzero"]):
            raise ValueError("no activations were counted (empty corpus, or the hooks never fired)")
        stack = {k: torch.stack([t.cpu() for t in v]) for k, v in self._counts.items() if k != "above_tau"}
        above = self._counts["above_tau"]
        above_t = (
            torch.stack([t.cpu() for t in above]) if self.taus
            else torch.zeros(len(self.layers), 0, stack["nonzero"].shape[-1], dtype=torch.long)
        )
        return SparsityStats(self.layers, self.taus, self.n_tokens, stack["nonzero"], stack["positive_pre"], above_t,
                             activation)


def measure_sparsity(
    model,
    batches: Iterable,
    *,
    layers: Iterable[int] | None = None,
    taus: Sequence[float] = DEFAULT_TAUS,
    max_tokens: int | None = None,
    post: str = POST,
    pre: str = PRE,
    progress: bool = True,
) -> SparsityStats:
    """Stream ``batches`` (TokenBatch or LongTensor [batch, seq]) through ``model`` and count MLP sparsity.

    ValueError for a layer or hook the model lacks, or when no batch arrives.
    """
    layers = check_layers(model, layers)
    counter = SparsityCounter(layers, taus, post=post, pre=pre)
    check_hooks(model, counter.hooks)
    harvest(model, batches, [counter], max_tokens=max_tokens, progress=progress)
    return counter.stats(activation_kind(model))


def corpus_sparsity(
    model,
    corpus: str | Sequence[str] = "wiki",
    *,
    splits: Sequence[str] = ("train", "heldout"),
    max_tokens: int = 16_384,
    seq_len: int = 128,
    batch_size: int = 8,
    layers: Iterable[int] | None = None,
    taus: Sequence[float] = DEFAULT_TAUS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, SparsityStats]:
    """Sparsity on each split of a corpus (``max_tokens`` per split): ``{split: SparsityStats}``.

    corpus: a corpus name (``workbench.data.CORPORA``) or a list of documents (then one split, ``"given"``).
    ValueError for a budget below one batch, an empty corpus, a bad layer or split.
    """
    check_budget(max_tokens, batch_size, seq_len)
    layers = check_layers(model, layers)
    if not isinstance(corpus, str):
        docs = list(corpus)
        if not any(isinstance(d, str) and d.strip() for d in docs):
            raise ValueError("the corpus is empty: no non-blank document was given")
        sources = {"given": docs}
    else:
        sources = {split: corpus for split in splits}
        if not sources:
            raise ValueError("no split given; accepted: train, heldout, all")
    out = {}
    for split, source in sources.items():
        batches = token_batches(source, model.tokenizer, seq_len=seq_len, batch_size=batch_size,
                                split=split if split != "given" else "train", max_tokens=max_tokens, seed=seed)
        out[split] = measure_sparsity(model, batches, layers=layers, taus=taus, max_tokens=max_tokens,
                                      progress=progress)
    return out
