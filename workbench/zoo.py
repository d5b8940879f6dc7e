"""The zoo: small models the workbench trains itself, deterministically, built on first use and cached.

A member lives in ``$WORKBENCH_HOME/zoo/<name>/``: ``checkpoints/step-<N>/`` (Hugging Face folders, one per saved
step), ``resume/`` while training, and ``manifest.json``, written last, which marks the member as built. Loading
``toy/<name>`` gives the final step; ``toy/<name>@<step>`` a saved one.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.atomic import write_json
from workbench.errors import ModelSpecError
from workbench.paths import zoo_dir
from workbench.train import CHECKPOINTS, RESUME, saved_steps, step_dir

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ZooSpec:
    """A zoo member: how to describe it and how to train it into a folder."""

    name: str
    description: str
    architecture: str
    parameters: str
    config: dict[str, Any]
    train: Callable[[Path, bool], list[dict]]
    report: Callable[[Path], dict[str, Any]] | None = None


def _induction_spec() -> ZooSpec:
    from workbench import induction_toy as toy

    cfg = toy.InductionConfig()

    def report(folder: Path) -> dict[str, Any]:
        from workbench.bridge import boot

        bridge = boot(step_dir(folder / CHECKPOINTS, cfg.steps), device="cpu", dtype=None)
        return toy.induction_report(bridge, cfg)

    return ZooSpec(
        name="induction-2l",
        description="2-layer attention-only transformer trained on repeated random tokens; grows induction heads.",
        architecture=(
            f"Llama-style, attention-only in function: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
            f"RMSNorm, rotary; MLPs zeroed and frozen; vocabulary {cfg.vocab} + BOS"
        ),
        parameters=f"{(2 * (cfg.vocab + 1) * cfg.d_model + cfg.n_layers * 4 * cfg.d_model**2) / 1000:.0f}k",
        config=cfg.to_dict(),
        train=lambda folder, progress: toy.train_induction(cfg, folder, progress=progress),
        report=report,
    )


def _family_spec(cfg) -> ZooSpec:
    from workbench.zoo_families import FAMILIES, train_member

    return ZooSpec(
        name=cfg.name,
        description=(f"{cfg.family} family ({FAMILIES[cfg.family]}), trained on the bundled text; log-spaced checkpoints."
                     if cfg.family in FAMILIES else "tiny Llama-style model for the demos; log-spaced checkpoints."),
        architecture=cfg.architecture(),
        parameters=f"{cfg.n_parameters() / 1e6:.2f}M",
        config=cfg.to_dict(),
        train=lambda folder, progress: train_member(cfg, folder, progress=progress),
    )


def _family_registry() -> dict[str, Callable[[], ZooSpec]]:
    from workbench.zoo_families import MEMBERS

    return {name: (lambda cfg=cfg: _family_spec(cfg)) for name, cfg in MEMBERS.items()}


def _ground_truth_spec(name: str) -> ZooSpec:
    from workbench.ground_truth.build import evaluate, train_design
    from workbench.ground_truth.designs import DESIGNS

    design = DESIGNS[name]()

    def report(folder: Path) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(step_dir(folder / CHECKPOINTS, design.steps))).eval()
        return {"nodes": sorted(design.nodes), "edges": sorted(design.edges), **evaluate(model, design)}

    d = design.d_model
    return ZooSpec(
        name=name,
        description=f"ground truth (designed by strict interchange training): {design.description}",
        architecture=(f"Llama-style, {'attention-only in function' if not design.d_mlp else 'with MLPs'}: "
                      f"{design.n_layers} layers, d_model {d}, {design.n_heads} heads, RMSNorm, rotary; "
                      + (f"SwiGLU MLPs of width {design.d_mlp}" if design.d_mlp else "MLPs zeroed and frozen")
                      + f"; vocabulary {len(design.names)}"),
        parameters=f"{(2 * len(design.names) * d + design.n_layers * (4 * d * d + 3 * d * design.d_mlp)) / 1000:.0f}k",
        config=design.config(),
        train=lambda folder, progress: train_design(design, folder, progress=progress),
        report=report,
    )


def _ground_truth_registry() -> dict[str, Callable[[], ZooSpec]]:
    from workbench.ground_truth.designs import DESIGNS

    return {name: (lambda name=name: _ground_truth_spec(name)) for name in DESIGNS}


def _vision_spec(name: str) -> ZooSpec:
    from workbench import zoo_vit

    cfg = zoo_vit.MEMBERS[name]

    def report(folder: Path) -> dict[str, Any]:
        from transformers import ViTForImageClassification

        model = ViTForImageClassification.from_pretrained(str(step_dir(folder / CHECKPOINTS, cfg.steps))).eval()
        return {f"test_{k}": v for k, v in zoo_vit.accuracy_and_loss(model, *zoo_vit.digits("test")).items()}

    return ZooSpec(
        name=name,
        description=f"{zoo_vit.FAMILY} family ({zoo_vit.DESCRIPTION}); trained on the bundled 8x8 digits.",
        architecture=cfg.architecture(),
        parameters=f"{cfg.n_parameters() / 1000:.0f}k",
        config=cfg.to_dict(),
        train=lambda folder, progress: zoo_vit.train_vit(cfg, folder, progress=progress),
        report=report,
    )


def _vision_registry() -> dict[str, Callable[[], ZooSpec]]:
    from workbench.zoo_vit import MEMBERS

    return {name: (lambda name=name: _vision_spec(name)) for name in MEMBERS}


_REGISTRY: dict[str, Callable[[], ZooSpec]] = {
    "induction-2l": _induction_spec, **_family_registry(), **_ground_truth_registry(), **_vision_registry()
}


def names() -> list[str]:
    """Names of the zoo's members."""
    return sorted(_REGISTRY)


def families() -> dict[str, list[str]]:
    """The checkpoint families of language models and their members (smallest first); see also
    :func:`vision_families`."""
    from workbench.zoo_families import FAMILIES, family_members

    return {family: family_members(family) for family in FAMILIES}


def vision_families() -> dict[str, list[str]]:
    """The image-classifier families (``vit``: :mod:`workbench.zoo_vit`) and their members (smallest first)."""
    from workbench import zoo_vit

    return {zoo_vit.FAMILY: zoo_vit.family_members()}


def all_families() -> dict[str, list[str]]:
    """Every family: the checkpoint families of language models, then the image classifiers."""
    return {**families(), **vision_families()}


def targets(name: str) -> list[str]:
    """The members a build of ``name`` covers: a family's members, or the member itself.

    An unknown name raises a ModelSpecError listing the families and members.
    """
    fams = all_families()
    if name in fams:
        return fams[name]
    if name in _REGISTRY:
        return [name]
    raise ModelSpecError(f"unknown zoo family or member {name!r}; families: {', '.join(fams)}; members: {', '.join(names())}")


def get(name: str) -> ZooSpec:
    """The spec of member ``name``; an unknown name raises a ModelSpecError listing the members."""
    if name not in _REGISTRY:
        raise ModelSpecError(f"unknown zoo model {name!r}; the zoo has: {', '.join('toy/' + n for n in names())}")
    return _REGISTRY[name]()


def folder(name: str) -> Path:
    return zoo_dir() / name


def is_built(name: str) -> bool:
    """Whether the member's training finished (its manifest exists) with the member's current configuration.

    A folder built with another configuration (an older step count, say) is stale: it is not built, and
    :func:`build` trains the member again from scratch.
    """
    return (folder(name) / MANIFEST).is_file() and not is_stale(name)


def is_stale(name: str) -> bool:
    """Whether a finished build of ``name`` was made with a configuration other than the member's current one."""
    path = folder(name) / MANIFEST
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text()).get("config")
    except (OSError, json.JSONDecodeError):
        return True
    return json.loads(json.dumps(stored)) != json.loads(json.dumps(get(name).config))


def manifest(name: str) -> dict[str, Any]:
    """The member's manifest (config, saved steps, losses, seconds, report); it must be built."""
    return json.loads((folder(name) / MANIFEST).read_text())


def checkpoint_steps(name: str) -> list[int]:
    """Saved steps of a built member."""
    return saved_steps(folder(name) / CHECKPOINTS)


def build(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Train member ``name`` (resuming an interrupted build) unless it is built; returns its folder."""
    spec = get(name)
    dest = folder(name)
    if is_built(name) and not force:
        return dest
    with _build_lock(name):  # another process building the same member: wait for it, then reuse its result
        if is_built(name) and not force:
            return dest
        return _build_locked(name, spec, dest, progress, force)


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    zoo_dir().mkdir(parents=True, exist_ok=True)
    with open(zoo_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_locked(name: str, spec: ZooSpec, dest: Path, progress: bool, force: bool) -> Path:
    started = dest / "build-config.json"  # an interrupted build resumes only under the same configuration
    if dest.exists() and (force or is_stale(name) or (started.is_file() and _differs(started, spec.config))):
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(started, spec.config)
    t0, c0 = time.perf_counter(), time.process_time()
    history = spec.train(dest, progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    report = spec.report(dest) if spec.report else {}
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval"] for h in history if "eval" in h]
    write_json(
        dest / MANIFEST,
        {
            "name": name,
            "config": spec.config,
            "steps": checkpoint_steps(name),
            "final_loss": losses[-1] if losses else None,
            "final_eval": evals[-1] if evals else None,
            "seconds_last_session": seconds,
            "cpu_seconds_last_session": cpu_seconds,
            "history": history,
            "report": report,
        },
    )
    shutil.rmtree(dest / RESUME, ignore_errors=True)
    return dest


def _differs(path: Path, config: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text()) != json.loads(json.dumps(config))
    except (OSError, json.JSONDecodeError):
        return True


def model_dir(name: str, step: int | None = None, *, build_missing: bool = True) -> Path:
    """The Hugging Face folder of member ``name`` at ``step`` (default: its last step), training it if needed."""
    get(name)
    if not is_built(name):
        if not build_missing:
            raise ModelSpecError(f"toy/{name} is not built yet; run `workbench zoo build {name}`")
        build(name)
    steps = checkpoint_steps(name)
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ModelSpecError(f"toy/{name} has no checkpoint at step {step}; saved steps: {steps}")
    return step_dir(folder(name) / CHECKPOINTS, step)


def split_loss(name: str, step: int | None = None, split: str = "heldout", n_windows: int = 256,
               batch: int = 32, seed: int = 777) -> float:
    """Mean next-token loss (nats) of built member ``name`` at ``step`` (default: last) on ``n_windows`` random
    windows of the ``split`` token stream ("train" or "heldout"), drawn with ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.zoo_tokenizer import TextConfig, load_text_tokenizer, token_streams, windows

    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; accepted: train, heldout")
    cfg = get(name).config
    if "text" not in cfg:
        raise ValueError(f"toy/{name} is not a checkpoint-family member")
    text = TextConfig(corpora=tuple(cfg["text"]["corpora"]), vocab=int(cfg["text"]["vocab"]))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir(name, step))).eval()
    bos = load_text_tokenizer(text).bos_token_id
    tokens = windows(token_streams(text)[split], n_windows, int(cfg["context"]), torch.Generator().manual_seed(seed), bos)
    with torch.no_grad():
        losses = [float(model(input_ids=chunk, labels=chunk).loss) * len(chunk) for chunk in tokens.split(batch)]
    return sum(losses) / n_windows
