"""Training dynamics behind the analysis contract: run kind ``dynamics`` (``workbench dynamics``).

Usage (notebook)::

    from probes.dynamics_analysis import DYNAMICS, DynamicsConfig
    info, result = DYNAMICS.launch(None, DynamicsConfig(target="llama"))   # a zoo family, built on first use
    result.tables["fits"]                                                   # five-parameter fits per layer
    DYNAMICS.figures(Store().load("dynamics", info.run_id))["massive_ratio"].show()

Model ``toy/<family or member>`` (or, with ``checkpoints``, the checkpoint source); tables:
- ``statistics``: per (member, step, layer): ``massive_ratio``, ``top1``, ``median``, ``mlp_active``;
- ``fits``: per (member, layer, statistic): ``A, lam, gamma, t0, K, r2, t_peak, aic, aic_step, r2_step, n, preferred``;
- ``predictor``: per (model, target): leave-one-model-out ``r2_lomo`` (absent with fewer than three members).
Summary: members, checkpoints, mean / min R^2 of each statistic's fits, how many layers prefer the step model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["DYNAMICS", "DynamicsConfig", "to_result"]


@dataclass
class DynamicsConfig(Config):
    """Options of ``workbench dynamics``."""

    target: str = option(help="zoo family (llama, gpt) or member (e.g. llama-d64-l2), built on first use; with "
                         "--checkpoints, a folder of step-<N> / checkpoint-<N> checkpoints or "
                         "<folder or hub name>@<rev>,<rev>,...", positional=True)
    checkpoints: bool = option(False, "TARGET names saved checkpoints of any model, not a zoo family "
                               "(a hub name needs the network)")
    name: str | None = option(None, "with --checkpoints: the member's name in the tables (default: the folder's)")
    context: int = option(128, "with --checkpoints: tokens per held-out window of the wiki corpus", minimum=2)
    sequences: int = option(10, "held-out sequences per checkpoint", minimum=1)

    def validate(self) -> None:
        if not self.target or not self.target.strip():
            raise ConfigError("give TARGET: a zoo family or member, or with --checkpoints a checkpoint source")


def _model_of(cfg: DynamicsConfig) -> str:
    return cfg.target if cfg.checkpoints else f"toy/{cfg.target}"


def _compute(model: Any, cfg: DynamicsConfig, progress: bool) -> Result:
    if cfg.checkpoints:
        from probes.dynamics_external import analyse_checkpoints

        res = analyse_checkpoints(cfg.target, name=cfg.name, n_sequences=cfg.sequences, context=cfg.context,
                                  progress=progress)
    else:
        from probes.dynamics_summary import analyse

        res = analyse(cfg.target, cfg.sequences, progress)
    return to_result(res, _model_of(cfg))


def to_result(res: dict[str, Any], model: str) -> Result:
    """A :func:`probes.dynamics_summary.summarise` (or ``combine``) dict as a contract :class:`Result`."""
    out = Result(tables={"statistics": res["statistics"], "fits": res["fits"]}, summary=res["summary"],
                 params={"configs": res["configs"]})
    if res["predictor"] is not None:
        out.tables["predictor"] = res["predictor"]
    s = out.summary
    out.lines = [f"dynamics of {model}: members {', '.join(s['members'])}"]
    for stat in ("massive_ratio", "mlp_active"):
        out.lines.append(
            f"  {stat}: five-parameter fit R^2 mean {s[f'{stat}_r2_mean']:.3f}, min {s[f'{stat}_r2_min']:.3f}; "
            f"{s[f'{stat}_prefers_step']} of {s[f'{stat}_layers']} layers prefer a step (AIC)")
    for target, best in (s.get("predictor_best_r2") or {}).items():
        out.lines.append(f"  predictor {target}: leave-one-model-out R^2 {best['r2_lomo']:.3f} ({best['model']})")
    if "predictor" in s:
        out.lines.append(f"  predictor {s['predictor']}")
    return out


def _figures(run: Any) -> dict[str, Any]:
    from probes.dynamics import dynamics_figure

    stats, fits = run.table("statistics"), run.table("fits")
    return {stat: dynamics_figure(stats, fits, stat) for stat in ("massive_ratio", "mlp_active") if stat in stats}


DYNAMICS = Analysis(
    kind="dynamics", verb="dynamics", config=DynamicsConfig, compute=_compute, figures=_figures,
    help="fit massive-activation / MLP-sparsity curves over a model's training checkpoints",
    demo=DynamicsConfig(target="llama-tiny-demo", sequences=10), demo_model=None, needs_model=False,
    model_of=_model_of)
