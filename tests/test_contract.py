"""The analysis contract, over the whole registry: every analysis runs its demo config (shrunk to the tiny models),
saves, loads back with its kind, model spec and params, and draws its figures."""

from __future__ import annotations

import dataclasses
import json

import plotly.graph_objects as go
import pytest

from workbench.analysis import ConfigError
from workbench.store import Store
from workbench.ui.output import strict_json
from workbench.ui.registry import ANALYSES, analyses, get


def _dictionary_folder(tmp_path):
    from circuits.dictionaries.model import Dictionary
    from circuits.dictionaries.saelens_io import save_dictionary

    d = Dictionary.create("transcoder", 32, 48, activation="topk", k=4, hook_in="blocks.0.ln2.hook_normalized",
                          hook_out="blocks.0.hook_mlp_out")
    return str(save_dictionary(d, tmp_path / "tc0"))


# verb -> (model fixture or None, changes to the demo config that shrink it to that model)
SHRUNK = {
    "zoo-training": ("induction_2l", {}),
    "sparsity": ("tiny_gpt2", dict(corpus="news", tokens=128, seq_len=16, batch_size=4, topk=[8], eval_tokens=32)),
    "massive": ("tiny_llama", dict(corpus="news", tokens=64, seq_len=16, batch_size=4, eval_tokens=32,
                                   intervention_layers=[0])),
    "probe": ("tiny_gpt2", dict(corpus="reviews", n=30, folds=3, max_text_tokens=16)),
    "dynamics": (None, {}),
    "train-dict": ("tiny_llama", dict(layer=1, k=[2, 6], expansion=2.0, tokens=1024, batch_size=128, warmup=2,
                                      seq_len=16, eval_tokens=64)),
    "eval-dict": ("tiny_llama", dict(seq_len=16, eval_tokens=64)),
    "train-clt": ("tiny_llama", dict(k=4, expansion=2.0, tokens=1024, batch_size=128, warmup=2, seq_len=16,
                                     eval_tokens=64)),
    "tc-circuit": ("tiny_llama", dict(train_tokens=1024, prompt="t3 t5 t7 t3 t5", beam_width=3, depth=2)),
    "cdt": ("tiny_gpt2", dict(n=2, half_len=4, top_k=2)),
    "patch": ("tiny_gpt2", dict(n=2, half_len=4, top_k=1)),
    "paths": ("tiny_llama", dict(prompt="t3 t5 t7 t9 t3 t5 t7")),
    "vit": ("tiny_vit", dict(n=32, examples=2, scale_steps=10)),
    "edges": ("tiny_gpt2", dict(n=2, half_len=4, threshold=1e-4)),
    "attribute": ("tiny_llama", dict(train_tokens=1024, prompt="t3 t5 t7 t3 t5")),
    "intervene": ("tiny_llama", dict(train_tokens=512, prompt="t3 t5 t7 t3 t5", sample=4)),
    "benchmark": (None, dict(models=["gt-prev-token"], methods=["eap", "acdc"], n=8)),
    "formation": (None, dict(clamps=["none", "L1.H*.output=zero"], steps=10, evaluations=3, d_model=16, half_len=4,
                             vocab=16, batch=4, n_eval=8)),
    "ssa": (None, dict(steps=6, evaluations=2, ensemble=2, d_model=16, half_len=4, vocab=16, batch=4, n_eval=8)),
    "bigram": ("tiny_llama", dict(corpus="news", steps=3, bigram_tokens=1024, seq_len=16, batch_size=2,
                                  eval_tokens=64)),
}


def test_every_registered_analysis_is_covered():
    assert set(SHRUNK) == {a.verb for a in analyses()} and len(ANALYSES) == len(SHRUNK)


@pytest.mark.slow
@pytest.mark.parametrize("verb", list(SHRUNK))
def test_demo_config_runs_saves_loads_and_draws(verb, request, tmp_path):
    analysis = get(verb)
    fixture, changes = SHRUNK[verb]
    model = request.getfixturevalue(fixture) if fixture else None
    if verb == "eval-dict":
        config = analysis.config(path=[_dictionary_folder(tmp_path)], **changes)
    else:
        config = dataclasses.replace(analysis.demo, **changes)
    if not analysis.needs_model:
        model = None
    store = Store(tmp_path / "runs")
    info, result = analysis.launch(model, config, store=store)
    run = store.load(analysis.kind, info.run_id)
    assert run.kind == analysis.kind
    expected_spec = model.workbench_spec if analysis.needs_model else analysis.model_of(config)
    assert expected_spec and run.model == expected_spec  # a loaded model's spec is stored, never None
    params = run.params
    assert {k: params[k] for k in dataclasses.asdict(config)} == json.loads(json.dumps(dataclasses.asdict(config)))
    assert analysis.load(run) == config
    assert run.summary and json.dumps(strict_json(run.summary), allow_nan=False)
    assert result.text().strip()
    figures = analysis.figures(run)
    assert figures, f"{verb} draws no figure"
    for name, fig in figures.items():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1, name
        fig.to_json()


def test_a_loaded_model_without_a_spec_is_refused(tiny_gpt2, tmp_path):
    analysis = get("probe")
    with pytest.raises(ValueError, match="no spec"):
        analysis.spec_of(object(), analysis.demo)


@pytest.mark.parametrize(("verb", "changes", "message"), [
    ("cdt", {"top_k": -3}, "--top-k must be >= 1"),
    ("cdt", {"faithfulness_bound": float("nan")}, "--faithfulness-bound must be a finite number"),
    ("sparsity", {"taus": [0.1, float("inf")]}, "--taus must be a finite number"),
    ("sparsity", {"tokens": 100, "batch_size": 8, "seq_len": 128}, "below one batch"),
    ("probe", {"max_text_tokens": 0}, "--max-text-tokens must be >= 2"),
    ("patch", {"ablation": "median"}, "--ablation must be one of mean, zero, corrupted"),
    ("paths", {"lesion_draws": 1_000_000_000}, "--lesion-draws must be <= 1000"),
    ("tc-circuit", {"prompt": ""}, "--prompt is empty"),
])
def test_configs_refuse_values_outside_their_range(verb, changes, message):
    analysis = get(verb)
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(analysis.demo, **changes).check()
