"""Bigram subnetworks behind the analysis contract (:mod:`workbench.analysis`): run kind ``bigram``
(``workbench bigram``).

Usage (notebook)::

    from circuits.bigram.analysis import BIGRAM, BigramConfig
    result = BIGRAM.run(model, BigramConfig(steps=300, budget=0.01))
    result.summary["kept_fraction"], result.tables["layers"], result.summary["lm_loss_ablated"]

What it does: counts the bigram distribution of ``--corpus``'s training split over the model's tokenizer
(:mod:`circuits.bigram.counts`), trains one mask logit per weight of the attention and MLP matrices of every layer
(embeddings, unembedding, norms and biases kept; :mod:`circuits.bigram.masks`) by continuous sparsification toward
it on full text contexts (:mod:`circuits.bigram.train`), and measures the hard subnetwork on the held-out split
(:mod:`circuits.bigram.evaluate`).

Layout of one run ``runs/bigram/<run_id>/``:

- ``kept.parquet``: one row per masked matrix: name, label, layer, kind, sublayer, shape, size, kept, fraction;
- ``layers.parquet``: kept and fraction per (layer, kind, sublayer);
- ``metrics.parquet``: one row per condition (full, subnetwork, empty, ablated, random-i: the random control
  ablated): bigram_ce, bigram_kl, corr, lm_loss;
- ``history.parquet``: step, loss, kept_soft, beta, lambda;
- ``subnetwork.safetensors``: per masked matrix, its hard mask packed 8 weights a byte (uint8; read back with
  :func:`load_subnetwork`);
- summary: n_masked, n_kept, kept_fraction, first_mlp_share (share of the kept weights in layer 0's MLP),
  top_sublayer, corr_full, corr_subnetwork, bigram_kl_full / _subnetwork / _empty, lm_loss_full, lm_loss_ablated,
  lm_loss_random (mean over draws) and lm_loss_random_sd, undecided (share of logits with 0.1 < m < 0.9 at the
  last beta), budget_cut (the budget removed weights s > 0 kept).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, Config, ConfigError, Result, model_spec, option

__all__ = ["BIGRAM", "BigramConfig", "load_subnetwork"]

#: settings that change the trained masks (the resume key)
#: the default penalty per masked weight (lambda = this x the number of masked weights)
LAMBDA_PER_WEIGHT = 1e-4
_TRAINING_FIELDS = ("corpus", "bigram_tokens", "min_count", "smoothing", "parts", "steps", "batch_size", "seq_len",
                    "lr", "l0_lambda", "beta_final", "init", "budget", "seed")


@dataclass
class BigramConfig(Config):
    """Options of ``workbench bigram``."""

    corpus: str = option("wiki", "corpus whose training split gives the bigram counts and the training text")
    bigram_tokens: int | None = option(None, "tokens counted for the bigram table (default: the whole training "
                                       "split)", minimum=2)
    min_count: int = option(5, "a current token is a target only when its bigram row was seen this many times",
                            minimum=1)
    smoothing: float = option(1.0, "weight alpha of the unigram prior in each bigram row", minimum=0.0,
                              exclusive_minimum=True)
    parts: Literal["all", "attn", "mlp"] = option("all", "which weight matrices are masked: attention and MLP, or "
                                                  "one of them (the rest stays whole)")
    steps: int = option(300, "training steps (Adam on the mask logits)", minimum=1, maximum=1_000_000)
    batch_size: int = option(8, "text rows per step", minimum=1)
    seq_len: int = option(64, "tokens per row (BOS included)", minimum=2)
    lr: float = option(0.05, "Adam learning rate of the mask logits", minimum=0.0, exclusive_minimum=True)
    l0_lambda: float | None = option(None, "weight of the expected kept fraction in the loss (default: 1e-4 per "
                                           "masked weight, i.e. 1e-4 x the masked weights: about 10 for a d64 zoo "
                                           "model, 1e4 for SmolLM2; the per-weight level that gave sparse "
                                           "subnetworks on both)", minimum=0.0)
    beta_final: float = option(100.0, "beta of mask = sigmoid(beta * s) at the last step (from 1, geometric)",
                               minimum=1.0)
    init: float = option(0.0, "initial mask logit (0: every mask 0.5, as the paper)")
    budget: float = option(1.0, "largest kept fraction of the masked weights, in (0, 1]", minimum=0.0,
                           maximum=1.0, exclusive_minimum=True)
    eval_tokens: int = option(4096, "held-out tokens for the correlation and the losses", minimum=2)
    control_draws: int = option(3, "random subnetworks of the same size per matrix ablated as the control",
                                minimum=1, maximum=100)
    seed: int = option(0, "seed of the text order and the random controls", minimum=0)
    workdir: str | None = option(None, "folder for resume checkpoints (default: one per model and training "
                                 "settings under the workbench's home)", path=True)

    def validate(self) -> None:
        from workbench.data.budget import check_corpus, check_token_budget

        try:
            check_corpus(self.corpus)
            check_token_budget(self.corpus, "heldout", self.eval_tokens, self.seq_len, "--eval-tokens")
            if self.bigram_tokens is not None:
                check_token_budget(self.corpus, "train", self.bigram_tokens, self.seq_len, "--bigram-tokens")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.workdir is not None:
            from pathlib import Path

            for folder in (Path(self.workdir), *Path(self.workdir).parents):
                if folder.exists() and not folder.is_dir():
                    raise ConfigError(f"--workdir {self.workdir}: {folder} is a file; give a folder for the resume "
                                      "checkpoints")


def _workdir(model: Any, cfg: BigramConfig) -> Any:
    from pathlib import Path

    from workbench.paths import workbench_home

    if cfg.workdir is not None:
        return Path(cfg.workdir)
    settings = {"model": model_spec(model), **{k: getattr(cfg, k) for k in _TRAINING_FIELDS}}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return workbench_home() / "bigram" / key


def _compute(model: Any, cfg: BigramConfig, progress: bool) -> Result:
    import pandas as pd
    import torch

    from circuits.bigram.counts import BigramCounter
    from circuits.bigram.evaluate import complement, evaluate_masks, kept_rows, pack_masks, random_like
    from circuits.bigram.masks import find_groups
    from circuits.bigram.train import hard_masks, train_masks
    from workbench.data import token_batches
    from workbench.limits import check_context

    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    tok = model.tokenizer
    counter = BigramCounter(int(model.cfg.d_vocab))
    for batch in token_batches(cfg.corpus, tok, seq_len=cfg.seq_len, batch_size=64, split="train",
                               max_tokens=cfg.bigram_tokens, seed=cfg.seed):
        counter.add(batch.tokens, batch.attention_mask)
    table = counter.table(smoothing=cfg.smoothing, min_count=cfg.min_count)
    n_rows = int((table.row_total >= cfg.min_count).sum())
    if n_rows == 0:
        raise ConfigError(f"no token of --corpus {cfg.corpus} was seen --min-count {cfg.min_count} times; lower "
                          "--min-count or raise --bigram-tokens")
    kinds = ("attn", "mlp") if cfg.parts == "all" else (cfg.parts,)
    groups = find_groups(model, kinds)

    def stream():
        for epoch in itertools.count():
            yield from token_batches(cfg.corpus, tok, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                     split="train", seed=cfg.seed + epoch)

    settings = {"model": model_spec(model), **{k: getattr(cfg, k) for k in _TRAINING_FIELDS}}
    n_masked = sum(g.size for g in groups)
    lam = cfg.l0_lambda if cfg.l0_lambda is not None else LAMBDA_PER_WEIGHT * n_masked
    training = train_masks(model, table, groups, stream, steps=cfg.steps, lr=cfg.lr, lam=lam,
                           beta_final=cfg.beta_final, init=cfg.init, budget=cfg.budget,
                           workdir=_workdir(model, cfg), settings=settings, progress=progress)
    masks = hard_masks(training.logits, cfg.budget)
    n_positive = sum(int((s > 0).sum()) for s in training.logits.values())
    n_kept = sum(int(m.sum()) for m in masks.values())
    undecided = sum(int(((torch.sigmoid(cfg.beta_final * s) - 0.5).abs() < 0.4).sum())
                    for s in training.logits.values()) / n_masked          # 0.1 < m < 0.9 at the last beta
    held = list(token_batches(cfg.corpus, tok, seq_len=cfg.seq_len, batch_size=cfg.batch_size, split="heldout",
                              max_tokens=cfg.eval_tokens, seed=1))
    conditions = {"full": lambda: None, "subnetwork": lambda: masks,
                  "empty": lambda: {n: torch.zeros_like(m) for n, m in masks.items()},
                  "ablated": lambda: complement(masks)}
    for i in range(cfg.control_draws):
        conditions[f"random-{i}"] = lambda i=i: complement(random_like(masks, cfg.seed * 1000 + i))
    bar = _progress(len(conditions), progress)
    metrics = []
    for name, make in conditions.items():   # one condition's masks in memory at a time
        metrics.append({"condition": name, **evaluate_masks(model, table, held, make())})
        bar.update(1)
    bar.close()
    by = {row["condition"]: row for row in metrics}
    random_losses = [by[f"random-{i}"]["lm_loss"] for i in range(cfg.control_draws)]

    kept = pd.DataFrame(kept_rows(groups, masks))
    layers = (kept.groupby(["layer", "kind", "sublayer"], sort=False)[["size", "kept"]].sum().reset_index())
    layers["fraction"] = layers["kept"] / layers["size"]
    top = layers.sort_values("kept", ascending=False).iloc[0]
    first_mlp = int(kept[(kept["layer"] == 0) & (kept["kind"] == "mlp")]["kept"].sum())
    out = Result(tables={"kept": kept, "layers": layers, "metrics": pd.DataFrame(metrics),
                         "history": pd.DataFrame(training.history)},
                 tensors={"subnetwork": pack_masks(masks)},
                 objects={"masks": masks, "logits": training.logits, "table": table, "groups": groups})
    out.summary.update({
        "n_masked": n_masked, "n_kept": n_kept, "kept_fraction": n_kept / n_masked,
        "first_mlp_share": first_mlp / n_kept if n_kept else None,
        "top_sublayer": f"L{int(top['layer'])}.{top['kind']}.{top['sublayer']}" if n_kept else None,
        "corr_full": by["full"]["corr"], "corr_subnetwork": by["subnetwork"]["corr"],
        "bigram_kl_full": by["full"]["bigram_kl"], "bigram_kl_subnetwork": by["subnetwork"]["bigram_kl"],
        "bigram_kl_empty": by["empty"]["bigram_kl"], "lm_loss_full": by["full"]["lm_loss"],
        "lm_loss_subnetwork": by["subnetwork"]["lm_loss"], "lm_loss_ablated": by["ablated"]["lm_loss"],
        "lm_loss_random": statistics.fmean(random_losses),
        "lm_loss_random_sd": statistics.stdev(random_losses) if len(random_losses) > 1 else 0.0,
        "bigram_rows": n_rows, "bigram_pairs": table.n_tokens, "steps": cfg.steps,
        "resumed_from": training.resumed_from, "lambda_initial": lam, "lambda_final": training.lam, "undecided": undecided,
        "budget_cut": n_positive - n_kept})
    s = out.summary
    out.params["masked_parts"] = "attention and MLP weight matrices" if cfg.parts == "all" else cfg.parts
    out.lines = [
        f"bigram table: {table.n_tokens:,} pairs of {cfg.corpus}, {n_rows:,} rows seen >= {cfg.min_count} times",
        f"subnetwork: {n_kept:,} of {n_masked:,} masked weights kept ({100 * s['kept_fraction']:.4f}%); "
        f"largest part {s['top_sublayer']}; layer 0 MLP holds "
        f"{100 * (s['first_mlp_share'] or 0):.1f}% of the kept weights",
        f"bigram correlation (held-out surprisals): subnetwork {_fmt(s['corr_subnetwork'])}, full model "
        f"{_fmt(s['corr_full'])}; bigram KL subnetwork {_fmt(s['bigram_kl_subnetwork'])}, full "
        f"{_fmt(s['bigram_kl_full'])}, every masked weight zero {_fmt(s['bigram_kl_empty'])}",
        f"held-out loss: full {_fmt(s['lm_loss_full'])}, subnetwork ablated {_fmt(s['lm_loss_ablated'])}, random "
        f"same-size ablation {_fmt(s['lm_loss_random'])} +- {_fmt(s['lm_loss_random_sd'])} "
        f"({cfg.control_draws} draws)"]
    if s["budget_cut"] > 0:
        out.warnings.append(f"the budget {cfg.budget:g} cut {s['budget_cut']:,} weights the training kept (s > 0): "
                            "the masks did not reach the budget by themselves; raise --l0-lambda or --steps")
    if undecided > 0.01:
        out.warnings.append(f"{100 * undecided:.1f}% of the masks were still undecided (0.1 < m < 0.9) at the last "
                            "step: raise --steps or --beta-final")
    if n_kept > 0.2 * n_masked:
        out.warnings.append(f"the subnetwork keeps {100 * n_kept / n_masked:.1f}% of the masked weights: the penalty "
                            f"per weight (lambda {lam:g} / {n_masked:,} masked weights = {lam / n_masked:.1e}) "
                            f"is weak against the gradient noise of {cfg.steps} steps; raise --l0-lambda (about "
                            f"{1e-4 * n_masked:.0e} gives 1e-4 per weight) or --steps")
    if n_kept == 0:
        out.warnings.append("the subnetwork is empty: lower --l0-lambda")
    elif (by["subnetwork"]["bigram_kl"] or 0) >= (by["empty"]["bigram_kl"] or 0):
        out.warnings.append("the subnetwork predicts the bigrams no better than the empty one (every masked weight "
                            "zero): raise --steps or lower --l0-lambda")
    return out


def load_subnetwork(run: Any) -> dict[str, Any]:
    """The hard masks {parameter name: float 0/1 tensor of the weight's shape} of a stored ``bigram`` run."""
    from circuits.bigram.evaluate import unpack_masks

    kept = run.table("kept")
    shapes = {r.name: tuple(int(x) for x in r.shape.split("x")) for r in kept.itertuples()}
    return unpack_masks(run.tensors("subnetwork"), shapes)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _progress(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bigram evaluation", disable=not progress)


def _figures(run: Any) -> dict[str, Any]:
    from circuits.bigram.figures import figures

    return figures(run)


BIGRAM = Analysis(
    kind="bigram", verb="bigram", config=BigramConfig, compute=_compute, figures=_figures,
    help="bigram subnetworks: weight masks trained to predict the bigram distribution, with ablation controls",
    demo=BigramConfig(steps=150, bigram_tokens=200_000, eval_tokens=1024, control_draws=2),
    demo_model="toy/llama-d64-l2")

