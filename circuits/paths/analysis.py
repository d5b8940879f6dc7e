"""Path ensembles behind the analysis contract (:mod:`workbench.analysis`): run kind ``paths`` (``workbench paths``).
Artifacts: see :mod:`circuits.paths.ensemble`.

Usage (notebook)::

    from circuits.paths.analysis import PATHS, PathsConfig
    result = PATHS.run(model, PathsConfig(prompt="When Mary and John went to the store, John gave a drink to"))
    result.tables["lengths"]          # contribution of each path length to the target, against C(n, k)
    info = PATHS.save(Store(), result, model)
    PATHS.figures(Store().load("paths", info.run_id))["lengths"].show()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import MAX_EXAMPLES, Analysis, Config, ConfigError, Result, option

__all__ = ["PATHS", "PathsConfig", "to_result"]


@dataclass
class PathsConfig(Config):
    """Options of ``workbench paths``."""

    prompt: str | None = option(None, "text to analyse (target: the top prediction at its last token)", lines=True)
    task: Literal["induction", "greater-than", "ioi", "sentiment"] | None = option(
        None, "a task instead of --prompt (target: its logit difference)")
    n: int = option(4, "examples of the task", minimum=1, maximum=MAX_EXAMPLES)
    max_length: int | None = option(None, "keep path lengths up to this apart (default all)", minimum=1)
    search_length: int = option(3, "longest path of the top-path search", minimum=1)
    beam_width: int = option(8, "beam width of the top-path search", minimum=1, aliases=("--beam",))
    top: int = option(20, "number of top paths kept", minimum=1)
    lesion_draws: int = option(2, "random-lesion draws per k (0: no lesions)", minimum=0, maximum=1000)
    lesion_step: int = option(1, "delete k = step, 2 step, ..., n sublayers", minimum=1)
    seed: int = option(0, "seed of the random lesions", minimum=0)

    def validate(self) -> None:
        if (self.prompt is None) == (self.task is None):
            raise ConfigError("give either --prompt TEXT or --task NAME (not both)")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError("empty prompt: --prompt needs at least one non-blank character")


def to_result(res: Any) -> Result:
    """A :class:`~circuits.paths.ensemble.PathsResult` as a contract :class:`Result`."""
    s = res.summary
    out = Result(tables={"lengths": res.lengths, "direct": res.direct, "top_paths": res.top_paths},
                 graphs={"circuit": res.circuit}, summary=dict(s), objects={"paths": res})
    if res.lesion_single is not None:
        out.tables["lesion_single"] = res.lesion_single
    if res.lesion_random is not None:
        out.tables["lesion_random"] = res.lesion_random
    out.lines = [f"{s['n_sublayers']} sublayers; completeness error {s['completeness_error']:.2e}; clean loss "
                 f"{s['clean_loss']:.3f}; effective length {s['effective_length']:.2f}",
                 "length  paths  target  loss(<=k)"]
    out.lines += [f"{r.length:>6} {r.n_paths:>6} {r.target:>8.3f} {r.cumulative_loss:>8.3f}"
                  for r in res.lengths.itertuples()]
    out.lines += ["top paths:"] + [f"  {r.score:+.3f}  {r.path}" for r in res.top_paths.head(10).itertuples()]
    return out


def _compute(model: Any, cfg: PathsConfig, progress: bool) -> Result:
    from circuits.paths.ensemble import analyse_paths

    task = None
    if cfg.task is not None:
        from workbench.data import make_task

        task = make_task(cfg.task, model.tokenizer, n=cfg.n)
    res = analyse_paths(model, cfg.prompt, task=task, max_length=cfg.max_length, search_length=cfg.search_length,
                        beam=cfg.beam_width, top=cfg.top, lesion_draws=cfg.lesion_draws, lesion_step=cfg.lesion_step,
                        seed=cfg.seed, progress=progress)
    return to_result(res)


def _figures(run: Any) -> dict[str, Any]:
    from circuits.paths.figures import (
        direct_figure,
        length_profile_figure,
        lesion_figure,
        loss_by_length_figure,
    )

    lengths, names = run.table("lengths"), run.names("table")
    figs = {"lengths": length_profile_figure(lengths), "loss": loss_by_length_figure(lengths),
            "direct": direct_figure(run.table("direct"))}
    if "lesion_single" in names or "lesion_random" in names:
        figs["lesions"] = lesion_figure(run.table("lesion_single") if "lesion_single" in names else None,
                                        run.table("lesion_random") if "lesion_random" in names else None)
    return figs


PATHS = Analysis(
    kind="paths", verb="paths", config=PathsConfig, compute=_compute, figures=_figures,
    help="split the logits exactly by path length; top paths; lesion curves",
    demo=PathsConfig(prompt="When Mary and John went to the store, John gave a drink to", lesion_draws=1,
                     lesion_step=2),
    demo_model="smollm2-135m")
