"""Dictionaries behind the analysis contract (:mod:`workbench.analysis`): run kind ``dictionary``, written by
``workbench train-dict`` (train, then evaluate) and ``workbench eval-dict`` (load SAELens folders, evaluate).

Usage (notebook)::

    from circuits.dictionaries.analysis import TRAIN_DICT, TrainDictionaryConfig, run_dictionaries
    cfg = TrainDictionaryConfig(layer=3, kind="transcoder", activation="topk", k=[16, 32], tokens=32_768)
    info, result = TRAIN_DICT.launch("smollm2-135m", cfg)
    result.tables["metrics"]                                   # L0, FVU, spliced CE, CE recovered, KL, dead/dense
    dicts = run_dictionaries(Store().load("dictionary", info.run_id))   # {label: Dictionary}

A ``dictionary`` run folder holds, besides ``manifest.json``:

- ``dictionaries/<i>/cfg.json`` and ``sae_weights.safetensors`` (SAELens layout), one folder per dictionary;
- json ``dictionaries``: ``[{"index", "label", "folder", "config"}]``;
- table ``metrics``: one row per dictionary (label, kind, activation, k, l1, hook_in, hook_out, d_sae, and the metrics
  of :func:`circuits.dictionaries.evaluate.evaluate_dictionaries`);
- table ``history`` (training runs): step, label, mse, l0, l1 / auxk, dead;
- tensors ``frequencies`` {label index ``d<i>``: [d_sae]} and ``histograms`` {``d<i>``: [d_sae, bins], ``edges``};
- tables ``latents-<i>`` and ``contexts-<i>`` (see :func:`circuits.dictionaries.features.feature_tables`).
The summary maps each label to its headline metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.analysis import Analysis, Config, ConfigError, Result, model_spec, option

__all__ = ["EVAL_DICT", "TRAIN_DICT", "EvalDictionaryConfig", "TrainDictionaryConfig", "dictionary_result",
           "run_dictionaries"]

HEADLINE = ("l0", "fvu", "ce_spliced", "ce_recovered_zero", "ce_recovered_mean", "kl", "dead_fraction")


@dataclass
class HeldOutOptions(Config):
    """The held-out text dictionaries are evaluated on."""

    corpus: str = option("wiki", "corpus name (workbench.data.CORPORA)")
    seq_len: int = option(128, "tokens per row, BOS included", minimum=2)
    eval_tokens: int = option(8192, "held-out tokens for the metrics and the feature views", minimum=1)
    skip_bos: bool = option(True, "leave BOS out of the top-activating contexts (many latents fire hardest on it)")

    def validate(self) -> None:
        _check_corpus(self.corpus, self.seq_len, [("heldout", self.eval_tokens, "--eval-tokens")])


def _check_corpus(corpus: str, seq_len: int, budgets: list[tuple[str, int, str]]) -> None:
    from workbench.data.budget import check_corpus, check_token_budget

    try:
        check_corpus(corpus)
        for split, tokens, flag in budgets:
            check_token_budget(corpus, split, tokens, seq_len, flag)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _check_folder(value: str | None, flag: str) -> None:
    """ConfigError when ``value`` is, or lies under, a file (a folder can never be made there)."""
    if value is None:
        return
    path = Path(value).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"lies under the file {part}"
                raise ConfigError(f"{flag} {value} {where}; give a folder")
            return


#: the training library's setting names and the options they come from (its errors are reworded with the flags)
_FLAGS = {"DictSpec.k": "--k", "DictSpec.expansion": "--expansion", "DictSpec.l1": "--l1", "DictSpec.d_sae": "--expansion",
          "TrainDictConfig.batch_size": "--batch-size", "TrainDictConfig.tokens": "--tokens",
          "TrainDictConfig.lr": "--lr", "TrainDictConfig.warmup_steps": "--warmup",
          "TrainDictConfig.checkpoint_every": "--checkpoint-every",
          "TrainDictConfig.checkpoint_seconds": "--checkpoint-seconds", "batch_size": "--batch-size",
          "expansion": "--expansion"}


def _reworded(exc: Exception) -> ConfigError:
    """The training library's error with its setting names replaced by the command line's flags."""
    import re

    text = re.sub(r"\b(?:DictSpec|TrainDictConfig)\.\w+|\b(?:batch_size|expansion)\b",
                  lambda m: _FLAGS.get(m.group(0), m.group(0)), str(exc))
    return ConfigError(text)


@dataclass
class TrainDictionaryConfig(HeldOutOptions):
    """Options of ``workbench train-dict`` (one dictionary per ``l1`` or ``k`` value, trained in one pass)."""

    hook: str | None = option(None, "input hook, e.g. blocks.6.hook_resid_post or blocks.6.ln2.hook_normalized")
    hook_out: str | None = option(None, "output hook of a transcoder, e.g. blocks.6.hook_mlp_out")
    layer: int | None = option(None, "layer shortcut instead of --hook (transcoders: ln2.hook_normalized -> "
                                     "hook_mlp_out; SAEs: hook_resid_post)", minimum=0)
    kind: Literal["sae", "transcoder", "skip_transcoder"] = option("sae", "what to train")
    activation: Literal["relu", "topk"] = option("relu", "ReLU with an L1 penalty, or TopK with AuxK")
    expansion: float = option(8.0, "latents per input dimension", minimum=0.0, exclusive_minimum=True, maximum=1024)
    l1: list[float] = option([1e-3], "L1 coefficient(s) for ReLU (one dictionary each)", minimum=0.0)
    k: list[int] | None = option(None, "active latents for TopK (one dictionary per value)", minimum=1)
    tokens: int = option(200_000, "training tokens", minimum=1)
    batch_size: int = option(4096, "activations per optimiser step", minimum=1)
    lr: float = option(4e-4, "learning rate", minimum=0.0, exclusive_minimum=True)
    warmup: int = option(100, "warm-up steps", minimum=0)
    seed: int = option(0, "seed of the data order and the initialisation", minimum=0)
    workdir: str | None = option(None, "folder for resume checkpoints (a killed run continues from there)", path=True)
    checkpoint_every: int = option(200, "with --workdir: checkpoint every this many steps", minimum=1)
    checkpoint_seconds: float | None = option(60.0, "with --workdir: also checkpoint after this much wall time",
                                              minimum=0.0, exclusive_minimum=True)
    spill_dir: str | None = option(None, "keep the activation buffer in memory-mapped files there", path=True)
    parallel: Literal["none", "data", "layer"] = option(
        "none", "under torchrun: data (each rank trains on its part of every batch, DDP) or layer (the dictionaries "
                "split over the ranks); rank 0 writes the run")
    shards: str | None = option(None, "train from this activation shard folder (`workbench harvest-shards`) instead "
                                      "of harvesting the corpus", path=True)
    autocast: Literal["bf16", "fp16"] | None = option(None, "run the step's matrix products in bf16 or fp16 (weights "
                                                            "and Adam state stay float32; fp16 scales the loss)")

    def validate(self) -> None:
        from circuits.dictionaries.shard_runs import check_shard_folder

        if self.parallel != "none":
            import os

            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ConfigError(f"--parallel {self.parallel} runs under torchrun (RANK and WORLD_SIZE are not set): "
                                  "torchrun --nproc_per_node N -m workbench.ui.cli train-dict ... --parallel "
                                  f"{self.parallel}; without torchrun use --parallel none")
        super().validate()
        check_shard_folder(self.shards)
        if self.shards is None:
            _check_corpus(self.corpus, self.seq_len, [("train", self.tokens, "--tokens")])
        if self.batch_size > self.tokens:
            raise ConfigError(f"--batch-size {self.batch_size} exceeds --tokens {self.tokens}: the budget holds no "
                              "optimiser step; lower --batch-size or raise --tokens")
        if self.hook is None and self.layer is None:
            raise ConfigError("give --hook (e.g. blocks.6.hook_resid_post) or --layer (uses ln2.hook_normalized -> "
                              "hook_mlp_out for transcoders, hook_resid_post for SAEs)")
        if self.hook is not None and self.layer is not None:
            raise ConfigError("give --hook or --layer, not both")
        if self.activation == "topk" and not self.k:
            raise ConfigError("--activation topk needs --k (one or more values)")
        if self.kind != "sae" and self.hook is not None and self.hook_out is None:
            raise ConfigError(f"a {self.kind} needs --hook-out (or use --layer)")
        _check_folder(self.workdir, "--workdir")
        _check_folder(self.spill_dir, "--spill-dir")

    def hooks(self) -> tuple[str, str | None]:
        """(input hook, output hook) of the dictionaries."""
        if self.hook:
            return self.hook, self.hook_out
        if self.kind == "sae":
            return f"blocks.{self.layer}.hook_resid_post", None
        return f"blocks.{self.layer}.ln2.hook_normalized", self.hook_out or f"blocks.{self.layer}.hook_mlp_out"


@dataclass
class EvalDictionaryConfig(HeldOutOptions):
    """Options of ``workbench eval-dict``."""

    path: list[str] = option(help="folders holding cfg.json and sae_weights.safetensors", positional=True, path=True)
    shards: str | None = option(None, "also measure L0, FVU and dead fraction over this activation shard folder",
                                path=True)

    def validate(self) -> None:
        from circuits.dictionaries.shard_runs import check_shard_folder

        super().validate()
        check_shard_folder(self.shards)
        for folder in self.path:
            if not Path(folder).exists():
                raise ConfigError(f"PATH {folder} does not exist; give SAELens dictionary folders (cfg.json and "
                                  "sae_weights.safetensors)")
            if not Path(folder).is_dir():
                raise ConfigError(f"PATH {folder} is a file; give SAELens dictionary folders (cfg.json and "
                                  "sae_weights.safetensors)")
        resolved = [str(Path(p).resolve()) for p in self.path]
        if len(set(resolved)) < len(resolved):
            raise ConfigError("the same dictionary folder is given twice: " + ", ".join(self.path))


def dictionary_result(model: Any, dicts: Mapping[str, Any], evaluation: Any, *, history: Sequence[dict] = (),
                      feature_source: Any = None, feature_tokens: int = 4096, tokenizer: Any = None,
                      specs: Mapping[str, Any] | None = None, context_size: int | None = None,
                      progress: bool = False, exclude_tokens: Sequence[int] = ()) -> Result:
    """Everything a ``dictionary`` run holds: SAELens folders, metrics, history and (with ``feature_source``) the
    feature tables, from dictionaries by label and their :class:`~circuits.dictionaries.evaluate.EvalResult`."""
    import pandas as pd

    from circuits.dictionaries.features import HIST_EDGES, feature_tables, top_contexts
    from circuits.dictionaries.saelens_io import save_dictionary

    spec = model_spec(model)
    out = Result()
    entries, rows, freqs, hists = [], [], {}, {"edges": HIST_EDGES.clone()}
    for i, (label, d) in enumerate(dicts.items()):
        folder = f"dictionaries/{i}"
        out.folders[folder] = (lambda path, d=d, label=label: save_dictionary(
            d, path, model_name=spec, context_size=context_size, extra={"label": label}))
        entries.append({"index": i, "label": label, "folder": folder, "config": d.config()})
        ds = specs.get(label) if specs else None
        rows.append({"index": i, "label": label, **{k: v for k, v in d.config().items() if k != "apply_b_dec_to_input"},
                     "l1": ds.l1 if ds and d.activation == "relu" else None, **evaluation.metrics[label]})
        freqs[f"d{i}"] = evaluation.frequencies[label]
        if feature_source is not None:
            ctx = top_contexts(model, d, feature_source, max_tokens=feature_tokens, progress=progress,
                               exclude_tokens=exclude_tokens)
            latents, contexts = feature_tables(model, d, ctx, evaluation.frequencies[label], tokenizer)
            out.tables[f"latents-{i}"] = latents
            out.tables[f"contexts-{i}"] = contexts
            hists[f"d{i}"] = ctx.hist
        out.summary[label] = {k: evaluation.metrics[label][k] for k in HEADLINE}
    out.json["dictionaries"] = entries
    out.tables["metrics"] = pd.DataFrame(rows)
    out.tensors["frequencies"] = freqs
    out.tensors["histograms"] = hists
    if history:
        labels = list(dicts)
        flat = [{"step": h["step"], "label": lab, **h[lab]} for h in history for lab in labels if lab in h]
        out.tables["history"] = pd.DataFrame(flat)
    out.summary["eval_tokens"] = evaluation.tokens
    for label, flags in getattr(evaluation, "warnings", {}).items():
        out.warnings += [f"{label}: {flag}" for flag in flags]
    out.lines = [f"{'dictionary':<60} {'L0':>8} {'FVU':>7} {'CE rec(0)':>9} {'KL':>8} {'dead':>6}"]
    for label, m in out.summary.items():
        if isinstance(m, dict):
            out.lines.append(f"{label:<60} {_num(m['l0'], 8, 2)} {_num(m['fvu'], 7, 3)} "
                             f"{_num(m['ce_recovered_zero'], 9, 3)} {_num(m['kl'], 8, 4)} {_num(m['dead_fraction'], 6, 2)}")
    return out


def _num(value: Any, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _bos(model: Any, cfg: HeldOutOptions) -> list[int]:
    from workbench.data.tokens import bos_id

    bos = bos_id(model.tokenizer)
    return [bos] if cfg.skip_bos and bos is not None else []


def run_dictionaries(run: Any) -> dict[str, Any]:
    """The dictionaries of a stored ``dictionary`` run, by label."""
    from circuits.dictionaries.saelens_io import load_dictionary

    return {e["label"]: load_dictionary(run.subpath(e["folder"])) for e in run.json("dictionaries")}


def _train(model: Any, cfg: TrainDictionaryConfig, progress: bool) -> Result:
    from circuits.dictionaries.train import TrainingConfigError
    from workbench.limits import check_context

    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    n_layers = int(model.cfg.n_layers)
    if cfg.layer is not None and cfg.layer >= n_layers:
        raise ConfigError(f"--layer {cfg.layer} does not exist: the model has layers 0..{n_layers - 1}")
    hook_in, hook_out = cfg.hooks()
    values = cfg.k if cfg.activation == "topk" else cfg.l1
    try:
        return _train_specs(model, cfg, progress, hook_in, hook_out, values)
    except TrainingConfigError as exc:
        raise _reworded(exc) from exc


def _train_specs(model: Any, cfg: TrainDictionaryConfig, progress: bool, hook_in: str, hook_out: str | None,
                 values: list) -> Result:
    import torch

    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.evaluate import evaluate_dictionaries
    from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries

    specs = [DictSpec(hook_in, kind=cfg.kind, hook_out=hook_out, activation=cfg.activation, expansion=cfg.expansion,
                      l1=v if cfg.activation == "relu" else 0.0, k=v if cfg.activation == "topk" else None)
             for v in values]
    train = TrainDictConfig(tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup,
                            seed=cfg.seed, spill_dir=cfg.spill_dir, checkpoint_every=cfg.checkpoint_every,
                            checkpoint_seconds=cfg.checkpoint_seconds, autocast=cfg.autocast)
    device = str(model.W_E.device)
    source = corpus_source(model.tokenizer, cfg.corpus, seq_len=cfg.seq_len, batch_size=8, seed=cfg.seed)
    eval_source = corpus_source(model.tokenizer, cfg.corpus, seq_len=cfg.seq_len, batch_size=8, split="heldout", seed=0)
    shard_warnings: list[str] = []

    def shard_buffer(part: tuple[int, int] | None = None) -> Any:
        """The shard folder's buffer (``part``: this rank's of data-parallel training); its warnings kept."""
        from circuits.dictionaries.shard_runs import training_buffer

        buffer, warned = training_buffer(model, cfg.shards, sorted({hook_in, hook_out or hook_in}),
                                         batch_size=cfg.batch_size, seed=cfg.seed, tokens=cfg.tokens, part=part)
        shard_warnings[:] = warned
        return buffer

    buffer_for = shard_buffer if cfg.shards is not None else None
    if cfg.parallel == "none":
        trained = train_dictionaries(model, source, specs, train, workdir=cfg.workdir, progress=progress, device=device,
                                     buffer=buffer_for() if buffer_for else None)
    else:
        trained, world = _train_parallel(model, cfg, source, specs, train, progress, buffer_for)
        device = str(model.W_E.device)
    evaluation = evaluate_dictionaries(model, trained.dictionaries, eval_source, max_tokens=cfg.eval_tokens,
                                       progress=progress, device=device)
    with torch.no_grad():
        out = dictionary_result(model, trained.dictionaries, evaluation, history=trained.history,
                                feature_source=eval_source, feature_tokens=cfg.eval_tokens, tokenizer=model.tokenizer,
                                specs=dict(zip(trained.dictionaries, specs, strict=True)), context_size=cfg.seq_len,
                                progress=progress, exclude_tokens=_bos(model, cfg))
    out.params = {"specs": [s.__dict__ for s in specs], "train": dict(train.__dict__),
                  "seconds_training": trained.seconds, "steps": trained.steps, "tokens_trained": trained.tokens}
    if cfg.parallel != "none":
        out.params["world_size"] = world
    if cfg.shards is not None:
        out.params["shards"] = str(Path(cfg.shards).resolve())
    out.warnings = shard_warnings + list(trained.warnings) + out.warnings
    return out


def _train_parallel(model: Any, cfg: TrainDictionaryConfig, source: Any, specs: list, train: Any, progress: bool,
                    buffer_for: Any = None) -> tuple[Any, int]:
    """Train on every rank torchrun started; rank 0 returns (result, world size) and goes on to evaluate and write
    the run, the other ranks exit here (status 0) once their part is done. ``buffer_for(part)``: the buffer to read
    instead of harvesting ``source``, built with ``part`` ((rank, world) for data parallel, None for layer)."""
    import sys

    import torch.distributed as dist

    from circuits.dictionaries.distributed import setup, train_distributed

    device = setup(str(model.W_E.device))
    if device != str(model.W_E.device):
        model.to(device)  # rank r on cuda:LOCAL_RANK
    rank, world = dist.get_rank(), dist.get_world_size()
    buffer = None if buffer_for is None else buffer_for((rank, world) if cfg.parallel == "data" else None)
    trained = train_distributed(model, source, specs, train, mode=cfg.parallel, workdir=cfg.workdir,
                                progress=progress, device=device, buffer=buffer)
    dist.destroy_process_group()
    if rank != 0:
        print(f"train-dict: rank {rank} of {world} done; rank 0 writes the run", file=sys.stderr)
        raise SystemExit(0)
    return trained, world


def _evaluate(model: Any, cfg: EvalDictionaryConfig, progress: bool) -> Result:
    import torch

    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.evaluate import evaluate_dictionaries
    from circuits.dictionaries.saelens_io import check_fits, load_dictionary
    from workbench.limits import check_context

    dicts = {}
    for folder in cfg.path:  # a dictionary that does not fit the model is the first thing to say
        d = load_dictionary(folder)
        check_fits(d, model)
        dicts[f"{Path(folder).name}:{d.kind}-{d.hook_in}"] = d.to(model.W_E.device)
    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    src = corpus_source(model.tokenizer, cfg.corpus, seq_len=cfg.seq_len, batch_size=8, split="heldout")
    device = str(model.W_E.device)
    evaluation = evaluate_dictionaries(model, dicts, src, max_tokens=cfg.eval_tokens, progress=progress, device=device)
    with torch.no_grad():
        out = dictionary_result(model, dicts, evaluation, feature_source=src, feature_tokens=cfg.eval_tokens,
                                tokenizer=model.tokenizer, context_size=cfg.seq_len, progress=progress,
                                exclude_tokens=_bos(model, cfg))
    out.params = {"sources": [str(Path(f).resolve()) for f in cfg.path]}
    if cfg.shards is not None:
        from circuits.dictionaries.shard_runs import add_shard_metrics

        add_shard_metrics(out, dicts, cfg.shards, model, progress=progress)
        out.params["shards"] = str(Path(cfg.shards).resolve())
    return out


def _figures(run: Any) -> dict[str, Any]:
    from circuits.dictionaries.figures import frequency_histogram, frontier_figure, training_figure

    metrics = run.table("metrics")
    figs = {"frontier": frontier_figure(metrics)}
    freqs = run.tensors("frequencies")
    for i, label in enumerate(metrics["label"]):
        if f"d{i}" in freqs:
            figs[f"frequencies-{i}"] = frequency_histogram(freqs[f"d{i}"], f"Latent firing frequencies: {label}")
    if "history" in run.names("table"):
        figs["training"] = training_figure(run.table("history"))
    return figs


TRAIN_DICT = Analysis(
    kind="dictionary", verb="train-dict", config=TrainDictionaryConfig, compute=_train, figures=_figures,
    help="train SAEs / transcoders on a hook (one pass for several sparsities), evaluate, store SAELens files",
    demo=TrainDictionaryConfig(layer=3, kind="transcoder", activation="topk", k=[16, 32], expansion=4, tokens=32_768,
                               batch_size=512, lr=1e-3, warmup=8, eval_tokens=2048),
    demo_model="smollm2-135m")
EVAL_DICT = Analysis(
    kind="dictionary", verb="eval-dict", config=EvalDictionaryConfig, compute=_evaluate, figures=_figures,
    help="evaluate SAELens-layout dictionary folders on held-out text", demo=None, demo_model=None)
