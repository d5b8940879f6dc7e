"""Training dynamics of any model with saved checkpoints, not only the zoo's: local folders or a hub's revisions.

A checkpoint source is one of:

- a local folder whose subfolders are Hugging Face checkpoints named by their step: ``step-<N>``, ``step<N>`` or
  ``checkpoint-<N>`` (this project's trainer and the transformers ``Trainer`` write these layouts);
- ``<folder or hub name>@<rev>,<rev>,...``: revisions of one model, each named with its step (Pythia's branches
  ``step1000``, ``step2000``, ...; the step is the first integer in the name). A hub name needs the network: nothing
  on a default path uses one.

Every checkpoint is measured on the same held-out windows of a corpus, tokenized with the first checkpoint's tokenizer,
by :func:`probes.dynamics.checkpoint_statistics` (the zoo's measurement), then fitted and summarised as a zoo member
is (:func:`probes.dynamics_summary.summarise`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from probes.dynamics import checkpoint_statistics
from probes.dynamics_fit import MIN_POINTS, TooFewCheckpointsError
from probes.dynamics_summary import summarise

__all__ = ["Checkpoint", "analyse_checkpoints", "checkpoint_sequences", "find_checkpoints", "model_config"]

_STEP_FOLDER = re.compile(r"^(?:step-?|checkpoint-)(\d+)$")
_FIRST_INT = re.compile(r"\d+")


class CheckpointSourceError(ValueError):
    """A checkpoint source that names no usable checkpoints."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: its training step, where it lives (folder or hub name) and its revision (None for a folder)."""

    step: int
    source: str
    revision: str | None = None


def find_checkpoints(source: str) -> list[Checkpoint]:
    """The checkpoints a source names (see the module docstring), sorted by step.

    Raises :class:`CheckpointSourceError` for a folder with no step-named checkpoint subfolders, a revision list
    whose names hold no step number or repeat one, or a source that is neither a folder nor ``name@revisions``.
    """
    source = source.strip()
    if "@" in source:
        name, _, revs = source.rpartition("@")
        revisions = [r.strip() for r in revs.split(",") if r.strip()]
        if not name or not revisions:
            raise CheckpointSourceError(f"{source!r}: expected <folder or hub name>@<rev>,<rev>,...")
        steps = []
        for rev in revisions:
            found = _FIRST_INT.search(rev)
            if found is None:
                raise CheckpointSourceError(f"revision {rev!r} of {name!r} names no step (e.g. step1000)")
            steps.append(int(found.group()))
        if len(set(steps)) != len(steps):
            raise CheckpointSourceError(f"revisions {revisions} of {name!r} repeat a step ({steps})")
        return sorted((Checkpoint(s, name, r) for s, r in zip(steps, revisions, strict=True)), key=lambda c: c.step)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise CheckpointSourceError(
            f"checkpoint source {source!r} is not a folder; give a folder of step-<N> / checkpoint-<N> "
            "subfolders or <folder or hub name>@<rev>,<rev>,..."
        )
    out = []
    for sub in folder.iterdir():
        match = _STEP_FOLDER.match(sub.name)
        if match and (sub / "config.json").is_file():
            out.append(Checkpoint(int(match.group(1)), str(sub)))
    if not out:
        raise CheckpointSourceError(
            f"{folder} holds no checkpoint subfolders (step-<N>, step<N> or checkpoint-<N>, each with a config.json)"
        )
    return sorted(out, key=lambda c: c.step)


def model_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """Architecture features of a checkpoint for the predictor: ``d_model, n_layers, n_heads, d_mlp, activation``."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(checkpoint.source, revision=checkpoint.revision)

    def first(*names, default=None):
        for n in names:
            value = getattr(cfg, n, None)
            if value is not None:
                return value
        return default

    d_model = int(first("hidden_size", "n_embd", "d_model"))
    act = str(first("hidden_act", "activation_function", default="unknown"))
    return {"d_model": d_model, "n_layers": int(first("num_hidden_layers", "n_layer")),
            "n_heads": int(first("num_attention_heads", "n_head")),
            "d_mlp": int(first("intermediate_size", "n_inner", default=None) or 4 * d_model),
            "activation": "relu" if act == "relu" else act,
            "context": int(first("max_position_embeddings", "n_positions", default=2048))}


def checkpoint_sequences(checkpoint: Checkpoint, n_sequences: int = 10, context: int = 128,
                         corpus: str = "wiki") -> torch.Tensor:
    """``n_sequences`` held-out windows [n, context] of ``corpus``, tokenized with the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    from workbench.data import token_batches

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.source, revision=checkpoint.revision)
    except (OSError, ValueError) as err:
        raise CheckpointSourceError(f"no tokenizer found with checkpoint {checkpoint.source!r}: {err}") from err
    batch = next(token_batches(corpus, tokenizer, seq_len=context, batch_size=n_sequences, split="heldout",
                               pad_final_batch=False))
    if batch.tokens.shape[0] < n_sequences or not bool(batch.attention_mask.all()):
        raise CheckpointSourceError(f"corpus {corpus!r} is too short for {n_sequences} windows of {context} tokens")
    return batch.tokens


def analyse_checkpoints(source: str, *, name: str | None = None, n_sequences: int = 10, context: int = 128,
                        corpus: str = "wiki", progress: bool = True) -> dict[str, Any]:
    """Statistics, fits and summary of every checkpoint a source names (one member called ``name``).

    Returns the same dict as :func:`probes.dynamics_summary.summarise`. Raises :class:`TooFewCheckpointsError` with
    fewer than five checkpoints.
    """
    checkpoints = find_checkpoints(source)
    name = name or Path(source.rpartition("@")[0] or source).name
    if len(checkpoints) < MIN_POINTS:
        raise TooFewCheckpointsError(
            f"{source} has {len(checkpoints)} checkpoints (steps {[c.step for c in checkpoints]}); a five-parameter "
            f"fit needs at least {MIN_POINTS}"
        )
    remote = sorted({c.source for c in checkpoints if not Path(c.source).expanduser().is_dir()})
    if remote and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CheckpointSourceError(f"{', '.join(remote)} is not available offline: it is no local folder and "
                                    "HF_HUB_OFFLINE is set, so the hub is not asked; give a local checkpoint folder")
    cfg = model_config(checkpoints[-1])
    tokens = checkpoint_sequences(checkpoints[0], n_sequences, min(context, cfg["context"]), corpus)
    frames = []
    for ckpt in tqdm(checkpoints, desc=f"dynamics {name}", disable=not progress, unit="ckpt"):
        stats = checkpoint_statistics(ckpt.source, tokens, cfg["activation"] == "relu", revision=ckpt.revision)
        frames.append(stats.assign(member=name, step=ckpt.step))
    stats = pd.concat(frames, ignore_index=True)[["member", "step", "layer", "massive_ratio", "top1", "median",
                                                  "mlp_active"]]
    return summarise(stats, {name: cfg}, name)
