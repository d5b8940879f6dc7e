"""The whole path-ensemble analysis of one input in one call, and its run in the store (kind ``paths``).

:func:`analyse_paths` freezes the clean run, splits the logits by path length, scores the target per length against
the binomial path count, takes the direct (length-1) attribution, searches the top individual paths, fits per-length
weights, and runs the lesion studies. :data:`circuits.paths.analysis.PATHS` stores it as one run:

- table ``lengths``: length (label), n_paths (``C(n, k)``), target (contribution to the target), target_per_path,
  cumulative_target, logit_norm (mean centred logit-vector norm), share (|target| share), norm_share (effective
  path-length distribution), cumulative_loss (loss with the paths up to that length), loss_delta, weight (fitted),
  and for a task cumulative_metric (the task's metric with the paths up to that length);
- table ``direct``: component, kind, layer, head, score; table ``top_paths``: rank, path, source, length, score,
  virtual_heads; json ``circuit``: the top paths as a :class:`~workbench.circuit.Circuit`;
- tables ``lesion_single`` (sublayer, name, kind, layer, loss, delta, frozen_loss) and ``lesion_random`` (k, draw,
  deleted, loss, frozen_loss), when lesions were run; summary: the headline numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from circuits.paths.decompose import LogitTarget, decompose
from circuits.paths.frozen import PathInputError, freeze, validate_tokens
from circuits.paths.lesion import lesion_curve, lesion_random, lesion_single
from circuits.paths.reweight import fit_length_weights
from circuits.paths.search import direct_attribution, paths_circuit, top_paths
from workbench.circuit import Circuit

__all__ = ["PathsResult", "analyse_paths"]


@dataclass
class PathsResult:
    """Tables of one path-ensemble analysis (see the module docstring for their columns)."""

    lengths: pd.DataFrame
    direct: pd.DataFrame
    top_paths: pd.DataFrame
    circuit: Circuit
    summary: dict[str, Any]
    params: dict[str, Any]
    lesion_single: pd.DataFrame | None = None
    lesion_random: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _lengths_table(dec: Any, target: LogitTarget, weights: torch.Tensor, stats: dict[str, Any]) -> pd.DataFrame:
    tc = dec.target_contributions(target).double().cpu()
    norms = stats["logit_norm"].double().cpu()
    losses = stats["cumulative_loss"].double().cpu()
    counts = torch.tensor(dec.counts, dtype=torch.float64)
    return pd.DataFrame({
        "length": dec.labels, "n_paths": dec.counts, "target": tc.numpy(),
        "target_per_path": (tc / counts.clamp_min(1)).numpy(), "cumulative_target": tc.cumsum(0).numpy(),
        "logit_norm": norms.numpy(), "share": (tc.abs() / tc.abs().sum()).numpy(),
        "norm_share": (norms / norms.sum()).numpy(), "cumulative_loss": losses.numpy(),
        "loss_delta": torch.cat([losses[:1], losses.diff()]).numpy(), "weight": weights.double().cpu().numpy(),
    })


def analyse_paths(
    model: Any,
    prompt: str | list[str] | torch.Tensor | None = None,
    *,
    task: Any = None,
    max_length: int | None = None,
    search_length: int = 3,
    beam: int = 8,
    top: int = 20,
    lesion_draws: int = 2,
    lesion_step: int = 1,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
    progress: bool = False,
) -> PathsResult:
    """Analyse ``model`` on a prompt (target: the clean top prediction at the last position) or on a task (target: the
    logit difference correct - incorrect at the answer positions).

    prompt: text, texts or ids [batch, pos]; task: a :class:`workbench.data.Task`. max_length: keep lengths up to it
    apart (>= 1; default all). search_length / beam / top: the path search. lesion_draws: random-lesion draws per
    ``k`` (0: no lesion studies); lesion_step: delete k = step, 2 step, ..., n sublayers. dtype: of the decomposition (float64 by default, see :func:`decompose`).
    """
    if (prompt is None) == (task is None):
        raise PathInputError("give either a prompt or a task (not both)")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise PathInputError(f"max length must be an integer >= 1, got {max_length!r}")
    if lesion_draws < 0 or lesion_step < 1:
        raise PathInputError(f"lesion draws must be >= 0 and the lesion step >= 1, got {lesion_draws}, {lesion_step}")
    tokens = validate_tokens(model, task.clean_tokens if task is not None else prompt)
    frozen = freeze(model, tokens)
    target = LogitTarget.from_task(task) if task is not None else LogitTarget.top_prediction(frozen.clean_logits)
    dec = decompose(frozen, max_length=max_length, dtype=dtype, progress=progress)
    fit = fit_length_weights([dec], steps=25, l2=1e-3)
    stats = dec.length_stats()
    lengths = _lengths_table(dec, target, fit.weights, stats)
    if task is not None:  # the task's own metric with the paths up to each length (exact also when non-linear)
        lengths["cumulative_metric"] = dec.cumulative_metric(task.metric).double().cpu().numpy()
    direct = direct_attribution(frozen, target)
    found = top_paths(frozen, target, max_length=min(search_length, frozen.n), beam=beam, top=top, progress=progress)
    paths_df = pd.DataFrame([{"rank": r + 1, "path": p.label(), "source": p.source, "length": p.length, "score": p.score,
                              "virtual_heads": ",".join(p.virtual_heads)} for r, p in enumerate(found)])
    spec = getattr(model, "workbench_spec", None)
    tok = model.tokenizer
    target_tokens = [tok.decode([int(t)]) if tok is not None else str(int(t)) for t in target.token_ids[:, 0]]
    circuit = paths_circuit(found, metadata={"model": spec, "target": target_tokens[0], "n_sublayers": frozen.n})
    clean_loss = float(lengths["cumulative_loss"].iloc[-1])
    mid = torch.arange(len(dec.counts), dtype=torch.float64)
    summary: dict[str, Any] = {
        "n_sublayers": frozen.n, "n_tokens": int(tokens.numel()), "completeness_error": stats["completeness_error"],
        "clean_loss": clean_loss, "target": float(target.score_logits(frozen.clean_logits)),
        "target_token": target_tokens[0] if task is None else None,
        "target_kind": "logit of the top prediction" if task is None else "logit difference correct - incorrect",
        "effective_length": float((torch.tensor(lengths["norm_share"].to_numpy()) * mid).sum()),
        "direct_share": float(lengths["share"].iloc[1]) if len(lengths) > 1 else None,
        "reweighted_loss": fit.fit_loss, "top_path": found[0].label() if found else None,
        "max_reconstruction_error": max(frozen.reconstruction_errors()),
    }
    result = PathsResult(lengths, direct, paths_df, circuit, summary,
                         {"prompt": prompt if isinstance(prompt, (str, list)) else None,
                          "task": getattr(task, "name", None), "max_length": max_length, "search_length": search_length,
                          "beam": beam, "top": top, "lesion_draws": lesion_draws, "lesion_step": lesion_step,
                          "seed": seed})
    if lesion_draws:
        result.lesion_single = lesion_single(model, tokens, frozen=frozen, progress=progress)
        ks = sorted(set(range(lesion_step, frozen.n + 1, lesion_step)) | {frozen.n})
        result.lesion_random = lesion_random(model, tokens, ks=ks, draws=lesion_draws, seed=seed, frozen=frozen,
                                             progress=progress)
        curve = lesion_curve(result.lesion_random)
        summary["worst_single_lesion"] = str(result.lesion_single.loc[result.lesion_single["delta"].idxmax(), "name"])
        summary["lesion_half_loss"] = float(curve.loc[(curve["k"] - frozen.n // 2).abs().idxmin(), "mean"])
    return result
