"""The discovery benchmark behind the analysis contract (:mod:`workbench.analysis`): run kind ``benchmark``
(``workbench benchmark``).

Usage (notebook)::

    from circuits.benchmark.analysis import BENCHMARK, BenchmarkConfig
    result = BENCHMARK.run(None, BenchmarkConfig(models=["gt-prev-token"], methods=["eap", "acdc"]))
    result.tables["scores"]      # node / edge ROC-AUC, CPR, CMD, top-k faithfulness, seconds per model and method

The transcoder methods (``transcoder-paths``, ``attribution``) train per-layer transcoders on each model's task inputs
first (``--transcoder-tokens``); on a model without MLPs they are not applicable: NaN in the tables, ``n/a`` in the
text, counted in the summary's ``not_applicable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["BENCHMARK", "BenchmarkConfig", "EDGE_AUROC_TARGET", "GROUND_TRUTH_MIN_F"]

#: the mean edge ROC-AUC the best method should reach (CD-T's paper reports 0.97 on its tasks)
EDGE_AUROC_TARGET = 0.95
#: a ground truth whose own circuit keeps less than this faithfulness on the benchmark's examples is flagged
GROUND_TRUTH_MIN_F = 0.9

_ALL_METHODS = ["eap", "eap-ig", "acdc", "activation-patching", "path-patching", "cdt", "cdt-published",
                "transcoder-paths", "attribution"]


@dataclass
class BenchmarkConfig(Config):
    """Options of ``workbench benchmark``."""

    methods: list[str] = option(list(_ALL_METHODS), "discovery methods to score: " + ", ".join(_ALL_METHODS))
    models: list[str] | None = option(None, "ground-truth models (default all; see workbench.ground_truth.names)")
    n: int = option(32, "clean/corrupted pairs of each model's task", minimum=1, maximum=1024)
    seed: int = option(0, "seed of the task's examples", minimum=0)
    steps: int = option(5, "EAP-IG integration steps", minimum=1, maximum=256)
    threshold: float = option(0.01, "ACDC's threshold on the KL change of removing an edge", minimum=0.0)
    transcoder_tokens: int = option(65_536, "tokens of each task's own inputs the transcoder methods' transcoders "
                                            "train on (not applicable to models without MLPs)", minimum=1)

    def validate(self) -> None:
        from circuits.benchmark.run import BenchmarkInputError, check_methods

        try:
            check_methods(self.methods)
        except BenchmarkInputError as err:
            raise ConfigError(f"--methods: {err}") from None
        if self.models is not None:
            from workbench import ground_truth

            unknown = [m for m in self.models if m.removeprefix("toy/") not in ground_truth.names()]
            if unknown or not self.models:
                raise ConfigError(f"--models: unknown ground truth(s) {', '.join(map(repr, unknown)) or '(none given)'}"
                                  f"; ground truths: {', '.join(ground_truth.names())}")


def _compute(model: Any, cfg: BenchmarkConfig, progress: bool) -> Result:
    from circuits.benchmark.run import benchmark
    from workbench import ground_truth

    truths = cfg.models or ground_truth.names()
    out = benchmark(truths, cfg.methods, n=cfg.n, seed=cfg.seed, steps=cfg.steps, threshold=cfg.threshold,
                    transcoder_tokens=cfg.transcoder_tokens, progress=progress)
    scores, means = out["scores"], out["means"]
    res = Result(tables={k: out[k] for k in ("scores", "means", "curves", "roc", "agreement", "top")},
                 json={"truths": out["truths"]})
    best = means.sort_values("edge_auroc", ascending=False, na_position="last").iloc[0]
    if best["edge_auroc"] != best["edge_auroc"]:  # NaN: no method applies to any model
        raise ConfigError(f"none of the methods {', '.join(cfg.methods)} applies to the models {', '.join(truths)} "
                          "(the transcoder methods need a model with MLPs, e.g. gt-mlp-lookup)")
    res.summary.update(models=len(truths), methods=len(cfg.methods), best_method=str(best["method"]),
                       best_edge_auroc=float(best["edge_auroc"]), best_cpr=float(best["cpr"]),
                       edge_auroc_target=EDGE_AUROC_TARGET, target_met=bool(best["edge_auroc"] >= EDGE_AUROC_TARGET),
                       seconds=float(scores["seconds"].sum(skipna=True)),
                       not_applicable=int(scores["edge_auroc"].isna().sum()))
    if not res.summary["target_met"]:
        res.warnings.append(f"no method reaches the mean edge ROC-AUC target {EDGE_AUROC_TARGET}: the best, "
                            f"{best['method']}, has {best['edge_auroc']:.3f}")
    for name, facts in out["truths"].items():
        if facts["f_true"] < GROUND_TRUTH_MIN_F:
            res.warnings.append(f"{name}: its true circuit keeps only faithfulness {facts['f_true']:.3f} on these "
                                f"{cfg.n} examples (below {GROUND_TRUTH_MIN_F}); its scores say little")
    cols = ["node_auroc", "edge_auroc", "cpr", "cmd", "f_top_k", "seconds"]
    cell = lambda v: f"{v:>10.3f}" if v == v else f"{'n/a':>10}"  # noqa: E731  (NaN: the method does not apply)
    res.lines = [f"{'model':<16} {'method':<20} " + " ".join(f"{c:>10}" for c in cols)]
    res.lines += [f"{r['model']:<16} {r['method']:<20} " + " ".join(cell(r[c]) for c in cols)
                  for _, r in scores.iterrows()]
    res.lines += ["mean over models (where applicable):"] + [
        f"  {r['method']:<20} " + " ".join(cell(r[c]) for c in cols) for _, r in means.iterrows()]
    return res


def _figures(run: Any) -> dict[str, Any]:
    from circuits.benchmark.figures import agreement_figure, curve_figure, roc_figure, side_by_side_figure

    scores = run.table("scores")
    figs = {}
    for model in dict.fromkeys(scores["model"]):
        figs[f"{model}-roc-edge"] = roc_figure(run.table("roc"), model, "edge")
        figs[f"{model}-curve"] = curve_figure(run.table("curves"), model)
        figs[f"{model}-agreement"] = agreement_figure(run.table("agreement"), model)
        figs[f"{model}-side-by-side"] = side_by_side_figure(run.table("top"), model)
    return figs


BENCHMARK = Analysis(
    kind="benchmark", verb="benchmark", config=BenchmarkConfig, compute=_compute, figures=_figures,
    help="score circuit discovery methods against models whose circuits are known (ROC-AUC, CPR, CMD)",
    demo=BenchmarkConfig(models=["gt-prev-token", "gt-induction"], methods=list(_ALL_METHODS), n=16),
    demo_model=None, needs_model=False, model_of=lambda cfg: "ground-truth zoo")
