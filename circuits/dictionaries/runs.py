"""Dictionary runs in the store (kind ``dictionary``): train or load, evaluate, collect feature views, save.

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
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from circuits.dictionaries.buffer import TokenSource, corpus_source
from circuits.dictionaries.evaluate import EvalResult, evaluate_dictionaries
from circuits.dictionaries.features import HIST_EDGES, feature_tables, top_contexts
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.saelens_io import check_fits, load_dictionary, save_dictionary
from circuits.dictionaries.train import DictSpec, TrainDictConfig, TrainResult, train_dictionaries
from workbench.store import Run, RunInfo, Store

KIND = "dictionary"
HEADLINE = ("l0", "fvu", "ce_spliced", "ce_recovered_zero", "ce_recovered_mean", "kl", "dead_fraction")


def store_dictionary_run(
    store: Store, model, model_spec: str, dicts: Mapping[str, Dictionary], evaluation: EvalResult, *,
    params: dict[str, Any], history: Sequence[dict] = (), feature_source: TokenSource | None = None,
    feature_tokens: int = 4096, tokenizer=None, specs: Mapping[str, DictSpec] | None = None,
    context_size: int | None = None, progress: bool = False,
) -> RunInfo:
    """Write one ``dictionary`` run: files, metrics, history and (with ``feature_source``) feature tables."""
    with store.create(KIND, model=model_spec, params=params) as w:
        entries, rows, freqs, hists = [], [], {}, {"edges": HIST_EDGES.clone()}
        for i, (label, d) in enumerate(dicts.items()):
            folder = f"dictionaries/{i}"
            save_dictionary(d, w.path / folder, model_name=model_spec, context_size=context_size,
                            extra={"label": label})
            entries.append({"index": i, "label": label, "folder": folder, "config": d.config()})
            spec = specs.get(label) if specs else None
            rows.append({"index": i, "label": label, **{k: v for k, v in d.config().items() if k != "apply_b_dec_to_input"},
                         "l1": spec.l1 if spec and d.activation == "relu" else None, **evaluation.metrics[label]})
            freqs[f"d{i}"] = evaluation.frequencies[label]
            if feature_source is not None:
                ctx = top_contexts(model, d, feature_source, max_tokens=feature_tokens, progress=progress)
                latents, contexts = feature_tables(model, d, ctx, evaluation.frequencies[label], tokenizer)
                w.save_table(f"latents-{i}", latents)
                w.save_table(f"contexts-{i}", contexts)
                hists[f"d{i}"] = ctx.hist
            w.summary[label] = {k: evaluation.metrics[label][k] for k in HEADLINE}
        w.save_json("dictionaries", entries)
        w.save_table("metrics", pd.DataFrame(rows))
        w.save_tensors("frequencies", freqs)
        w.save_tensors("histograms", hists)
        if history:
            labels = list(dicts)
            flat = [{"step": h["step"], "label": lab, **h[lab]} for h in history for lab in labels if lab in h]
            w.save_table("history", pd.DataFrame(flat))
        w.summary["eval_tokens"] = evaluation.tokens
    return w.info


def load_run_dictionaries(run: Run) -> dict[str, Dictionary]:
    """The dictionaries of a stored ``dictionary`` run, by label."""
    return {e["label"]: load_dictionary(run.path / e["folder"]) for e in run.json("dictionaries")}


def train_and_store(
    model_spec: str, specs: Sequence[DictSpec], cfg: TrainDictConfig, *, store: Store | None = None,
    corpus: str = "wiki", seq_len: int = 128, token_batch: int = 8, eval_tokens: int = 8192,
    feature_tokens: int = 8192, workdir: Path | str | None = None, device: str | None = None, progress: bool = True,
    model=None, source: TokenSource | None = None, eval_source: TokenSource | None = None, tokenizer=None,
) -> tuple[RunInfo, TrainResult]:
    """Train ``specs`` on ``corpus`` (train split), evaluate on its held-out split, store a ``dictionary`` run."""
    from workbench.models import load_model, load_tokenizer

    store = store or Store()
    model = model or load_model(model_spec, device=device)
    if source is None or eval_source is None:
        tokenizer = tokenizer or load_tokenizer(model_spec)
        source = source or corpus_source(tokenizer, corpus, seq_len=seq_len, batch_size=token_batch, seed=cfg.seed)
        eval_source = eval_source or corpus_source(tokenizer, corpus, seq_len=seq_len, batch_size=token_batch,
                                                   split="heldout", seed=0)
    result = train_dictionaries(model, source, specs, cfg, workdir=workdir, progress=progress, device=device)
    evaluation = evaluate_dictionaries(model, result.dictionaries, eval_source, max_tokens=eval_tokens,
                                       progress=progress, device=device)
    params = {"specs": [s.__dict__ for s in specs], "train": {k: v for k, v in cfg.__dict__.items()},
              "corpus": corpus, "seq_len": seq_len, "eval_tokens": eval_tokens, "seconds_training": result.seconds,
              "steps": result.steps, "tokens": result.tokens}
    info = store_dictionary_run(store, model, model_spec, result.dictionaries, evaluation, params=params,
                                history=result.history, feature_source=eval_source, feature_tokens=feature_tokens,
                                tokenizer=tokenizer, specs=dict(zip(result.dictionaries, specs, strict=True)),
                                context_size=seq_len, progress=progress)
    return info, result


def evaluate_and_store(
    model_spec: str, folders: Sequence[Path | str], *, store: Store | None = None, corpus: str = "wiki",
    seq_len: int = 128, token_batch: int = 8, eval_tokens: int = 8192, feature_tokens: int = 8192,
    device: str | None = None, progress: bool = True,
) -> RunInfo:
    """Load SAELens-layout folders, check they fit the model, evaluate on held-out text, store a ``dictionary`` run."""
    from workbench.models import load_model, load_tokenizer

    store = store or Store()
    model = load_model(model_spec, device=device)
    dicts: dict[str, Dictionary] = {}
    for folder in folders:
        d = load_dictionary(folder)
        check_fits(d, model)
        dicts[f"{Path(folder).name}:{d.kind}-{d.hook_in}"] = d
    tokenizer = load_tokenizer(model_spec)
    src = corpus_source(tokenizer, corpus, seq_len=seq_len, batch_size=token_batch, split="heldout")
    evaluation = evaluate_dictionaries(model, dicts, src, max_tokens=eval_tokens, progress=progress, device=device)
    params = {"sources": [str(Path(f).resolve()) for f in folders], "corpus": corpus, "eval_tokens": eval_tokens}
    with torch.no_grad():
        return store_dictionary_run(store, model, model_spec, dicts, evaluation, params=params, feature_source=src,
                                    feature_tokens=feature_tokens, tokenizer=tokenizer, context_size=seq_len,
                                    progress=progress)
