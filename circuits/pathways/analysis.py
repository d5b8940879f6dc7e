"""Stochastically subsampled self-attention (SSA, Hwang et al. 2023) against dense training, behind the analysis
contract: run kind ``ssa`` (``workbench ssa``).

Trains the induction toy densely and with SSA (:mod:`workbench.ssa`: each query keeps a locality-biased random
``fraction`` of its visible keys, itself always, at every training step) for the same steps on the same batches, and
compares held-out losses (dense inference, and ensembles of 1..K subsampled sub-models) and the analytic attention
cost (:mod:`circuits.pathways.run`). The masked implementation computes every score, so it saves no wall time or
memory here: the training seconds of both are stored to show it.

Usage (notebook)::

    from circuits.pathways.analysis import SSA, SsaConfig
    result = SSA.run(None, SsaConfig(fraction=0.25, steps=400))
    result.tables["losses"]      # training x inference (dense, ensemble of K) -> held-out losses
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["SSA", "SsaConfig"]


@dataclass
class SsaConfig(Config):
    """Options of ``workbench ssa``."""

    fraction: float = option(0.25, "share of each query's visible keys kept at every training step, in (0, 1]",
                             minimum=0.0, exclusive_minimum=True, maximum=1.0)
    locality: float = option(1.0, "sampling weight (1 + distance)^-locality of earlier keys (0: uniform)", minimum=0.0)
    ensemble: int = option(4, "largest sub-model ensemble evaluated (K = 1..this)", minimum=1, maximum=64)
    steps: int = option(800, "training steps of each model", minimum=2, maximum=100_000)
    evaluations: int = option(20, "evenly spaced held-out evaluations during training", minimum=2, maximum=1000)
    d_model: int = option(64, "toy width", minimum=4, maximum=1024)
    layers: int = option(2, "toy layers", minimum=1, maximum=8)
    heads: int = option(2, "heads per layer", minimum=1, maximum=16)
    vocab: int = option(128, "random tokens", minimum=4, maximum=8192)
    half_len: int = option(24, "length of the repeated half", minimum=4, maximum=512)
    batch: int = option(32, "sequences per step", minimum=1, maximum=4096)
    lr: float = option(3e-3, "peak learning rate", exclusive_minimum=True, minimum=0.0)
    seed: int = option(0, "seed of the weights, the data and the key draws", minimum=0)
    n_eval: int = option(64, "held-out evaluation sequences", minimum=2, maximum=4096)
    device: str | None = option(None, "device to train on: cpu (default), cuda, cuda:N")

    def validate(self) -> None:
        from workbench.toy_variants import check_train_device

        if self.d_model % self.heads:
            raise ConfigError(f"--d-model {self.d_model} is not divisible by --heads {self.heads}")
        check_train_device(self.device)


def _compute(model: Any, cfg: SsaConfig, progress: bool) -> Result:
    from circuits.pathways.run import compare
    from workbench.ssa import SSAConfig
    from workbench.toy_variants import toy_config

    ssa = SSAConfig(fraction=cfg.fraction, locality=cfg.locality, seed=cfg.seed)
    out = compare(toy_config(cfg), ssa, k=cfg.ensemble, evaluations=cfg.evaluations, n_eval=cfg.n_eval,
                  device=cfg.device, progress=progress)
    losses, cost = out["losses"], out["cost"]

    def loss(training: str, k: int, column: str = "loss") -> float:
        return float(losses[(losses["training"] == training) & (losses["k"] == k)][column].iloc[0])

    flops = dict(zip(cost["training"], cost["attention_flops_per_sequence"], strict=True))
    secs = dict(zip(cost["training"], cost["train_seconds"], strict=True))
    best_k = int(losses[(losses["training"] == "ssa") & (losses["k"] > 0)].sort_values("loss")["k"].iloc[0])
    res = Result(tables={"curves": out["curves"], "losses": losses, "cost": cost},
                 json={"setup": {"eval_steps": out["eval_steps"], "seq": out["seq"], "ssa": ssa.__dict__}})
    res.summary.update(
        fraction=cfg.fraction, steps=cfg.steps,
        dense_loss=loss("dense", 0), ssa_dense_inference_loss=loss("ssa", 0),
        ssa_single_subsampled_loss=loss("ssa", 1), ssa_ensemble_loss=loss("ssa", cfg.ensemble),
        best_ensemble_k=best_k, dense_repeated_half_loss=loss("dense", 0, "loss_repeated_half"),
        ssa_repeated_half_loss=loss("ssa", 0, "loss_repeated_half"),
        attention_flops_ratio=float(flops["dense"] / flops["ssa"]),
        train_seconds_ratio=(None if not secs["dense"] or not secs["ssa"] else float(secs["ssa"] / secs["dense"])),
        implementation="masked (every score computed, then dropped): no wall-time or memory saving")
    gap = res.summary["ssa_dense_inference_loss"] - res.summary["dense_loss"]
    res.lines = [
        f"held-out loss after {cfg.steps} steps: dense {res.summary['dense_loss']:.4f}; SSA (fraction {cfg.fraction}) "
        f"dense inference {res.summary['ssa_dense_inference_loss']:.4f} ({gap:+.4f}), one subsampled pass "
        f"{res.summary['ssa_single_subsampled_loss']:.4f}, ensemble of {cfg.ensemble} "
        f"{res.summary['ssa_ensemble_loss']:.4f}",
        f"attention FLOPs per training sequence: dense {flops['dense']:,}, SSA {flops['ssa']:,} "
        f"({res.summary['attention_flops_ratio']:.2f}x fewer, analytic)",
        "the masked implementation computes every score and drops some: it saves no wall time or memory"
        + ("" if res.summary["train_seconds_ratio"] is None else
           f" (training took {res.summary['train_seconds_ratio']:.2f}x the dense seconds)"),
    ]
    return res


def _figures(run: Any) -> dict[str, Any]:
    from circuits.pathways.figures import cost_figure, curve_figure, ensemble_figure

    return {"curves": curve_figure(run.table("curves")), "ensemble": ensemble_figure(run.table("losses")),
            "cost": cost_figure(run.table("cost"))}


SSA = Analysis(
    kind="ssa", verb="ssa", config=SsaConfig, compute=_compute, figures=_figures,
    help="train the induction toy with stochastically subsampled attention (SSA) and densely; compare held-out losses, "
         "the sub-model ensemble and the attention cost",
    demo=SsaConfig(),
    demo_model=None, needs_model=False,
    model_of=lambda cfg: f"toy/induction-d{cfg.d_model}-l{cfg.layers}-h{cfg.heads} (dense and SSA {cfg.fraction:g})")
