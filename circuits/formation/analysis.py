"""Induction-head formation under clamps behind the analysis contract: run kind ``formation``
(``workbench formation``).

Trains the induction toy (``workbench.induction_toy``, a small configuration) once per entry of a clamp sweep
(:mod:`circuits.formation.sweep`; clamps from :mod:`workbench.clamp`, applied at every training step) and stores,
per entry, the curves of the two halves' losses and of every head's induction and previous-token scores, and a
table: the phase-change step (:func:`circuits.formation.measure.phase_change`, or none), the final induction score
and the final repeated-half loss. Trained variants are cached under ``$WORKBENCH_HOME/toy-variants`` (an
interrupted sweep resumes).

Usage (notebook)::

    from circuits.formation.analysis import FORMATION, FormationConfig
    result = FORMATION.run(None, FormationConfig(clamps=["none", "L1.H*.output=zero"], steps=400))
    result.tables["clamps"]      # phase-change step, final induction score, repeated-half loss per clamp
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["FORMATION", "FormationConfig"]

DEFAULT_CLAMPS = ["none", "prev.pattern=uniform", "L1.H*.output=zero", "L0.attn=zero"]


@dataclass
class FormationConfig(Config):
    """Options of ``workbench formation``."""

    clamps: list[str] = option(list(DEFAULT_CLAMPS), "sweep entries: none, or COMPONENT=WHAT[@START:END] joined by +; "
                               "components L<l>.H<h>.pattern|output, L<l>.attn, L<l>.mlp (H* = each head, prev = the "
                               "layer-0 previous-token head); WHAT zero|mean|running-mean (patterns also "
                               "uniform|previous-token)")
    steps: int = option(800, "training steps of each run", minimum=2, maximum=100_000)
    evaluations: int = option(40, "evenly spaced evaluations per run (the phase change is read from them)",
                              minimum=2, maximum=1000)
    min_drop: float = option(0.5, "smallest repeated-half loss drop (nats) between evaluations that counts as a phase "
                                  "change", minimum=0.0)
    d_model: int = option(64, "toy width", minimum=4, maximum=1024)
    layers: int = option(2, "toy layers", minimum=1, maximum=8)
    heads: int = option(2, "heads per layer", minimum=1, maximum=16)
    vocab: int = option(128, "random tokens", minimum=4, maximum=8192)
    half_len: int = option(24, "length of the repeated half", minimum=4, maximum=512)
    batch: int = option(32, "sequences per step", minimum=1, maximum=4096)
    lr: float = option(3e-3, "peak learning rate", exclusive_minimum=True, minimum=0.0)
    seed: int = option(0, "seed of the weights and the data", minimum=0)
    n_eval: int = option(64, "evaluation sequences", minimum=2, maximum=4096)
    device: str | None = option(None, "device to train on: cpu (default), cuda, cuda:N")

    def validate(self) -> None:
        from circuits.formation.sweep import expand

        if self.d_model % self.heads:
            raise ConfigError(f"--d-model {self.d_model} is not divisible by --heads {self.heads}")
        try:
            expand(list(self.clamps), self.layers, self.heads)
        except ConfigError as err:
            raise ConfigError(f"--clamps: {err}") from None
        from workbench.toy_variants import check_train_device

        check_train_device(self.device)


def _compute(model: Any, cfg: FormationConfig, progress: bool) -> Result:
    from circuits.formation.sweep import NONE, run_sweep
    from workbench.toy_variants import toy_config

    toy = toy_config(cfg)
    out = run_sweep(toy, list(cfg.clamps), evaluations=cfg.evaluations, n_eval=cfg.n_eval, min_drop=cfg.min_drop,
                    device=cfg.device, progress=progress)
    table = out["clamps"]
    res = Result(tables={k: out[k] for k in ("clamps", "curves", "heads")},
                 json={"sweep": {"eval_steps": out["eval_steps"], "prev_head": out["prev_head"],
                                 "toy": toy.to_dict()}})
    changes = {r["clamp"]: (None if r["phase_change_step"] is None or str(r["phase_change_step"]) == "<NA>"
                            else int(r["phase_change_step"])) for r in table.to_dict("records")}
    res.summary.update(runs=len(table), steps=cfg.steps, phase_change_steps=changes, prev_head=out["prev_head"],
                       final_induction_scores=dict(zip(table["clamp"], table["final_induction_score"].round(4),
                                                       strict=True)),
                       final_repeated_losses=dict(zip(table["clamp"], table["final_loss_repeated_half"].round(4),
                                                      strict=True)),
                       seconds=float(table["seconds"].sum()))
    if NONE in changes and changes[NONE] is None:
        res.warnings.append(f"the unclamped run shows no phase change in {cfg.steps} steps (no repeated-half loss drop "
                            f">= {cfg.min_drop} nats between evaluations): train longer (--steps) or a smaller toy")
    res.lines = [f"{'clamp':<32} {'phase change':>12} {'drop':>7} {'final rep. loss':>15} {'induction':>9}"]
    for r in table.to_dict("records"):
        step = changes[r["clamp"]]
        res.lines.append(f"{r['clamp']:<32} {'none' if step is None else step:>12} {r['steepest_drop']:>7.3f} "
                         f"{r['final_loss_repeated_half']:>15.3f} {r['final_induction_score']:>9.3f}")
    if out["prev_head"] is not None:
        res.lines.append(f"prev = L0.H{out['prev_head']} (the layer-0 head with the highest previous-token score at the "
                         "end of the unclamped run)")
    return res


def _figures(run: Any) -> dict[str, Any]:
    from circuits.formation.figures import loss_figure, score_figure

    curves, clamps = run.table("curves"), run.table("clamps")
    return {"loss": loss_figure(curves, clamps), "induction": score_figure(curves, "best_induction"),
            "previous-token": score_figure(curves, "best_previous_token_l0")}


FORMATION = Analysis(
    kind="formation", verb="formation", config=FormationConfig, compute=_compute, figures=_figures,
    help="train the induction toy under clamps (heads' patterns or outputs, layers' outputs fixed at every step) and "
         "compare the phase changes",
    demo=FormationConfig(clamps=["none", "L0.attn=zero"]),  # the toy's size: a phase change, and none without layer 0
    demo_model=None, needs_model=False,
    model_of=lambda cfg: f"toy/induction-d{cfg.d_model}-l{cfg.layers}-h{cfg.heads} (trained per clamp)")
