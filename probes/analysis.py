"""The probes behind the analysis contract (:mod:`workbench.analysis`): ``sparsity``, ``massive`` and ``probe``.

Usage (notebook)::

    from probes.analysis import SPARSITY, MASSIVE, PROBE
    result = MASSIVE.run(model, MASSIVE.config(tokens=512, seq_len=64))
    result.tables["layers"]            # per-layer top-1/2/3, median, ratio, where the top values sit
    info = MASSIVE.save(Store(), result, model)
    MASSIVE.figures(Store().load("massive", info.run_id))["layers"].show()

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

Nothing heavy is imported until an analysis runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["MASSIVE", "PROBE", "SPARSITY", "MassiveConfig", "ProbeConfig", "SparsityConfig"]

# probes.sparsity.DEFAULT_TAUS (mirrored so that building the command line imports no torch; a test checks it)
DEFAULT_TAUS: list[float] = [0.001, 0.01, 0.03, 0.1, 0.3, 1.0]


@dataclass
class CorpusOptions(Config):
    """Where the activations come from: a bundled corpus, a token budget, rows and batches."""

    corpus: str = option("wiki", "corpus name (workbench.data.CORPORA)")
    tokens: int = option(16_384, "token budget per split", minimum=1)
    seq_len: int = option(128, "tokens per row, BOS included", minimum=2)
    batch_size: int = option(8, "rows per batch", minimum=1)
    layers: list[int] | None = option(None, "layers to read (default all)", minimum=0)
    eval_tokens: int = option(1024, "held-out tokens for losses", minimum=1)

    def validate(self) -> None:
        if self.tokens < self.batch_size * self.seq_len:
            raise ConfigError(f"--tokens {self.tokens} is below one batch (--batch-size {self.batch_size} x "
                              f"--seq-len {self.seq_len} = {self.batch_size * self.seq_len} tokens)")
        check_corpus_budget(self.corpus, self.seq_len, self.budgets())

    def budgets(self) -> list[tuple[str, int, str]]:
        """The token budgets to check against the corpus: ``(split, tokens, flag)``."""
        return [("train", self.tokens, "--tokens")]


def check_corpus_budget(corpus: str, seq_len: int, budgets: list[tuple[str, int, str]]) -> None:
    """ConfigError naming ``--corpus`` for an unknown corpus, or the budget's flag for a budget larger than the
    corpus's split holds (checked from its size in bytes, without tokenizing)."""
    from workbench.data.budget import check_corpus, check_token_budget

    try:
        check_corpus(corpus)
        for split, tokens, flag in budgets:
            check_token_budget(corpus, split, tokens, seq_len, flag)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def checked_layers(model: Any, layers: list[int] | None, flag: str) -> list[int] | None:
    """``layers`` checked against the model's (None stays None); ConfigError naming ``flag``."""
    from probes.sparsity import check_layers

    if layers is None:
        return None
    try:
        return check_layers(model, layers)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc


@dataclass
class SparsityConfig(CorpusOptions):
    """Options of ``workbench sparsity``."""

    taus: list[float] = option(DEFAULT_TAUS, "|a| > tau grid", minimum=0.0)
    thresholds: bool = option(False, "also search the performance-aware cutoffs (slow)")
    threshold_layers: list[int] | None = option(None, "layers for the cutoff search (default all)", minimum=0)
    calib_tokens: int = option(1024, "calibration tokens for the cutoffs", minimum=1)
    max_rise: float = option(0.01, "allowed relative loss rise of the cutoffs", minimum=0.0)
    topk: list[int] | None = option(None, "k values for the held-out loss versus top-k", minimum=1)

    def budgets(self) -> list[tuple[str, int, str]]:
        out = super().budgets()
        if self.thresholds or self.topk:
            out.append(("heldout", self.eval_tokens, "--eval-tokens"))
        if self.thresholds:
            out.append(("train", self.calib_tokens, "--calib-tokens"))
        return out


@dataclass
class MassiveConfig(CorpusOptions):
    """Options of ``workbench massive``."""

    tokens: int = option(2048, "token budget", minimum=1)
    batch_size: int = option(4, "rows per batch", minimum=1)
    abs_threshold: float = option(100.0, "massive when |a| > this", minimum=0.0, exclusive_minimum=True)
    ratio_threshold: float = option(1000.0, "and |a| / median > this", minimum=0.0, exclusive_minimum=True)
    intervention: bool = option(True, "run the zero / mean / random intervention on held-out text")
    intervention_layers: list[int] | None = option(
        None, "layers to intervene at (default: where massive activations were found)", minimum=0)

    def budgets(self) -> list[tuple[str, int, str]]:
        out = super().budgets()
        if self.intervention:
            out.append(("heldout", self.eval_tokens, "--eval-tokens"))
        return out


@dataclass
class ProbeConfig(Config):
    """Options of ``workbench probe``."""

    corpus: str = option("tweets", "labelled corpus (tweets or reviews)")
    n: int = option(400, "examples, class-balanced", minimum=4)
    pool: Literal["last", "mean"] = option("last", "token pooling")
    folds: int = option(5, "cross-validation folds", minimum=2)
    seed: int = option(0, "seed of the examples and folds", minimum=0)
    max_text_tokens: int = option(64, "tokens per text, BOS included", minimum=2)

    def validate(self) -> None:
        if self.folds > self.n // 2:
            raise ConfigError(f"--folds {self.folds} needs at least {2 * self.folds} examples (--n {self.n})")
        from workbench.data.budget import check_corpus, check_labelled_count

        try:
            check_corpus(self.corpus, labelled=True)
            check_labelled_count(self.corpus, self.n)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def sparsity_tables(results: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The ``layers`` and ``tau`` tables and the ``neurons`` tensors of a sparsity run, from
    ``{split: probes.sparsity.SparsityStats}``."""
    import pandas as pd

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


def _sparsity(model: Any, cfg: SparsityConfig, progress: bool) -> Result:
    from probes.sparsity import corpus_sparsity
    from probes.thresholds import performance_thresholds, topk_losses
    from workbench.data import token_batches
    from workbench.limits import check_context

    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    layers = checked_layers(model, cfg.layers, "--layers")
    checked_layers(model, cfg.threshold_layers, "--threshold-layers")
    results = corpus_sparsity(model, cfg.corpus, max_tokens=cfg.tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                              layers=layers, taus=cfg.taus, progress=progress)
    table, tau, tensors = sparsity_tables(results)
    out = Result(tables={"layers": table, "tau": tau}, tensors={"neurons": tensors})
    any_stats = next(iter(results.values()))
    s = out.summary
    s.update(activation=any_stats.activation, layers=len(any_stats.layers), d_mlp=any_stats.d_mlp)
    for split, st in results.items():
        s[f"fraction_nonzero_{split}"] = st.overall_nonzero()
        s[f"fraction_pre_positive_{split}"] = float(st.fraction_pre_positive().mean())
        s[f"dead_neurons_{split}"] = int(st.dead().sum())
        s[f"tokens_{split}"] = st.n_tokens
        if st.n_tokens < cfg.tokens:
            out.warnings.append(f"the {split} split of {cfg.corpus!r} gave {st.n_tokens} tokens, fewer than --tokens "
                                f"{cfg.tokens}")
    if cfg.thresholds or cfg.topk:
        held = list(token_batches(cfg.corpus, model.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                  split="heldout", max_tokens=cfg.eval_tokens, seed=1))
        if cfg.thresholds:
            calib = token_batches(cfg.corpus, model.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                  split="train", max_tokens=cfg.calib_tokens, seed=1)
            thr = performance_thresholds(model, calib, held, layers=cfg.threshold_layers, calib_tokens=cfg.calib_tokens,
                                         max_rise=cfg.max_rise, progress=progress)
            out.tables["thresholds"] = thr
            for method, d in thr[thr.layer >= 0].groupby("method"):
                s[f"threshold_active_{method}"] = float(d.active_fraction.mean())
            both = thr[thr.layer < 0].set_index("method")
            s.update({f"all_layers_rise_{m}": float(both.loc[m, "rise"]) for m in both.index})
        if cfg.topk:
            out.tables["topk"] = topk_losses(model, held, cfg.topk, layers=layers, progress=progress)
    out.lines = [f"MLP activation sparsity ({s['activation']}), {s['layers']} layers of {s['d_mlp']} neurons"]
    out.lines += [f"  {split}: {100 * s[f'fraction_nonzero_{split}']:.2f}% active, {s[f'dead_neurons_{split}']} dead "
                  f"neurons, {s[f'tokens_{split}']} tokens" for split in results]
    return out


def _sparsity_figures(run: Any) -> dict[str, Any]:
    from probes.figures import (
        firing_histogram_figure,
        sparsity_layers_figure,
        tau_figure,
        thresholds_figure,
        topk_figure,
    )

    layers, neurons = run.table("layers"), run.tensors("neurons")
    split = str(layers["split"].iloc[0])
    figs = {"nonzero": sparsity_layers_figure(layers, "fraction_nonzero"),
            "pre_positive": sparsity_layers_figure(layers, "fraction_pre_positive"),
            "tau": tau_figure(run.table("tau"), split),
            "firing": firing_histogram_figure(neurons[f"{split}.hist_counts"], neurons[f"{split}.hist_edges"])}
    names = run.names("table")
    if "thresholds" in names:
        figs["thresholds"] = thresholds_figure(run.table("thresholds"))
    if "topk" in names:
        figs["topk"] = topk_figure(run.table("topk"))
    return figs


def massive_tables(stats: Any, tokenizer: Any) -> tuple[Any, dict[str, Any], Any]:
    """The ``layers`` table, ``stats`` tensors and ``tokens`` table of a massive run, from
    :class:`probes.massive.MassiveStats`."""
    import pandas as pd
    import torch

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


def _massive(model: Any, cfg: MassiveConfig, progress: bool) -> Result:
    from probes.massive import massive_intervention, measure_massive
    from probes.sparsity import check_layers
    from workbench.data import token_batches
    from workbench.limits import check_context

    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    layers = check_layers(model, checked_layers(model, cfg.layers, "--layers"))
    checked_layers(model, cfg.intervention_layers, "--intervention-layers")
    batches = token_batches(cfg.corpus, model.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                            max_tokens=cfg.tokens)
    stats = measure_massive(model, batches, layers=layers, abs_threshold=cfg.abs_threshold,
                            ratio_threshold=cfg.ratio_threshold, max_tokens=cfg.tokens, progress=progress)
    intervention = None
    if cfg.intervention:
        held = list(token_batches(cfg.corpus, model.tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                  split="heldout", max_tokens=cfg.eval_tokens))
        if cfg.intervention_layers is not None or stats.massive_layers():
            intervention = massive_intervention(model, stats, held, layers=cfg.intervention_layers)
    table, tensors, tokens = massive_tables(stats, model.tokenizer)
    out = Result(tables={"layers": table, "tokens": tokens}, tensors={"stats": tensors})
    top = table.loc[table.top1.idxmax()]
    out.summary.update(n_seqs=stats.n_seqs, n_tokens=stats.n_tokens, max_ratio=float(table.ratio.max()),
                       max_value=float(top.value_1), max_layer=int(top.layer), max_dim=int(top.dim_1),
                       max_pos=int(top.pos_1), max_token=str(top.token_str_1),
                       massive_layers=stats.massive_layers(), massive_dims=stats.massive_dims()[:5])
    if intervention is not None:
        out.json["intervention"] = intervention
        out.summary.update({k: v for k, v in intervention.items() if k.startswith("loss_")})
    if stats.n_tokens < cfg.tokens:
        out.warnings.append(f"{cfg.corpus!r} gave {stats.n_tokens} tokens, fewer than --tokens {cfg.tokens}")
    s = out.summary
    out.lines = [f"largest |h| {s['max_value']:.1f} at layer {s['max_layer']}, dimension {s['max_dim']}, position "
                 f"{s['max_pos']} ({s['max_token']!r}); largest top-1/median ratio {s['max_ratio']:.0f}",
                 f"layers with massive activations: {s['massive_layers'] or 'none'}"]
    out.lines += [f"  {k}: {v:.4f}" for k, v in s.items() if k.startswith("loss_")]
    return out


def _massive_figures(run: Any) -> dict[str, Any]:
    from probes.figures import intervention_figure, massive_heatmap_figure, massive_layers_figure

    stats = run.tensors("stats")
    figs = {"layers": massive_layers_figure(run.table("layers")),
            "heatmap": massive_heatmap_figure(stats["max_abs"], [int(x) for x in stats["layers"]], top_dims=32)}
    if "intervention" in run.names("json"):
        figs["intervention"] = intervention_figure(run.json("intervention"))
    return figs


def _probe(model: Any, cfg: ProbeConfig, progress: bool) -> Result:
    from probes.linear import labelled_texts, probe_layers, residual_features
    from workbench.limits import check_context

    check_context(model, cfg.max_text_tokens, f"--max-text-tokens {cfg.max_text_tokens}")
    texts, labels = labelled_texts(cfg.corpus, cfg.n, seed=cfg.seed)
    feats = residual_features(model, texts, pool=cfg.pool, batch_size=16, max_tokens=cfg.max_text_tokens,
                              progress=progress)
    result = probe_layers(feats, labels, folds=cfg.folds, seed=cfg.seed, progress=progress)
    best = result.best()
    out = Result(tables={"layers": result.table})
    out.summary.update(n=result.n, best_layer=int(best["layer"]), best_accuracy=float(best["accuracy"]),
                       control_at_best=float(best["control_accuracy"]), majority=float(best["majority"]),
                       max_control=float(result.table.control_accuracy.max()))
    if result.n < cfg.n:
        out.warnings.append(f"{cfg.corpus!r} gave {result.n} class-balanced examples, fewer than --n {cfg.n}")
    s = out.summary
    out.lines = [f"best layer {s['best_layer']}: accuracy {s['best_accuracy']:.3f} (shuffled-label control "
                 f"{s['control_at_best']:.3f}, majority {s['majority']:.3f}) on {s['n']} texts"]
    return out


def _probe_figures(run: Any) -> dict[str, Any]:
    from probes.figures import probe_figure

    return {"layers": probe_figure(run.table("layers"))}


SPARSITY = Analysis(
    kind="sparsity", verb="sparsity", config=SparsityConfig, compute=_sparsity, figures=_sparsity_figures,
    help="MLP activation sparsity per layer and neuron (train and held-out text), thresholds, loss versus top-k",
    demo=SparsityConfig(tokens=2048, seq_len=128, batch_size=8, topk=[64, 384], eval_tokens=512),
    demo_model="smollm2-135m")
MASSIVE = Analysis(
    kind="massive", verb="massive", config=MassiveConfig, compute=_massive, figures=_massive_figures,
    help="massive activations in the residual stream and the zero/mean intervention",
    demo=MassiveConfig(tokens=512, seq_len=64, batch_size=4, eval_tokens=256), demo_model="smollm2-135m")
PROBE = Analysis(
    kind="probe", verb="probe", config=ProbeConfig, compute=_probe, figures=_probe_figures,
    help="linear probes for text labels on the residual stream at every layer (with a shuffled-label control)",
    demo=ProbeConfig(n=120, folds=3, max_text_tokens=40), demo_model="smollm2-135m")
