"""Dictionaries refuse what they cannot do honestly: settings out of range, sizes that cannot fit, non-finite or
constant activations, corrupt or foreign files, mismatched resumes; and say when a result is weak or undefined."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file

import circuits.dictionaries.saelens_io as io
import circuits.dictionaries.train as T
from circuits.dictionaries import Dictionary
from circuits.dictionaries.buffer import TensorBuffer, random_source
from circuits.dictionaries.evaluate import evaluate_dictionaries
from circuits.dictionaries.figures import activation_histogram
from circuits.dictionaries.saelens_io import DictionaryFileError, load_dictionary, save_dictionary
from circuits.dictionaries.train import (
    DictSpec,
    NonFiniteActivationError,
    ResumeMismatchError,
    TrainDictConfig,
    TrainingConfigError,
    train_dictionaries,
)
from workbench.train import saved_steps

# the bytes of pickle.dumps({"W_enc": [1.0, 2.0]}, protocol=4), written out so that no test imports pickle: what a
# pickled weights file starts with, for the refusal checks (nothing ever unpickles it)
PICKLED = b'\x80\x04\x95"\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05W_enc\x94]\x94(G?\xf0\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00es.'

HOOK = "blocks.0.hook_resid_post"


def gaussian_rows(n: int = 512, width: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {HOOK: torch.randn(n, width, generator=gen) @ torch.randn(width, width, generator=gen)}


# ---------------------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("option,value", [
    ("tokens", 0), ("tokens", -5), ("tokens", True), ("batch_size", 0), ("batch_size", 2.5), ("lr", 0.0),
    ("lr", -1e-3), ("lr", float("nan")), ("lr", float("inf")), ("warmup_steps", -1), ("decay_fraction", 1.5),
    ("decay_fraction", float("nan")), ("block_batches", 0), ("seed", -1), ("auxk_coef", float("inf")),
    ("dead_tokens", 0), ("checkpoint_every", 0), ("checkpoint_seconds", 0.0), ("checkpoint_seconds", float("nan")),
    ("log_every", 0), ("max_warmup_fraction", 2.0), ("betas", (0.9, 1.0)), ("betas", (0.9,)), ("autocast", "fp32"),
])
def test_every_training_setting_has_a_range(option, value):
    with pytest.raises(TrainingConfigError, match=f"TrainDictConfig.{option} must be"):
        TrainDictConfig(**{"tokens": 4096, "batch_size": 64, option: value})


def test_a_batch_larger_than_the_budget_is_refused():
    with pytest.raises(TrainingConfigError, match=r"batch_size \(100000000\) exceeds tokens \(200000\)"):
        TrainDictConfig(tokens=200_000, batch_size=100_000_000)


@pytest.mark.parametrize("option,value", [
    ("l1", -1.0), ("l1", float("nan")), ("expansion", 0.0), ("expansion", float("inf")), ("expansion", -2.0),
    ("d_sae", 0), ("kind", "crosscoder"), ("activation", "gelu"), ("hook_in", ""),
])
def test_every_spec_setting_has_a_range(option, value):
    with pytest.raises(TrainingConfigError, match=f"DictSpec.{option} must be"):
        DictSpec(**{"hook_in": HOOK, option: value})


def test_spec_combinations_are_checked():
    with pytest.raises(TrainingConfigError, match="DictSpec.k must be an integer >= 1"):
        DictSpec(HOOK, activation="topk")
    with pytest.raises(TrainingConfigError, match="DictSpec.k must be"):
        DictSpec(HOOK, activation="topk", k=0)
    with pytest.raises(TrainingConfigError, match=r"DictSpec.k must be an integer in \[1, 8\]"):
        DictSpec(HOOK, activation="topk", k=9, d_sae=8)
    with pytest.raises(TrainingConfigError, match="DictSpec.hook_out must be a hook name for a transcoder"):
        DictSpec(HOOK, kind="transcoder")
    buf = TensorBuffer(gaussian_rows(), batch_size=64)
    cfg = TrainDictConfig(tokens=512, batch_size=64)
    with pytest.raises(TrainingConfigError, match=r"k \(40\) of .* exceeds its 16 latents"):
        train_dictionaries(None, None, [DictSpec(HOOK, activation="topk", k=40, expansion=1)], cfg, buffer=buf,
                           progress=False)


def test_sizes_that_cannot_fit_are_refused_before_allocating():
    need = T.training_bytes(16, 1024, 16, 64)
    assert need == 4 * (4 * (16 * 1024 + 1024 + 1024 * 16 + 16) + 3 * 64 * 1024)
    with pytest.raises(TrainingConfigError, match=r"needs about .* GiB .* but 0.00 GiB is available"):
        T.check_memory([("x", 16, 1024, 16, False)], 64, available=need - 1)
    assert T.check_memory([("x", 16, 1024, 16, False)], 64, available=need) == need
    buf = TensorBuffer(gaussian_rows(), batch_size=64)
    cfg = TrainDictConfig(tokens=512, batch_size=64)
    # 16 * 1e9 latents would need about a terabyte: refused at once, naming the size, nothing allocated
    with pytest.raises(TrainingConfigError, match=r"needs about [\d.]+ GiB .*d_sae 16,000,000,000"):
        train_dictionaries(None, None, [DictSpec(HOOK, expansion=1e9)], cfg, buffer=buf, progress=False)


# ---------------------------------------------------------------------------------------------------- budgets
def test_short_budgets_scale_the_warmup_and_say_they_are_too_small():
    cfg = TrainDictConfig(tokens=20_000, batch_size=4096)  # the 4-step budget: warm-up would never end
    assert cfg.steps == 4 and cfg.warmup == 1 and cfg.lr_at(0) == cfg.lr
    default = TrainDictConfig(tokens=200_000)
    assert default.steps == 48 and default.warmup == 12
    assert [default.lr_at(s) / default.lr for s in (0, 5, 11, 12)] == pytest.approx([1 / 12, 0.5, 1.0, 1.0])
    long = TrainDictConfig(tokens=4096 * 5000)
    assert long.warmup == 100 and long.budget_warnings() == []
    buf = TensorBuffer(gaussian_rows(), batch_size=128)
    short = TrainDictConfig(tokens=512, batch_size=128, warmup_steps=100)
    res = train_dictionaries(None, None, [DictSpec(HOOK, expansion=2, l1=1e-3)], short, buffer=buf, progress=False)
    assert res.steps == 4
    assert any("warm-up cut from 100 to 1 steps" in w for w in res.warnings)
    assert any("only 4 optimisation steps" in w and "too few" in w for w in res.warnings)


def test_a_source_that_runs_out_says_so():
    buf = TensorBuffer(gaussian_rows(256), batch_size=64)
    res = train_dictionaries(None, None, [DictSpec(HOOK, expansion=2)], TrainDictConfig(tokens=1024, batch_size=64),
                             buffer=buf, progress=False)
    assert res.steps == 4
    assert any("ran out after 256 training tokens (4 steps) of the 1024 planned" in w for w in res.warnings)


def test_a_batch_larger_than_a_buffer_block_is_refused():
    buf = TensorBuffer(gaussian_rows(512), batch_size=256, block_rows=128)
    with pytest.raises(TrainingConfigError, match=r"batch_size \(256\) exceeds the 128 rows of one buffer block"):
        train_dictionaries(None, None, [DictSpec(HOOK)], TrainDictConfig(tokens=512, batch_size=256), buffer=buf,
                           progress=False)


def test_non_finite_activations_are_refused_and_constant_ones_reported_naming_the_hook():
    rows = gaussian_rows()
    rows[HOOK][17, 3] = float("nan")
    cfg = TrainDictConfig(tokens=512, batch_size=64)
    with pytest.raises(NonFiniteActivationError, match=f"activations at {HOOK} hold NaN or Inf values \\(1 of 512"):
        train_dictionaries(None, None, [DictSpec(HOOK)], cfg, buffer=TensorBuffer(rows, batch_size=64),
                           progress=False)
    flat = {HOOK: torch.ones(512, 16) * 3}
    res = train_dictionaries(None, None, [DictSpec(HOOK)], TrainDictConfig(tokens=512, batch_size=64, dead_tokens=128),
                             buffer=TensorBuffer(flat, batch_size=64), progress=False)
    assert any(w.startswith(f"the activations at {HOOK} are the same at every one of the 512 tokens")
               for w in res.warnings)
    assert any("all 128 latents are dead (none fired in the last 128 training tokens)" in w for w in res.warnings)


def test_a_corpus_the_tokenizer_cannot_read_draws_a_warning():
    from circuits.dictionaries.buffer import UnreadableCorpusWarning, corpus_source
    from workbench.induction_toy import make_tokenizer

    with pytest.warns(UnreadableCorpusWarning, match=r"corpus 'wiki' is not text this tokenizer reads: 100% of"):
        corpus_source(make_tokenizer(64), "wiki", seq_len=32, batch_size=2)


# ---------------------------------------------------------------------------------------------------- evaluation
def _biased(hook: str, width: int, bias: float) -> Dictionary:
    d = Dictionary.create("sae", width, 2 * width, hook_in=hook, seed=1)
    with torch.no_grad():
        d.b_enc.fill_(bias)
    return d


def test_evaluation_flags_dead_and_dense_and_never_reports_nan(tiny_llama):
    hook = "blocks.1.hook_resid_post"
    src = random_source(65, seq_len=12, batch_size=4, n_batches=2, seed=3, bos_id=64)
    dicts = {"dead": _biased(hook, 32, -1e4), "dense": _biased(hook, 32, 1e4)}
    res = evaluate_dictionaries(tiny_llama, dicts, src, max_tokens=10_000, progress=False)
    dead, dense = res.metrics["dead"], res.metrics["dense"]
    assert dead["l0"] == 0 and any(w.startswith("dead dictionary: no latent fired") for w in dead["warnings"])
    assert dense["dense_fraction"] == 1 and any(w.startswith("dense: 100%") for w in dense["warnings"])
    assert all("ran out after 96 of the 10000 tokens" in w for w in (dead["warnings"][-1], dense["warnings"][-1]))
    json.dumps(res.metrics, allow_nan=False)  # strict JSON: no NaN anywhere
    # a constant target: every token the same, so the residual stream is the same at every position
    same = lambda: iter([torch.full((4, 8), 5)])  # noqa: E731
    res = evaluate_dictionaries(tiny_llama, {"d": _biased(hook, 32, 0.0)}, same, progress=False)
    m = res.metrics["d"]
    assert m["fvu"] is None and m["explained_variance"] is None
    assert "constant over the 32 evaluation tokens" in res.undefined["d"]["fvu"]
    assert any(w.startswith("fvu undefined: the target") for w in m["warnings"])
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in m.values())
    json.dumps(res.metrics, allow_nan=False)


def test_evaluation_refuses_non_finite_weights(tiny_llama):
    d = _biased("blocks.1.hook_resid_post", 32, 0.0)
    with torch.no_grad():
        d.W_dec[3, 4] = float("inf")
    with pytest.raises(ValueError, match="dictionary bad: W_dec holds NaN or Inf"):
        evaluate_dictionaries(tiny_llama, {"bad": d}, random_source(65, n_batches=1), progress=False)


@pytest.mark.parametrize("option,value", [("k", 0), ("before", -1), ("after", -2), ("max_tokens", 0)])
def test_top_context_counts_have_a_range(option, value):
    from circuits.dictionaries.features import top_contexts

    with pytest.raises(ValueError, match=f"top_contexts: {option} must be an integer"):
        top_contexts(None, _biased(HOOK, 8, 0.0), random_source(65, n_batches=1), **{option: value}, progress=False)


# ---------------------------------------------------------------------------------------------------- files
def _folder(tmp_path, name, cfg=None, tensors=None):
    folder = tmp_path / name
    folder.mkdir()
    base = {"architecture": "standard", "d_in": 8, "d_sae": 20, "metadata": {"hook_name": HOOK}}
    (folder / "cfg.json").write_text(json.dumps({**base, **(cfg or {})}))
    if tensors is not None:
        save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def _weights(**extra):
    gen = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(8, 20, generator=gen), "b_enc": torch.randn(20, generator=gen),
         "W_dec": torch.randn(20, 8, generator=gen), "b_dec": torch.randn(8, generator=gen)}
    return {**t, **extra}


def test_unknown_and_missing_tensors_are_refused(tmp_path):
    f = _folder(tmp_path, "out", tensors=_weights(b_dec_out=torch.zeros(8)))
    with pytest.raises(DictionaryFileError, match=r"unknown tensors \['b_dec_out'\].*separate output bias"):
        load_dictionary(f)
    f = _folder(tmp_path, "extra", tensors=_weights(foo=torch.zeros(3)))
    with pytest.raises(DictionaryFileError, match=r"unknown tensors \['foo'\] for architecture 'standard'"):
        load_dictionary(f)
    f = _folder(tmp_path, "skip", {"architecture": "skip_transcoder", "d_out": 8,
                                   "metadata": {"hook_name": HOOK, "hook_name_out": "blocks.0.hook_mlp_out"}},
                _weights())
    with pytest.raises(DictionaryFileError, match=r"missing weights \['W_skip'\]"):
        load_dictionary(f)
    f = _folder(tmp_path, "ones", tensors=_weights(scaling_factor=torch.ones(20)))  # a no-op: accepted
    assert set(dict(load_dictionary(f).named_parameters())) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    f = _folder(tmp_path, "scaled", tensors=_weights(scaling_factor=torch.full((20,), 2.0)))
    with pytest.raises(DictionaryFileError, match="scaling_factor is not all ones"):
        load_dictionary(f)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad):
    t = _weights()
    t["b_enc"][7] = bad
    with pytest.raises(DictionaryFileError, match="b_enc holds 1 NaN or Inf values of 20"):
        load_dictionary(_folder(tmp_path, "nan", tensors=t))


def test_shapes_are_checked_from_the_header_before_reading_weights(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("weights were read before the shapes were checked")

    monkeypatch.setattr(io, "load_file", never)
    f = _folder(tmp_path, "huge", {"d_sae": 4_000_000}, _weights())
    with pytest.raises(DictionaryFileError, match=r"W_enc has shape \(8, 20\), the cfg implies \(8, 4000000\)"):
        load_dictionary(f)
    f = _folder(tmp_path, "dtype", tensors={**_weights(), "b_dec": torch.zeros(8, dtype=torch.int64)})
    with pytest.raises(DictionaryFileError, match="b_dec has dtype I64"):
        load_dictionary(f)
    assert io.read_safetensors_header(tmp_path / "huge" / "sae_weights.safetensors")["W_dec"] == ("F32", (20, 8))


def test_corrupt_and_foreign_weight_files_are_clear_errors(tmp_path):
    good = _folder(tmp_path, "good", tensors=_weights())
    raw = (good / "sae_weights.safetensors").read_bytes()
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [8, 20], "data_offsets": [0, 640]}}).encode()
    cases = {
        "empty": b"",
        "short": raw[:5],
        "truncated": raw[: len(raw) // 2],
        "bomb": struct.pack("<Q", 2**60) + b"{}",
        "notjson": struct.pack("<Q", 4) + b"abcd",
        "offsets": struct.pack("<Q", len(header)) + header + b"\0" * 16,
        "pickle": PICKLED,
    }
    torch_save = tmp_path / "torch.pt"
    torch.save(_weights(), torch_save)
    cases["torch_save"] = torch_save.read_bytes()
    for name, data in cases.items():
        f = _folder(tmp_path, name)
        (f / "sae_weights.safetensors").write_bytes(data)
        with pytest.raises(DictionaryFileError, match=f"{name}/sae_weights.safetensors: ") as info:
            load_dictionary(f)
        assert isinstance(info.value, ValueError), name
    assert "pickle" in str(load_error(tmp_path / "pickle")) and "torch.save" in str(load_error(tmp_path / "torch_save"))


def load_error(folder):
    try:
        load_dictionary(folder)
    except DictionaryFileError as exc:
        return exc
    raise AssertionError(f"{folder} loaded")


def test_transcoders_keep_their_output_hook_in_the_metadata(tmp_path):
    d = Dictionary.create("transcoder", 8, 20, hook_in="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out",
                          d_out=6)
    save_dictionary(d, tmp_path / "tc")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out" and cfg["metadata"]["hook_layer_out"] == 0
    assert "hook_name_out" not in cfg and cfg["d_out"] == 6
    assert load_dictionary(tmp_path / "tc").hook_out == "blocks.0.hook_mlp_out"
    # files written with the output hook at the top level (earlier SAELens) still load
    meta = cfg.pop("metadata")
    old = {**cfg, "hook_name_out": meta.pop("hook_name_out"), "metadata": meta}
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(old))
    back = load_dictionary(tmp_path / "tc")
    assert back.hook_out == "blocks.0.hook_mlp_out" and back.config() == d.config()


# ---------------------------------------------------------------------------------------------------- figure
def test_activation_histogram_bars_span_their_log_bins():
    edges = torch.linspace(-3.0, 3.0, 49)
    counts = torch.arange(48)
    bar = activation_histogram(counts, edges, 0).data[0]
    x, w = torch.tensor(bar.x, dtype=torch.float64), torch.tensor(bar.width, dtype=torch.float64)
    # on the (log10) axis each bar covers exactly its bin, so bins of large activations are as wide as small ones
    torch.testing.assert_close(x - w / 2, edges[:-1].double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(x + w / 2, edges[1:].double(), rtol=0, atol=1e-9)
    assert list(bar.y) == counts.tolist()


# ---------------------------------------------------------------------------------------------------- resume
def _resume_setup(**cfg):
    specs = [DictSpec(HOOK, expansion=2, l1=1e-3), DictSpec(HOOK, activation="topk", k=3, expansion=2)]
    base = dict(tokens=24 * 32, batch_size=32, lr=3e-3, warmup_steps=3, checkpoint_every=1000, seed=0)
    return specs, TrainDictConfig(**{**base, **cfg})


def test_a_resume_under_other_settings_is_refused_naming_them(tmp_path):
    specs, cfg = _resume_setup()
    buf = TensorBuffer(gaussian_rows(768), batch_size=32, block_rows=256)
    train_dictionaries(None, None, specs, _resume_setup(checkpoint_every=5)[1], buffer=buf, workdir=tmp_path,
                       progress=False, stop_after=7)
    for change, named in [({"lr": 1e-3}, "lr: checkpoint 0.003, now 0.001"), ({"seed": 1}, "seed: checkpoint 0"),
                          ({"warmup_steps": 1}, "warmup_steps: checkpoint 3, now 1"),
                          ({"tokens": 48 * 32}, "tokens: checkpoint 768, now 1536")]:
        with pytest.raises(ResumeMismatchError, match=named):
            train_dictionaries(None, None, specs, _resume_setup(**change)[1], buffer=buf, workdir=tmp_path,
                               progress=False)
    wider = [DictSpec(HOOK, expansion=3, l1=1e-3, name=specs[0].label()), specs[1]]  # same label, other size
    with pytest.raises(ResumeMismatchError, match=r"specs\[0\].expansion: checkpoint 2, now 3\)"):
        train_dictionaries(None, None, wider, cfg, buffer=buf, workdir=tmp_path, progress=False)
    topk = [specs[0], DictSpec(HOOK, activation="topk", k=4, expansion=2, name=specs[1].label())]
    with pytest.raises(ResumeMismatchError, match=r"specs\[1\].k: checkpoint 3, now 4"):
        train_dictionaries(None, None, topk, cfg, buffer=buf, workdir=tmp_path, progress=False)
    moved = TensorBuffer(gaussian_rows(768, seed=5), batch_size=32, block_rows=256)  # other activations, same widths
    with pytest.raises(ResumeMismatchError, match=f"activations at {HOOK} differ from those the checkpoint"):
        train_dictionaries(None, None, specs, cfg, buffer=moved, workdir=tmp_path, progress=False)
    # settings that do not change the weights may change
    res = train_dictionaries(None, None, specs, _resume_setup(checkpoint_every=3, log_every=4)[1], buffer=buf,
                             workdir=tmp_path, progress=False)
    assert res.steps == 24
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingConfigError, match="is a file"):
        train_dictionaries(None, None, specs, cfg, buffer=buf, workdir=tmp_path / "file", progress=False)


class Killed(Exception):
    """Stands for the process dying mid-run."""


def test_a_run_interrupted_midway_resumes_from_its_timed_checkpoint(tmp_path, monkeypatch):
    specs, cfg = _resume_setup(checkpoint_seconds=2.5)
    buf = TensorBuffer(gaussian_rows(768), batch_size=32, block_rows=128)
    whole = train_dictionaries(None, None, specs, cfg, buffer=buf, progress=False)
    clock = iter(range(10**6))
    monkeypatch.setattr(T, "_clock", lambda: float(next(clock)))  # one second per look at the clock
    inner, calls = T._step_losses, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * 13:  # two dictionaries per step: the process dies during step 13
            raise Killed("the process died")
        return inner(*a, **k)

    monkeypatch.setattr(T, "_step_losses", failing)
    with pytest.raises(Killed):
        train_dictionaries(None, None, specs, cfg, buffer=buf, workdir=tmp_path, progress=False)
    saved = saved_steps(tmp_path / "resume")
    assert saved and 0 < saved[-1] <= 13 and saved[-1] % cfg.checkpoint_every != 0  # saved by time, not by steps
    monkeypatch.setattr(T, "_step_losses", inner)
    resumed = train_dictionaries(None, None, specs, cfg, buffer=buf, workdir=tmp_path, progress=False)
    assert resumed.steps == 24 and resumed.history == whole.history
    for lab, d in whole.dictionaries.items():
        for (n, p), (_, q) in zip(d.named_parameters(), resumed.dictionaries[lab].named_parameters(), strict=True):
            assert torch.equal(p, q), f"{lab} {n} differs after the resume"
