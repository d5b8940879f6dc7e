"""Where the workbench keeps its caches and runs on disk."""

from __future__ import annotations

import os
from pathlib import Path


def workbench_home() -> Path:
    """The cache root: ``$WORKBENCH_HOME``, default ``~/.cache/workbench``. Created on first use."""
    root = Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "workbench").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted pretrained models (e.g. SmolLM2 from its GGUF file)."""
    return workbench_home() / "models"


def zoo_dir() -> Path:
    """The project's own trained models and their checkpoints."""
    return workbench_home() / "zoo"


def runs_dir() -> Path:
    """The run store: ``$WORKBENCH_RUNS``, default ``$WORKBENCH_HOME/runs``."""
    env = os.environ.get("WORKBENCH_RUNS")
    return Path(env).expanduser() if env else workbench_home() / "runs"
