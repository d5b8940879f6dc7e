"""probes.linear: features equal the cached residual stream; probes find a planted label, the control does not."""

from __future__ import annotations

import random

import pytest
import torch

from probes.linear import labelled_texts, probe_layers, residual_features


def _texts(n=40, seed=0):
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        body = " ".join(f"t{rng.randrange(40)}" for _ in range(rng.randrange(3, 9)))
        texts.append(f"{body} {'t50' if label else 't51'}")
        labels.append(label)
    return texts, labels


def test_features_equal_cache(tiny_gpt2):
    texts, _ = _texts(6)
    feats = residual_features(tiny_gpt2, texts, batch_size=4, progress=False)
    assert feats.shape == (6, 3, 32)
    for i, text in enumerate(texts):
        tokens = tiny_gpt2.to_tokens(text)
        _, cache = tiny_gpt2.run_with_cache(tokens)
        assert torch.allclose(feats[i, 0], cache["blocks.0.hook_resid_pre"][0, -1], atol=1e-5)
        assert torch.allclose(feats[i, 2], cache["blocks.1.hook_resid_post"][0, -1], atol=1e-5)
    mean = residual_features(tiny_gpt2, texts[:1], pool="mean", progress=False)
    _, cache = tiny_gpt2.run_with_cache(tiny_gpt2.to_tokens(texts[0]))
    assert torch.allclose(mean[0, 1], cache["blocks.0.hook_resid_post"][0, 1:].mean(0), atol=1e-5)


def test_probe_reads_planted_label_and_control_does_not(tiny_gpt2):
    texts, labels = _texts(60)
    result = probe_layers(residual_features(tiny_gpt2, texts, progress=False), labels, folds=3, progress=False)
    t = result.table
    assert list(t.layer) == [-1, 0, 1]
    assert (t.accuracy > 0.95).all()  # the last token carries the label
    assert (t.control_accuracy < 0.8).all()
    assert result.best()["accuracy"] == t.accuracy.max()


def test_bad_input(tiny_gpt2):
    feats = torch.zeros(4, 3, 32)
    with pytest.raises(ValueError, match="two classes"):
        probe_layers(feats, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="n = 3 labels"):
        probe_layers(feats, [0, 1, 0])
    with pytest.raises(ValueError, match="at least 5 examples"):
        probe_layers(feats, [0, 1, 0, 1], folds=5)
    with pytest.raises(ValueError, match="unknown pool"):
        residual_features(tiny_gpt2, ["t1"], pool="max")
    with pytest.raises(ValueError, match="no text"):
        residual_features(tiny_gpt2, [])


def test_labelled_texts_balanced():
    texts, labels = labelled_texts("reviews", 20)
    assert len(texts) == 20 and sum(labels) == 10


def test_store_probe_run(tiny_gpt2, tmp_path):
    from probes.analysis import PROBE, ProbeConfig
    from workbench.store import Store

    store = Store(tmp_path / "runs")
    info, _ = PROBE.launch(tiny_gpt2, ProbeConfig(corpus="reviews", n=30, folds=3, max_text_tokens=16), store=store)
    run = store.load("probe", info.run_id)
    table = run.table("layers")
    assert list(table.layer) == [-1, 0, 1] and run.summary["n"] == 30
    assert run.summary["best_accuracy"] == table.accuracy.max()
