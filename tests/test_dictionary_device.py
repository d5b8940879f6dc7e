"""Device-true dictionary training: every tensor the trainer makes names its device (none silently lands on the CPU
default), and dictionaries are built directly on the requested device."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from circuits.dictionaries.buffer import TensorBuffer
from circuits.dictionaries.model import Dictionary
from circuits.dictionaries.train import DictSpec, TrainDictConfig, build_dictionaries, train_dictionaries

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / p) for p in ("circuits", "workbench", "probes"))
TORCH = str(Path(torch.__file__).parent)
#: factory functions whose result's device comes from the ``device`` argument or the global default
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.randperm,
             torch.randn, torch.rand, torch.randint, torch.linspace, torch.eye, torch.empty_strided}


class ImplicitDeviceAudit(TorchFunctionMode):
    """Records every factory call made from the project's code without a ``device=`` argument (file:line)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(PROJECT):
                self.found.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


def _rows(n: int = 512, d: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return {"h.in": x, "h.out": x @ torch.randn(d, d, generator=g) + 0.1}


@pytest.mark.parametrize("spec", [
    DictSpec("h.in", activation="topk", k=3, expansion=4),
    DictSpec("h.in", expansion=4, l1=1e-3),
    DictSpec("h.in", kind="skip_transcoder", hook_out="h.out", activation="topk", k=2, expansion=2),
], ids=["sae-topk-auxk", "sae-relu", "skip-transcoder"])
def test_training_creates_no_tensor_on_an_implicit_device(spec: DictSpec, tmp_path: Path) -> None:
    """A whole run (data-dependent start, steps with AuxK on dead latents, checkpoints, resume) under an audit of
    factory calls: the project's code always says where a new tensor goes."""
    cfg = TrainDictConfig(tokens=512 * 2, batch_size=64, block_batches=4, dead_tokens=64, checkpoint_every=4,
                          log_every=3, warmup_steps=2)
    buf = TensorBuffer(_rows(), batch_size=64, epochs=2)
    with ImplicitDeviceAudit() as audit:
        part = train_dictionaries(None, None, [spec], cfg, buffer=buf, workdir=tmp_path, progress=False,
                                  device="cpu", stop_after=6)
        res = train_dictionaries(None, None, [spec], cfg, buffer=buf, workdir=tmp_path, progress=False, device="cpu")
    assert part.steps == 6 and res.steps == cfg.steps
    assert audit.found == [], "tensors made without a device:\n" + "\n".join(sorted(set(audit.found)))
    assert any(row.get(spec.label(), {}).get("dead", 0) >= 0 for row in res.history)


def test_the_audit_catches_an_implicit_device() -> None:
    """The audit itself: a factory call without a device from project code is reported."""
    from circuits.dictionaries import train

    with ImplicitDeviceAudit() as audit:
        train.torch.zeros(3)  # called from this test file: not project code, not reported
    assert audit.found == []
    code = compile("import torch\ndef make():\n    return torch.zeros(3)\n", str(ROOT / "circuits" / "x.py"), "exec")
    scope: dict = {}
    exec(code, scope)
    with ImplicitDeviceAudit() as audit:
        scope["make"]()
    assert len(audit.found) == 1 and audit.found[0].endswith("zeros")


def test_dictionaries_are_built_on_the_requested_device() -> None:
    """On the meta device (no memory, no data): every parameter lands there, with the CPU-drawn shapes."""
    specs = [DictSpec("h.in", activation="topk", k=3, expansion=4),
             DictSpec("h.in", kind="skip_transcoder", hook_out="h.out", expansion=2)]
    dicts = build_dictionaries(None, specs, widths={"h.in": 12, "h.out": 12}, batch_size=64, device="meta")
    for d in dicts.values():
        assert {p.device.type for p in d.parameters()} == {"meta"}
        assert {b.device.type for b in d.buffers()} <= {"meta"}
    cpu = Dictionary.create("sae", 12, 48, hook_in="h.in", seed=3)
    meta = Dictionary.create("sae", 12, 48, hook_in="h.in", seed=3, device="meta")
    assert [p.shape for p in cpu.parameters()] == [p.shape for p in meta.parameters()]
    assert {p.device.type for p in meta.parameters()} == {"meta"}


def test_results_are_the_same_whatever_the_device_argument_says_for_the_cpu() -> None:
    """``device=None`` (no model: the CPU) and ``device='cpu'`` give the same weights, returned on the CPU."""
    cfg = TrainDictConfig(tokens=512, batch_size=64, warmup_steps=2)
    spec = DictSpec("h.in", activation="topk", k=3, expansion=4)
    a = train_dictionaries(None, None, [spec], cfg, buffer=TensorBuffer(_rows(), batch_size=64), progress=False)
    b = train_dictionaries(None, None, [spec], cfg, buffer=TensorBuffer(_rows(), batch_size=64), progress=False,
                           device="cpu")
    for (_, da), (_, db) in zip(a.dictionaries.items(), b.dictionaries.items(), strict=True):
        for pa, pb in zip(da.parameters(), db.parameters(), strict=True):
            assert pa.device.type == "cpu" and torch.equal(pa, pb)


def test_harvest_training_and_evaluation_name_their_device(tiny_gpt2) -> None:
    """The whole verb path on a model (live harvest, training, evaluation with spliced losses) makes no tensor on an
    implicit device from the project's code."""
    from circuits.dictionaries.buffer import random_source
    from circuits.dictionaries.evaluate import evaluate_dictionaries

    src = random_source(65, seq_len=16, batch_size=8, n_batches=8, bos_id=64)
    spec = DictSpec("blocks.0.ln2.hook_normalized", kind="transcoder", hook_out="blocks.0.hook_mlp_out",
                    activation="topk", k=4, expansion=2)
    cfg = TrainDictConfig(tokens=512, batch_size=64, block_batches=4, warmup_steps=2)
    with ImplicitDeviceAudit() as audit:
        res = train_dictionaries(tiny_gpt2, src, [spec], cfg, progress=False, device="cpu")
        ev = evaluate_dictionaries(tiny_gpt2, res.dictionaries, src, max_tokens=128, progress=False, device="cpu")
    assert res.steps == cfg.steps and ev.tokens >= 128
    assert audit.found == [], "tensors made without a device:\n" + "\n".join(sorted(set(audit.found)))
