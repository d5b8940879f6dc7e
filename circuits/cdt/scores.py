"""CD-T scores: the relevance of sources (heads, MLPs, inputs, at positions) to a task's metric or to later components.

Relevance to the output is the beta part of the metric, ``m(total) - m(gamma)`` averaged over the task's examples (for a
logit difference this is the logit difference of ``beta`` itself); positive means the source pushes the metric up relative
to its mean (or zero) value. Relevance to target components ``t`` is ``mean|beta_t| / (mean|beta_t| + mean|gamma_t|)``,
averaged over the targets that come after the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuits.cdt.clean import FullCache, full_forward
from circuits.cdt.decompose import CleanCache, Means, decompose, reference_means
from circuits.cdt.nodes import CDTInputError, Node, check_order, parse_nodes
from circuits.cdt.rules import Rules
from circuits.cdt.weights import Weights, model_weights
from workbench.data.task_base import Task

__all__ = ["Context", "Scores", "check_task", "decompose_sources", "head_scores", "prepare"]


def check_task(model, task: Task) -> None:
    """CDTInputError when the task does not fit the model: token ids beyond its vocabulary or rows beyond its context."""
    vocab = int(model.cfg.d_vocab)
    named = {"clean_tokens": task.clean_tokens, "corrupted_tokens": task.corrupted_tokens, "correct": task.correct,
             "incorrect": task.incorrect}
    if task.candidate_tokens is not None:
        named["candidate_tokens"] = task.candidate_tokens
    for name, ids in named.items():
        if ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < 0):
            raise CDTInputError(
                f"task {task.name!r}: {name} holds token id {int(ids.max())} but the model's vocabulary has ids "
                f"0..{vocab - 1}; build the task with this model's tokenizer"
            )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and task.seq_len > n_ctx:
        raise CDTInputError(f"task {task.name!r} has rows of {task.seq_len} tokens; the model's context is {n_ctx}")


@dataclass
class Context:
    """Everything a decomposition starts from: weights in the working dtype, the clean cache, the ablation means."""

    weights: Weights
    task: Task
    cache: CleanCache
    means: Means
    ablation: str
    _full: FullCache | None = None

    @property
    def full(self) -> FullCache:
        """The clean run node by node (:func:`circuits.cdt.clean.full_forward`), computed once on first use."""
        if self._full is None:
            self._full = full_forward(self.weights, self.cache.tokens)
        return self._full

    @property
    def sizes(self) -> dict[str, int]:
        return {"n_layers": self.weights.n_layers, "n_heads": self.weights.n_heads, "seq_len": self.task.seq_len}


def prepare(model, task: Task, *, ablation: str = "mean", dtype: torch.dtype | None = None) -> Context:
    """Check the task, take the weights (``dtype``: default the model's; float64 for exact checks) and run the clean and
    reference passes once, so that many decompositions can share them."""
    if ablation not in ("mean", "zero"):
        raise CDTInputError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    check_task(model, task)
    w = model_weights(model, dtype)
    task = task.to(w.W_E.device)
    full = full_forward(w, task.clean_tokens)
    means = reference_means(w, task.corrupted_tokens, task.seq_len, ablation)
    return Context(w, task, full.clean_cache(), means, ablation, full)


@dataclass
class Scores:
    """Scores of S sources. metric: [S] beta part of the metric (mean over examples); metric_per_example: [S, B];
    target_relevance: [S, n_targets] (NaN where a target does not come after the source); clean_metric: mean clean metric."""

    sources: list[str]
    targets: list[str]
    metric: torch.Tensor
    metric_per_example: torch.Tensor
    target_relevance: torch.Tensor
    clean_metric: float
    rules: dict = field(default_factory=dict)

    def relevance(self) -> torch.Tensor:
        """[S] the score a ranking uses: the metric part when the target is the output, else the mean target relevance."""
        if not self.targets:
            return self.metric
        return self.target_relevance.nan_to_num(0.0).sum(1) / (~self.target_relevance.isnan()).sum(1).clamp_min(1)

    def to_frame(self):
        """A pandas table: one row per source (``source``, ``metric_beta``, ``relevance``, one column per target)."""
        import pandas as pd

        df = pd.DataFrame({"source": self.sources, "metric_beta": self.metric.double().cpu().numpy(),
                           "relevance": self.relevance().double().cpu().numpy()})
        for j, t in enumerate(self.targets):
            df[f"relevance:{t}"] = self.target_relevance[:, j].double().cpu().numpy()
        return df


def decompose_sources(model_or_context, task: Task | None = None, sources=(), *, targets=("logit",),
                      ablation: str = "mean", dtype: torch.dtype | None = None, chunk_rows: int = 256,
                      progress: bool = False, strict_order: bool = True, **rule_options) -> Scores:
    """Decompose ``sources`` (ids like ``L1.H0@5``, ``mlp0``, ``emb@2-4``) against ``targets`` (``"logit"``, the task
    metric, and/or later components) in batched passes.

    The first argument is a model (then ``task`` is required) or a :class:`Context` from :func:`prepare`. With
    ``strict_order`` a source that does not come before every target is an error; without it such pairs are NaN.
    """
    ctx = model_or_context if isinstance(model_or_context, Context) else prepare(
        model_or_context, task, ablation=ablation, dtype=dtype)
    rules = Rules.from_options(**rule_options)
    src = parse_nodes(sources, what="sources", **ctx.sizes)
    tgt = parse_nodes(targets, what="targets", **ctx.sizes)
    if strict_order:
        check_order(src, tgt)
    components = [t for t in tgt if t.kind != "logit"]
    d = decompose(ctx.weights, ctx.task, ctx.cache, ctx.means, src, targets=components, rules=rules,
                  chunk_rows=chunk_rows, progress=progress, full=ctx.full)
    return Scores(
        sources=[s.id for s in src], targets=[t.id for t in components], metric=d.metric_beta.mean(1),
        metric_per_example=d.metric_beta, target_relevance=d.target_relevance(),
        clean_metric=float(d.metric_total.mean()) if d.metric_total is not None else float("nan"),
        rules=rules.to_dict(),
    )


def head_nodes(n_layers: int, n_heads: int, seq_len: int, *, per_position: bool, layers=None) -> list[Node]:
    """Every head (at every position when ``per_position``), layer-major: L0.H0@0, L0.H0@1, ..."""
    layers = range(n_layers) if layers is None else layers
    if per_position:
        return [Node("head", layer, h, position=p) for layer in layers for h in range(n_heads) for p in range(seq_len)]
    return [Node("head", layer, h) for layer in layers for h in range(n_heads)]


def head_scores(model, task: Task, *, per_position: bool = False, ablation: str = "mean",
                dtype: torch.dtype | None = None, chunk_rows: int = 256, progress: bool = False,
                **rule_options) -> torch.Tensor:
    """Relevance of each head to the task metric: the beta part of the metric, mean over examples.

    Returns [L, H] (each head over all positions) or, with ``per_position``, [L, H, T] (each head at each position).
    One batched pass per layer (chunked by ``chunk_rows`` rows = sources x examples), starting from the clean cache just
    before that layer. ``rule_options``: see :class:`circuits.cdt.rules.Rules`.
    """
    if isinstance(model, Context):
        ctx = model
    else:
        if ablation not in ("mean", "zero"):
            raise CDTInputError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
        ctx = prepare(model, task, ablation=ablation, dtype=dtype)
    w = ctx.weights
    nodes = head_nodes(w.n_layers, w.n_heads, ctx.task.seq_len, per_position=per_position)
    scores = decompose_sources(ctx, sources=nodes, chunk_rows=chunk_rows, progress=progress, **rule_options)
    shape = (w.n_layers, w.n_heads, ctx.task.seq_len) if per_position else (w.n_layers, w.n_heads)
    return scores.metric.view(shape)
