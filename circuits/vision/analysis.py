"""Path ensembles and lazy neurons of a vision transformer behind the analysis contract: run kind ``vit``
(``workbench vit --model toy/vit-relu-d64-l4``).

A run holds the tables ``lengths`` (:func:`circuits.vision.ensemble.length_table`), ``pruning`` (full model, each
length dropped, lengths up to k kept, greedy pruning and EnsembleScale chosen on the held-out split:
:func:`~circuits.vision.ensemble.prune_table`), ``scales`` (EnsembleScale's weight per length), ``sparsity``
(:func:`circuits.vision.lazy.sparsity_table`), ``examples`` (the first images: label, prediction, probability) and the
tensors ``examples`` (their pixels). Usage (notebook)::

    from circuits.vision.analysis import VIT, VitConfig
    result = VIT.run("toy/vit-relu-d64-l4", VitConfig())
    result.tables["pruning"], result.tables["sparsity"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import MAX_EXAMPLES, Analysis, Config, ConfigError, Result, option

__all__ = ["VIT", "VitConfig"]


@dataclass
class VitConfig(Config):
    """Options of ``workbench vit``."""

    split: Literal["test", "heldout", "train"] = option(
        "test", "digits scored (greedy pruning and EnsembleScale are always fitted on the held-out split)")
    n: int | None = option(None, "images of the split (default: all of them)", minimum=1, maximum=MAX_EXAMPLES)
    prune: list[int] | None = option(None, "path lengths dropped in the custom pruning row, each in 0..2L "
                                           "(default: the longest, 2L)", minimum=0)
    scale_steps: int = option(100, "L-BFGS iterations of EnsembleScale", minimum=1, maximum=10_000)
    taus: list[float] = option([0.01, 0.1], "thresholds of the |a| > tau activity counts (GELU has no exact zeros)",
                               minimum=0)
    examples: int = option(8, "digit images drawn with their predictions", minimum=0, maximum=64)


def _compute(model: Any, cfg: VitConfig, progress: bool) -> Result:
    import pandas as pd
    import torch

    from circuits.vision.ensemble import accuracy, check_lengths, length_logits, length_table, prune_table
    from circuits.vision.frozen import check_vision
    from circuits.vision.lazy import sparsity_table, vit_sparsity
    from workbench.zoo_vit import digits

    hf = check_vision(model)
    if cfg.prune is not None:  # before any work: a length outside 0..2L is an input error
        check_lengths(cfg.prune, 2 * int(hf.config.num_hidden_layers))
    images, labels = digits(cfg.split)
    if cfg.n is not None:
        if cfg.n > len(labels):
            raise ConfigError(f"--n {cfg.n}: the {cfg.split} split has {len(labels)} digits")
        images, labels = images[: cfg.n], labels[: cfg.n]
    fit_images, fit_labels = digits("heldout")
    parts, error = length_logits(model, images)
    fit_parts = parts if cfg.split == "heldout" and cfg.n is None else length_logits(model, fit_images)[0]
    lengths = length_table(parts, labels)
    pruning, scales = prune_table(parts, labels, fit_parts, fit_labels, prune=cfg.prune, steps=cfg.scale_steps)
    stats = vit_sparsity(model, images, cfg.taus)
    sparsity = sparsity_table(stats)
    device = next(model.parameters()).device
    with torch.no_grad():
        bridge_logits = torch.cat([model(x.to(device)) for x in images.split(256)]).double()
    logits = parts.sum(0)
    probs = torch.softmax(logits, -1)
    e = min(cfg.examples, len(labels))
    pred = logits.argmax(-1).cpu()
    examples_table = pd.DataFrame({
        "index": range(e), "label": labels[:e].tolist(), "prediction": pred[:e].tolist(),
        "probability": probs.max(-1).values[:e].cpu().tolist()})
    n_sub = parts.shape[0] - 1
    by_method = pruning.set_index("method")
    trims = pruning[pruning["method"].str.startswith(("drop length", "keep lengths"))]
    best = trims.loc[trims["accuracy"].idxmax()]
    full_acc = accuracy(logits, labels)
    summary = {
        "n_images": len(labels), "split": cfg.split, "n_layers": n_sub // 2, "n_sublayers": n_sub,
        "activation": stats.activation, "accuracy": full_acc, "completeness_error": error,
        "bridge_error": float((bridge_logits - logits.to(bridge_logits)).abs().max()),
        "drop_longest_accuracy": float(by_method.loc[f"drop length {n_sub}", "accuracy"]),
        "best_trim": str(best["method"]), "best_trim_accuracy": float(best["accuracy"]),
        "greedy_dropped": str(by_method.loc["greedy pruning (held-out)", "dropped"]),
        "greedy_accuracy": float(by_method.loc["greedy pruning (held-out)", "accuracy"]),
        "ensemble_scale_accuracy": float(by_method.loc["EnsembleScale (held-out)", "accuracy"]),
        "prune_accuracy": float(pruning.iloc[-2]["accuracy"]),
        "mean_active": float(sparsity["active"].mean()),
        "active_first_layer": float(sparsity["active"].iloc[0]), "active_last_layer": float(sparsity["active"].iloc[-1]),
    }
    out = Result(summary=summary, tables={"lengths": lengths, "pruning": pruning, "sparsity": sparsity,
                                          "examples": examples_table},
                 objects={"parts": parts, "scales": scales, "stats": stats})
    out.tables["scales"] = pd.DataFrame({"length": range(n_sub + 1), "weight": scales.cpu().tolist()})
    out.tensors["examples"] = {"images": images[:e, 0].contiguous().float(), "labels": labels[:e].contiguous(),
                               "predictions": pred[:e].contiguous(), "probabilities": probs.max(-1).values[:e].cpu().float()}
    if full_acc < 0.9:
        out.warnings.append(f"the model's accuracy on the {cfg.split} digits is {full_acc:.3f}, below 0.9: an "
                            "undertrained model, so its path ensemble says little about a trained ViT")
    if error > 1e-6:
        out.warnings.append(f"the path decomposition misses the clean logits by {error:.2e} (relative), above 1e-6")
    if cfg.split == "heldout":
        out.warnings.append("--split heldout scores the images greedy pruning and EnsembleScale are fitted on: "
                            "their gains are optimistic (use --split test)")
    out.lines = [f"{len(labels)} {cfg.split} digits; {n_sub} sublayers; accuracy {full_acc:.4f}; completeness error "
                 f"{error:.1e}; {stats.activation} MLP, mean active fraction {summary['mean_active']:.3f}",
                 "length  paths  true-logit  acc(<=k)  acc(without k)"]
    out.lines += [f"{r.length:>6} {r.n_paths:>6} {r.true_logit:>11.3f} {r.accuracy_up_to:>9.4f} {r.accuracy_without:>15.4f}"
                  for r in lengths.itertuples()]
    out.lines += ["pruning / reweighting (test accuracy, held-out accuracy):"]
    out.lines += [f"  {r.method:<28} {r.accuracy:.4f}  {r.heldout_accuracy:.4f}" for r in pruning.itertuples()]
    out.lines += ["layer  active  dead"] + [f"{r.layer:>5} {r.active:>7.3f} {r.dead:>5.3f}" for r in sparsity.itertuples()]
    return out


def _figures(run: Any) -> dict[str, Any]:
    from circuits.vision.figures import examples_figure, lengths_figure, pruning_figure, sparsity_figure

    return {"lengths": lengths_figure(run.table("lengths")), "pruning": pruning_figure(run.table("pruning")),
            "sparsity": sparsity_figure(run.table("sparsity")), "examples": examples_figure(run.tensors("examples"))}


VIT = Analysis(
    kind="vit", verb="vit", config=VitConfig, compute=_compute, figures=_figures,
    help="a vision transformer on the digits: logits by path length, path pruning, EnsembleScale, lazy neurons",
    demo=VitConfig(), demo_model="toy/vit-relu-d32-l2", default_model="toy/vit-relu-d64-l4")
