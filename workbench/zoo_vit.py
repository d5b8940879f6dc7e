"""The vision family of the zoo: small vision transformers trained on scikit-learn's bundled 8x8 digits.

Each member is a Hugging Face ``ViTForImageClassification`` (patch embedding, class token, learned positions,
pre-LayerNorm blocks, a GELU or ReLU MLP, a linear classifier on the final class token), initialised from a seed and
trained with :func:`workbench.train.train_causal_lm` (resumable; checkpoints are Hugging Face folders) on the images of
``sklearn.datasets.load_digits`` (1,797 images, bundled with scikit-learn: no download), with a fixed
train / held-out / test split.

Instrumentation: the same path as every other model. transformer-lens 4's ``TransformerBridge`` boots a
``ViTForImageClassification`` folder offline (its ``ViTArchitectureAdapter``), and compatibility mode gives the hook
names of the language models (``hook_embed``, ``blocks.L.hook_resid_pre``, ``blocks.L.ln1.hook_scale``,
``blocks.L.attn.hook_pattern``, ``blocks.L.mlp.hook_pre``, ``blocks.L.mlp.hook_post``, ``blocks.L.hook_mlp_out``,
``ln_final.hook_scale``, ...), ``run_with_cache`` on ``pixel_values`` [batch, 1, 8, 8] and the stacked weights
(``W_V`` [L, H, d, d_head], ``W_O``, ``W_in``, ``W_out``). So no second hooked module: :func:`workbench.models.load_model`
loads ``toy/vit-...`` as it loads ``toy/gpt-...``. Two limits of the library, handled there: its weight processing fails
on ViTs (it looks for a token embedding), so vision folders always load unprocessed; and the bridge has no ``W_U``
(the classifier head stays a Hugging Face module: ``bridge.original_model.classifier``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from workbench.train import TrainConfig, train_causal_lm

FAMILY = "vit"
DESCRIPTION = "vision transformers on the bundled 8x8 digits: patch embedding, class token, pre-LayerNorm, ReLU / GELU MLP"
SPLITS = ("train", "heldout", "test")
SPLIT_SEED = 0  # one fixed split for every member: they share their test images
N_HELDOUT = N_TEST = 360


@dataclass(frozen=True)
class VisionMember:
    """One member: architecture, size and optimisation (``patch``: side of the square patches; 2 gives 16 patches)."""

    name: str
    d_model: int
    n_layers: int
    activation: str  # "relu" or "gelu" (exact)
    patch: int = 4
    steps: int = 1200
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    shift: int = 1  # training images shifted by up to this many pixels (a seeded draw per step)
    seed: int = 0
    n_checkpoints: int = 6
    resume_every: int = 500

    @property
    def n_heads(self) -> int:
        return max(1, self.d_model // 16)

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "family": FAMILY, "n_heads": self.n_heads, "d_mlp": self.d_mlp, "data": "sklearn digits"}

    def n_parameters(self) -> int:
        d, f, n, p = self.d_model, self.d_mlp, self.n_layers, self.patch
        n_patches = (8 // p) ** 2
        embed = p * p * d + d + d + (n_patches + 1) * d
        block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
        return embed + n * block + 2 * d + d * 10 + 10

    def architecture(self) -> str:
        act = {"relu": "ReLU", "gelu": "GELU"}[self.activation]
        return (f"ViT: {self.patch}x{self.patch} patches of 8x8 digits + class token, learned positions, pre-LayerNorm, "
                f"{act} MLP; {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads, d_mlp {self.d_mlp}, "
                "10 classes")


def _member(d: int, layers: int, activation: str) -> VisionMember:
    return VisionMember(f"vit-{activation}-d{d}-l{layers}", d, layers, activation)


MEMBERS: dict[str, VisionMember] = {m.name: m for m in (
    _member(32, 2, "relu"), _member(64, 2, "relu"), _member(32, 4, "relu"), _member(64, 4, "relu"),
    _member(32, 2, "gelu"), _member(64, 4, "gelu"),
)}


def family_members() -> list[str]:
    """The members, smallest first."""
    return [m.name for m in sorted(MEMBERS.values(), key=lambda m: (m.n_parameters(), m.name))]


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> -1..1
    return images, torch.tensor(data.target, dtype=torch.long)


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images [n, 1, 8, 8] (pixel values scaled to -1..1) and labels [n] of one split: ``train`` (1,077),
    ``heldout`` (360, for fitting what a method fits) or ``test`` (360). The split is fixed (seed 0)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    images, labels = _digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n = len(labels)
    bounds = {"train": (0, n - N_HELDOUT - N_TEST), "heldout": (n - N_HELDOUT - N_TEST, n - N_TEST), "test": (n - N_TEST, n)}
    idx = order[slice(*bounds[split])]
    return images[idx].clone(), labels[idx].clone()


def shifted(images: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Each image [n, 1, 8, 8] moved by a random offset in -shift..shift on both axes (background -1 fills in)."""
    if shift <= 0:
        return images
    n = images.shape[0]
    padded = torch.nn.functional.pad(images, (shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def make_vit(cfg: VisionMember):
    """A freshly initialised (seeded) ``ViTForImageClassification`` for ``cfg``, dropout off."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(cfg.seed)
    hf = ViTConfig(image_size=8, patch_size=cfg.patch, num_channels=1, hidden_size=cfg.d_model,
                   num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_mlp,
                   hidden_act=cfg.activation, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                   layer_norm_eps=1e-6, num_labels=10, id2label={i: str(i) for i in range(10)},
                   label2id={str(i): i for i in range(10)})
    return ViTForImageClassification(hf)


def accuracy_and_loss(model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of a Hugging Face classifier on images [n, 1, 8, 8]."""
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(pixel_values=images.to(device)).logits
    labels = labels.to(device)
    return {"accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(logits, labels))}


def train_vit(cfg: VisionMember, workdir: Path, progress: bool = True, device: str | None = None) -> list[dict]:
    """Train (or resume) member ``cfg`` into ``workdir`` on one torch thread; returns the trainer's history.

    Update ``s`` draws its batch (and its shifts) from a generator seeded with ``(seed, s)``. The history's ``eval``
    entries (one per checkpoint) hold ``{train,heldout,test}_{accuracy,loss}``. ``device`` defaults to
    ``$WORKBENCH_ZOO_DEVICE`` (else the CPU).
    """
    from workbench.zoo_families import log_checkpoint_steps

    device = device or os.environ.get("WORKBENCH_ZOO_DEVICE", "cpu")
    sets = {split: digits(split) for split in SPLITS}
    train_x, train_y = sets["train"]

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(train_y), (cfg.batch,), generator=gen)
        return shifted(train_x[idx], gen, cfg.shift).to(device), train_y[idx].to(device)

    def loss_fn(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        return torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels)

    def eval_fn(model, step: int) -> dict[str, float]:
        out = {}
        for split, (x, y) in sets.items():
            out.update({f"{split}_{k}": v for k, v in accuracy_and_loss(model, x, y).items()})
        return out

    train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=max(1, min(100, cfg.steps // 10)),
                            weight_decay=cfg.weight_decay, resume_every=cfg.resume_every,
                            save_steps=log_checkpoint_steps(cfg.steps, min(cfg.n_checkpoints, cfg.steps + 1)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_vit(cfg).to(device)
        return train_causal_lm(model, batch_fn, train_cfg, workdir, eval_fn=eval_fn, progress=progress,
                               description=cfg.name, loss_fn=loss_fn)
    finally:
        torch.set_num_threads(threads)


def is_vision_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a Hugging Face ViT (its ``config.json`` says ``model_type`` "vit")."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type") == "vit"
    except (OSError, ValueError, AttributeError):
        return False
