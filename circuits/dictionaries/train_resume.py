"""Resume checkpoints of dictionary training: the settings a checkpoint records and compares, a fingerprint of the
activations it was trained on, and the atomic save and load of weights, Adam state, loss scalers and dead-latent
counters (``workdir/resume/step-<N>/``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuits.dictionaries.train_config import (
    RESUME_FREE,
    DictSpec,
    ResumeMismatchError,
    TrainDictConfig,
)
from workbench.atomic import atomic_dir, clean_stale_tmp, write_json
from workbench.train import _optim_from_tensors, _optim_to_tensors, saved_steps, step_dir


def _settings(cfg: TrainDictConfig, specs: Sequence[DictSpec], widths: dict[str, int]) -> dict[str, Any]:
    """The settings a checkpoint records (JSON values): everything that changes the trained weights."""
    config = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in RESUME_FREE}
    return {"config": config, "specs": [json.loads(json.dumps(asdict(s))) for s in specs], "widths": widths}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``name: checkpoint X, now Y`` for every recorded setting that differs (settings a checkpoint lacks are
    not compared)."""
    out = []
    for k, v in now.get("config", {}).items():
        if k in saved.get("config", {}) and saved["config"][k] != v:
            out.append(f"{k}: checkpoint {saved['config'][k]!r}, now {v!r}")
    if "specs" in saved and saved["specs"] != now["specs"]:
        if len(saved["specs"]) != len(now["specs"]):
            out.append(f"specs: checkpoint has {len(saved['specs'])} dictionaries, now {len(now['specs'])}")
        for i, (a, b) in enumerate(zip(saved["specs"], now["specs"], strict=False)):
            out += [f"specs[{i}].{k}: checkpoint {a.get(k)!r}, now {b[k]!r}" for k in b
                    if k != "name" and a.get(k) != b[k]]  # a name only sets the label, compared on its own
    if "widths" in saved and saved["widths"] != now["widths"]:
        out.append(f"hook widths: checkpoint {saved['widths']}, now {now['widths']} (another model?)")
    return out


def _fingerprint(block) -> dict[str, Any]:
    """A few stored rows of a block (its first 4 rows, first 8 columns per hook): a resume re-harvesting the
    block must see the same activations."""
    return {"block": block.index, "rows": {h: r[:4, :8].tolist() for h, r in block.rows.items()}}


def _check_fingerprint(saved: dict[str, Any] | None, block, folder: Path) -> None:
    if not saved or saved.get("block") != block.index:
        return
    for h, rows in saved["rows"].items():
        if h not in block.rows:
            continue
        got = block.rows[h][:4, :8]
        want = torch.tensor(rows, dtype=got.dtype, device=got.device)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise ResumeMismatchError(
                f"{folder}: the activations at {h} differ from those the checkpoint was trained on (another model, "
                "corpus, sequence length or token source?); resume with the same inputs or use another workdir")


def _save(workdir: Path, step: int, position: tuple[int, int], dicts, optims, since, history, settings,
          fingerprint, scalers=None) -> None:
    root = workdir / "resume"
    with atomic_dir(step_dir(root, step), overwrite=True) as tmp:
        for i, (label, d) in enumerate(dicts.items()):
            save_file({n: p.detach().to("cpu", copy=True).contiguous() for n, p in d.named_parameters()},
                      str(tmp / f"d{i}.safetensors"))
            tensors, meta = _optim_to_tensors(optims[label])
            tensors = {k: v.to("cpu") for k, v in tensors.items()}
            tensors["since"] = since[label].to("cpu", copy=True)
            tensors.update(scalers[label].state() if scalers else {})
            save_file(tensors, str(tmp / f"o{i}.safetensors"))
        write_json(tmp / "state.json", {"step": step, "block": position[0], "batch": position[1], "history": history,
                                         "labels": list(dicts), "config": settings["config"],
                                         "specs": settings["specs"], "widths": settings["widths"],
                                         "fingerprint": fingerprint,
                                         "optim": {lab: _optim_to_tensors(o)[1] for lab, o in optims.items()}})
    for old in saved_steps(root):
        if old != step:
            shutil.rmtree(step_dir(root, old), ignore_errors=True)


def _load(workdir: Path, dicts, optims, since, settings=None, scalers=None):
    """Restore the newest checkpoint into ``dicts``/``optims``/``since`` (and fp16 loss ``scalers``): (step, block,
    batch, history,
    fingerprint), or None without one. ResumeMismatchError when it was made under other ``settings``."""
    root = workdir / "resume"
    clean_stale_tmp(root)
    steps = saved_steps(root)
    if not steps:
        return None
    folder = step_dir(root, steps[-1])
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeMismatchError(f"{folder / 'state.json'}: unreadable checkpoint ({exc}); delete {folder} to "
                                  "resume from scratch") from exc
    if state["labels"] != list(dicts):
        raise ResumeMismatchError(f"{folder}: the checkpoint holds {state['labels']}, this run trains {list(dicts)}")
    if settings is not None:
        diffs = _differences(state, settings)
        if diffs:
            raise ResumeMismatchError(
                f"{folder}: the checkpoint was made with other settings ({'; '.join(diffs)}); resume with the "
                f"same settings, or start a fresh run in another workdir")
    for i, (label, d) in enumerate(dicts.items()):
        try:
            weights = load_file(str(folder / f"d{i}.safetensors"))
            tensors = load_file(str(folder / f"o{i}.safetensors"))
        except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
            raise ResumeMismatchError(f"{folder}: unreadable checkpoint weights ({exc}); delete {folder} to resume "
                                      "from scratch") from exc
        with torch.no_grad():
            for n, p in d.named_parameters():
                if n not in weights or weights[n].shape != p.shape:
                    raise ResumeMismatchError(f"{folder}: {label} {n} does not match this run's dictionary shape "
                                              f"{tuple(p.shape)}")
                p.copy_(weights[n])
        since[label] = tensors.pop("since").to(since[label].device)
        scaled = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("scaler.")]}
        if scalers:
            scalers[label].load(scaled)
        optims[label].load_state_dict(_optim_from_tensors(tensors, state["optim"][label]))
    return int(state["step"]), int(state["block"]), int(state["batch"]), list(state["history"]), \
        state.get("fingerprint")
