"""Linear probes on the residual stream at every layer, with a shuffled-label control.

:func:`residual_features` reads one vector per text and layer (the residual stream at the text's last real token,
or its mean over the real tokens) from ``blocks.0.hook_resid_pre`` (the embedding, reported as layer -1) and every
``blocks.L.hook_resid_post``. :func:`probe_layers` fits a standardised logistic regression (scikit-learn) per layer
with stratified k-fold cross-validation, and the same with the labels shuffled once (the control: a probe that
scores well on shuffled labels memorises rather than reads a feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.data import load_labelled
from workbench.data.tokens import bos_id, encode, pad_id

POOLS = ("last", "mean")


def _encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    bos = bos_id(tokenizer)
    rows = []
    for text in texts:
        ids = encode(tokenizer, text)[: max_tokens - (bos is not None)]
        if not ids:
            raise ValueError(f"text {text!r} has no tokens")
        rows.append(([bos] if bos is not None else []) + ids)
    return rows


def residual_features(model, texts: Sequence[str], *, pool: str = "last", batch_size: int = 16,
                      max_tokens: int = 64, progress: bool = True) -> torch.Tensor:
    """Residual-stream features: FloatTensor [n_texts, n_layers + 1, d_model] (index 0 = embedding, i + 1 = layer i).

    pool: ``"last"`` (the last real token) or ``"mean"`` (the mean over real tokens, BOS excluded when there is more).
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; accepted: {', '.join(POOLS)}")
    if not texts:
        raise ValueError("no text to probe")
    rows = _encode_texts(model.tokenizer, texts, max_tokens)
    n_layers = int(model.cfg.n_layers)
    names = ["blocks.0.hook_resid_pre", *(f"blocks.{i}.hook_resid_post" for i in range(n_layers))]
    device = str(getattr(model.cfg, "device", "cpu"))
    out = torch.empty(len(rows), n_layers + 1, int(model.cfg.d_model))
    pad = pad_id(model.tokenizer)
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="probe features", disable=not progress):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width))
        for i, r in enumerate(chunk):
            tokens[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        if pool == "mean" and width > 1 and bos_id(model.tokenizer) is not None:
            mask[:, 0] = torch.where(mask.sum(1) > 1, 0.0, 1.0)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens.to(device), names_filter=names)
        lengths = torch.tensor([len(r) for r in chunk])
        for j, name in enumerate(names):
            act = cache[name].float().cpu()  # [b, s, d]
            if pool == "last":
                out[start : start + len(chunk), j] = act[torch.arange(len(chunk)), lengths - 1]
            else:
                out[start : start + len(chunk), j] = (act * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return out


@dataclass
class ProbeResult:
    """Per-layer cross-validated accuracy of a probe and of its shuffled-label control.

    table: columns layer (-1 = embedding), accuracy, accuracy_std, control_accuracy, control_std, majority.
    """

    table: pd.DataFrame
    n: int
    folds: int

    def best(self) -> dict:
        """The row of the best layer as a dict."""
        return self.table.loc[self.table.accuracy.idxmax()].to_dict()


def probe_layers(features: torch.Tensor, labels: Sequence[int], *, folds: int = 5, seed: int = 0, C: float = 1.0,
                 progress: bool = True) -> ProbeResult:
    """Cross-validated logistic-regression accuracy per layer; features [n, layers, d] (as :func:`residual_features`).

    ValueError for mismatched lengths, a single class, or fewer examples per class than folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    if features.ndim != 3 or features.shape[0] != len(y):
        raise ValueError(f"features must be [n, layers, d] with n = {len(y)} labels, got {tuple(features.shape)}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels must hold at least two classes, got only {classes.tolist()}")
    if counts.min() < folds:
        raise ValueError(f"each class needs at least {folds} examples for {folds}-fold cross-validation, got {counts.tolist()}")
    shuffled = np.random.default_rng(seed).permutation(y)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    x = features.double().numpy()
    rows = []
    for j in tqdm(range(x.shape[1]), desc="probes", disable=not progress):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        real = cross_val_score(clf, x[:, j], y, cv=cv)
        ctrl = cross_val_score(clf, x[:, j], shuffled, cv=cv)
        rows.append(dict(layer=j - 1, accuracy=real.mean(), accuracy_std=real.std(), control_accuracy=ctrl.mean(),
                         control_std=ctrl.std(), majority=counts.max() / counts.sum()))
    return ProbeResult(pd.DataFrame(rows), len(y), folds)


def labelled_texts(corpus: str = "tweets", n: int = 400, *, split: str = "all", seed: int = 0,
                   balanced: bool = True) -> tuple[list[str], list[int]]:
    """``n`` texts and labels from a labelled corpus (``workbench.data.LABELLED_CORPORA``), class-balanced by default."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    texts, labels = load_labelled(corpus, split)
    order = np.random.default_rng(seed).permutation(len(texts))
    classes = sorted(set(labels))
    quota = {c: n // len(classes) if balanced else n for c in classes}
    picked: list[int] = []
    for i in order.tolist():
        if quota[labels[i]] > 0 and len(picked) < n:
            picked.append(i)
            quota[labels[i]] -= 1
    return [texts[i] for i in picked], [int(labels[i]) for i in picked]


def sentiment_probe(model, *, corpus: str = "tweets", n: int = 400, pool: str = "last", folds: int = 5,
                    seed: int = 0, max_tokens: int = 64, batch_size: int = 16, progress: bool = True) -> ProbeResult:
    """Probe every layer of ``model`` for the sentiment label of ``n`` texts of a labelled corpus."""
    texts, labels = labelled_texts(corpus, n, seed=seed)
    feats = residual_features(model, texts, pool=pool, batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    return probe_layers(feats, labels, folds=folds, seed=seed, progress=progress)
