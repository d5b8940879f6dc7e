"""Stored runs of the probes (kinds ``sparsity``, ``massive``, ``probe``) and their small demos.

Run artifacts:

- ``sparsity``: table ``layers`` (split, layer, n_tokens, fraction_nonzero, fraction_pre_positive, dead_neurons,
  dead_fraction); table ``tau`` (split, layer, tau, fraction); tensors ``neurons`` (``<split>.firing_frequency`` and
  ``<split>.nonzero_frequency`` [L, d_mlp], ``<split>.hist_counts`` [bins], ``<split>.hist_edges`` [bins + 1]);
  optionally table ``thresholds`` (:func:`probes.thresholds.performance_thresholds`) and ``topk``
  (:func:`probes.thresholds.topk_losses`).
- ``massive``: table ``layers`` (layer, top1, top2, top3, median, ratio, massive_count, massive_first,
  massive_rest, and for the three largest values seen: value_i, pos_i, dim_i, token_i, token_str_i);
  tensors ``stats`` (max_abs_first / max_abs_rest [L, d_model], max_abs [L, d_model], massive_first /
  massive_rest [L, d_model], means [L, d_model, 2], top_mean [L, 3], median_mean [L], layers [L]);
  table ``tokens`` (token_id, token, count: massive activations on non-first positions); json ``intervention``.
- ``probe``: table ``layers`` (layer, accuracy, accuracy_std, control_accuracy, control_std, majority).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from probes.linear import labelled_texts, probe_layers, residual_features
from probes.massive import MassiveStats, massive_intervention, measure_massive
from probes.sparsity import DEFAULT_TAUS, SparsityStats, check_budget, check_layers, corpus_sparsity
from probes.thresholds import performance_thresholds, topk_losses
from workbench.data import token_batches
from workbench.store import RunInfo, Store


def _model(model, device: str | None):
    from workbench.models import load_model

    return (load_model(model, device=device), model) if isinstance(model, str) else (model, getattr(model, "spec", None))


def sparsity_tables(results: dict[str, SparsityStats]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor]]:
    """The ``layers`` and ``tau`` tables and the ``neurons`` tensors of a sparsity run."""
    rows, taus, tensors = [], [], {}
    for split, s in results.items():
        dead = s.dead().sum(-1)
        for i, layer in enumerate(s.layers):
            rows.append(dict(split=split, layer=layer, n_tokens=s.n_tokens, fraction_nonzero=float(s.fraction_nonzero()[i]),
                             fraction_pre_positive=float(s.fraction_pre_positive()[i]), dead_neurons=int(dead[i]),
                             dead_fraction=float(dead[i]) / s.d_mlp))
            for j, tau in enumerate(s.taus):
                taus.append(dict(split=split, layer=layer, tau=tau, fraction=float(s.fraction_above()[i, j])))
        counts, edges = s.frequency_histogram()
        tensors.update({f"{split}.firing_frequency": s.firing_frequency().float(),
                        f"{split}.nonzero_frequency": (s.nonzero.double() / s.n_tokens).float(),
                        f"{split}.hist_counts": counts, f"{split}.hist_edges": edges})
    return pd.DataFrame(rows), pd.DataFrame(taus), tensors


def store_sparsity(store: Store, model, *, corpus: str = "wiki", max_tokens: int = 16_384, seq_len: int = 128,
                   batch_size: int = 8, layers: Sequence[int] | None = None, taus: Sequence[float] = DEFAULT_TAUS,
                   thresholds: bool = False, threshold_layers: Sequence[int] | None = None, calib_tokens: int = 1024,
                   eval_tokens: int = 1024, topk: Sequence[int] = (), max_rise: float = 0.01, device: str | None = None,
                   progress: bool = True) -> RunInfo:
    """Measure sparsity on the train and held-out splits of ``corpus`` (and optionally thresholds / top-k); store it."""
    check_budget(max_tokens, batch_size, seq_len)
    model, spec = _model(model, device)
    params = dict(corpus=corpus, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size,
                  layers=list(layers) if layers is not None else None, taus=list(taus), thresholds=thresholds,
                  threshold_layers=list(threshold_layers) if threshold_layers is not None else None,
                  calib_tokens=calib_tokens, eval_tokens=eval_tokens, topk=list(topk), max_rise=max_rise)
    results = corpus_sparsity(model, corpus, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size,
                              layers=layers, taus=taus, progress=progress)
    with store.create("sparsity", model=spec, params=params) as run:
        table, tau, tensors = sparsity_tables(results)
        run.save_table("layers", table)
        run.save_table("tau", tau)
        run.save_tensors("neurons", tensors)
        any_stats = next(iter(results.values()))
        run.summary.update(activation=any_stats.activation, layers=len(any_stats.layers), d_mlp=any_stats.d_mlp)
        for split, s in results.items():
            run.summary[f"fraction_nonzero_{split}"] = s.overall_nonzero()
            run.summary[f"fraction_pre_positive_{split}"] = float(s.fraction_pre_positive().mean())
            run.summary[f"dead_neurons_{split}"] = int(s.dead().sum())
            run.summary[f"tokens_{split}"] = s.n_tokens
        if thresholds or topk:
            held = list(token_batches(corpus, model.tokenizer, seq_len=seq_len, batch_size=batch_size,
                                      split="heldout", max_tokens=eval_tokens, seed=1))
            if thresholds:
                calib = token_batches(corpus, model.tokenizer, seq_len=seq_len, batch_size=batch_size, split="train",
                                      max_tokens=calib_tokens, seed=1)
                thr = performance_thresholds(model, calib, held, layers=threshold_layers, calib_tokens=calib_tokens,
                                             max_rise=max_rise, progress=progress)
                run.save_table("thresholds", thr)
                for method, d in thr[thr.layer >= 0].groupby("method"):
                    run.summary[f"threshold_active_{method}"] = float(d.active_fraction.mean())
                both = thr[thr.layer < 0].set_index("method")
                run.summary.update({f"all_layers_rise_{m}": float(both.loc[m, "rise"]) for m in both.index})
            if topk:
                run.save_table("topk", topk_losses(model, held, topk, layers=layers, progress=progress))
    return run.info


def massive_tables(stats: MassiveStats, tokenizer) -> tuple[pd.DataFrame, dict[str, torch.Tensor], pd.DataFrame]:
    """The ``layers`` table, ``stats`` tensors and ``tokens`` table of a massive run."""
    ratio, counts = stats.ratio(), stats.massive_counts()
    rows = []
    for i, layer in enumerate(stats.layers):
        row = dict(layer=layer, top1=float(stats.top_mean[i, 0]), top2=float(stats.top_mean[i, 1]),
                   top3=float(stats.top_mean[i, 2]), median=float(stats.median_mean[i]), ratio=float(ratio[i]),
                   massive_count=int(counts[i]), massive_first=int(stats.massive_first[i].sum()),
                   massive_rest=int(stats.massive_rest[i].sum()))
        for k in range(3):
            token = int(stats.record_token[i, k])
            row.update({f"value_{k + 1}": float(stats.record_value[i, k]), f"pos_{k + 1}": int(stats.record_pos[i, k]),
                        f"dim_{k + 1}": int(stats.record_dim[i, k]), f"token_{k + 1}": token,
                        f"token_str_{k + 1}": tokenizer.decode([token]) if token >= 0 else ""})
        rows.append(row)
    tensors = dict(max_abs_first=stats.max_abs_first, max_abs_rest=stats.max_abs_rest,
                   max_abs=torch.maximum(stats.max_abs_first, stats.max_abs_rest), massive_first=stats.massive_first,
                   massive_rest=stats.massive_rest, means=stats.means().float(), top_mean=stats.top_mean,
                   median_mean=stats.median_mean, layers=torch.tensor(stats.layers))
    toks = sorted(stats.token_counts.items(), key=lambda kv: -kv[1])
    tokens = pd.DataFrame([dict(token_id=t, token=tokenizer.decode([t]), count=c) for t, c in toks],
                          columns=["token_id", "token", "count"])
    return pd.DataFrame(rows), tensors, tokens


def store_massive(store: Store, model, *, corpus: str = "wiki", max_tokens: int = 2048, seq_len: int = 128,
                  batch_size: int = 4, layers: Sequence[int] | None = None, abs_threshold: float = 100.0,
                  ratio_threshold: float = 1000.0, intervene: bool = True, eval_tokens: int = 1024,
                  intervention_layers: Sequence[int] | None = None, device: str | None = None,
                  progress: bool = True) -> RunInfo:
    """Massive-activation statistics on the train split of ``corpus``, the intervention on held-out text; stored."""
    check_budget(max_tokens, batch_size, seq_len)
    model, spec = _model(model, device)
    layers = check_layers(model, layers)
    batches = token_batches(corpus, model.tokenizer, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
    stats = measure_massive(model, batches, layers=layers, abs_threshold=abs_threshold,
                            ratio_threshold=ratio_threshold, max_tokens=max_tokens, progress=progress)
    result = None
    if intervene:
        held = list(token_batches(corpus, model.tokenizer, seq_len=seq_len, batch_size=batch_size, split="heldout",
                                  max_tokens=eval_tokens))
        if intervention_layers is not None or stats.massive_layers():
            result = massive_intervention(model, stats, held, layers=intervention_layers)
    params = dict(corpus=corpus, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size, layers=layers,
                  abs_threshold=abs_threshold, ratio_threshold=ratio_threshold, intervene=intervene,
                  eval_tokens=eval_tokens, intervention_layers=intervention_layers)
    with store.create("massive", model=spec, params=params) as run:
        table, tensors, tokens = massive_tables(stats, model.tokenizer)
        run.save_table("layers", table)
        run.save_tensors("stats", tensors)
        run.save_table("tokens", tokens)
        top = table.loc[table.top1.idxmax()]
        run.summary.update(n_seqs=stats.n_seqs, n_tokens=stats.n_tokens, max_ratio=float(table.ratio.max()),
                           max_value=float(top.value_1), max_layer=int(top.layer), max_dim=int(top.dim_1),
                           max_pos=int(top.pos_1), max_token=str(top.token_str_1),
                           massive_layers=stats.massive_layers(), massive_dims=stats.massive_dims()[:5])
        if result is not None:
            run.save_json("intervention", result)
            run.summary.update({k: v for k, v in result.items() if k.startswith("loss_")})
    return run.info


def store_probe(store: Store, model, *, corpus: str = "tweets", n: int = 400, pool: str = "last", folds: int = 5,
                seed: int = 0, max_tokens: int = 64, batch_size: int = 16, device: str | None = None,
                progress: bool = True) -> RunInfo:
    """Linear probes for the labels of ``n`` texts of ``corpus`` at every layer (and a shuffled control); stored."""
    model, spec = _model(model, device)
    texts, labels = labelled_texts(corpus, n, seed=seed)
    feats = residual_features(model, texts, pool=pool, batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    result = probe_layers(feats, labels, folds=folds, seed=seed, progress=progress)
    params = dict(corpus=corpus, n=n, pool=pool, folds=folds, seed=seed, max_tokens=max_tokens)
    with store.create("probe", model=spec, params=params) as run:
        run.save_table("layers", result.table)
        best = result.best()
        run.summary.update(n=result.n, best_layer=int(best["layer"]), best_accuracy=float(best["accuracy"]),
                           control_at_best=float(best["control_accuracy"]), majority=float(best["majority"]),
                           max_control=float(result.table.control_accuracy.max()))
    return run.info


def sparsity_demo(store: Store, device: str | None, progress: bool) -> RunInfo:
    """Sparsity of SmolLM2 on 2k wiki tokens per split, with top-k losses (about a minute on two cores)."""
    return store_sparsity(store, "smollm2-135m", max_tokens=2048, seq_len=128, batch_size=8, topk=(64, 384),
                          eval_tokens=512, device=device, progress=progress)


def massive_demo(store: Store, device: str | None, progress: bool) -> RunInfo:
    """Massive activations of SmolLM2 on 8 wiki sequences of 64 tokens, with the intervention on 4 held-out ones."""
    return store_massive(store, "smollm2-135m", max_tokens=512, seq_len=64, batch_size=4, eval_tokens=256,
                         device=device, progress=progress)


def probe_demo(store: Store, device: str | None, progress: bool) -> RunInfo:
    """Tweet-sentiment probes on SmolLM2's residual stream, 120 tweets, 3 folds."""
    return store_probe(store, "smollm2-135m", n=120, folds=3, max_tokens=40, device=device, progress=progress)
