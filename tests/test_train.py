"""The trainer: deterministic, and a run killed mid-way resumes to the same weights bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.induction_toy import InductionConfig, log_spaced_steps
from workbench.train import TrainConfig, saved_steps

CFG = dict(vocab=32, half_len=8, d_model=32, n_heads=2, batch=16, steps=150, lr=3e-3, warmup=10, n_checkpoints=6,
           resume_every=10)

SCRIPT = """
import sys, json
from pathlib import Path
from workbench.induction_toy import InductionConfig, train_induction
train_induction(InductionConfig(**json.loads(sys.argv[2])), Path(sys.argv[1]), progress=False)
"""


def _train(folder: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(folder), json.dumps(CFG)], env=env)


def _weights(folder: Path) -> dict[int, bytes]:
    root = folder / "checkpoints"
    return {s: (root / f"step-{s:07d}" / "model.safetensors").read_bytes() for s in saved_steps(root)}


def test_killed_run_resumes_to_identical_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _train(whole).wait(timeout=300) == 0

    proc = _train(killed)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = saved_steps(killed / "resume")
        if steps and steps[-1] >= 30:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    assert saved_steps(killed / "resume")[-1] < CFG["steps"]

    assert _train(killed).wait(timeout=300) == 0
    expected = list(log_spaced_steps(CFG["steps"], CFG["n_checkpoints"]))
    a, b = _weights(whole), _weights(killed)
    assert sorted(a) == sorted(b) == expected
    for step in expected:
        assert a[step] == b[step], f"weights differ at step {step}"
    history = [json.loads((f / "resume" / f"step-{CFG['steps']:07d}" / "state.json").read_text())["history"]
               for f in (whole, killed)]
    assert history[0] == history[1]


def test_log_spaced_steps_and_schedule():
    steps = log_spaced_steps(1000, 24)
    assert steps[0] == 0 and steps[-1] == 1000 and len(steps) >= 20
    assert all(b > a for a, b in zip(steps[:-1], steps[1:], strict=True))
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == 0.1 and cfg.lr_at(9) == 1.0
    assert abs(cfg.lr_at(100) - 0.1) < 1e-9
    assert InductionConfig().to_dict()["n_layers"] == 2
