"""Checkpoint families of the zoo: small language models trained on the bundled text, with log-spaced checkpoints.

Two families, each member an ordinary transformers configuration initialised from a seed and trained with
:func:`workbench.train.train_causal_lm` (resumable; checkpoints are Hugging Face folders):

- ``llama``: Llama-style (the architecture of SmolLM2): RMSNorm, rotary positions, SiLU-gated MLP, tied embeddings;
- ``gpt``: GPT-2-style: LayerNorm, learned positions, ReLU MLP (``gpt-relu-*``), plus a GELU variant (``gpt-gelu-*``).

All members share one byte-level BPE tokenizer (:mod:`workbench.zoo_tokenizer`). Batch ``s`` is drawn from the
training split's token stream by a generator seeded with ``(seed, s)``; training and held-out loss are measured at
every checkpoint on fixed windows of the training and held-out streams. Torch runs on one thread during a build,
so a rebuild gives the same weights, bit for bit, on the same machine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from workbench.induction_toy import log_spaced_steps
from workbench.train import TrainConfig, train_causal_lm
from workbench.zoo_tokenizer import TextConfig, load_text_tokenizer, token_streams, windows

FAMILIES: dict[str, str] = {
    "llama": "Llama-style: RMSNorm, rotary, SiLU-gated MLP (the architecture of SmolLM2)",
    "gpt": "GPT-2-style: LayerNorm, learned positions, ReLU MLP (and one GELU member)",
}


@dataclass(frozen=True)
class FamilyConfig:
    """One member: architecture, size, data and optimisation."""

    name: str
    family: str
    arch: str  # "llama" or "gpt2"
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    activation: str  # "silu" (gated), "relu" or "gelu_new"
    steps: int = 400
    batch: int = 8
    context: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    n_checkpoints: int = 24
    eval_windows: int = 16
    resume_every: int = 100
    text: TextConfig = field(default_factory=TextConfig)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = {"corpora": list(self.text.corpora), "vocab": self.text.vocab}
        return out

    def n_parameters(self) -> int:
        """Trainable parameters (embeddings tied with the unembedding)."""
        d, f, v, n = self.d_model, self.d_mlp, self.text.vocab, self.n_layers
        if self.arch == "llama":
            return v * d + n * (4 * d * d + 3 * d * f + 2 * d) + d
        return v * d + self.context * d + n * (4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d) + 2 * d

    def architecture(self) -> str:
        if self.arch == "llama":
            kind = "Llama-style: RMSNorm, rotary, SiLU-gated MLP"
        else:
            act = {"relu": "ReLU", "gelu_new": "GELU (tanh)", "gelu": "GELU"}.get(self.activation, self.activation)
            kind = f"GPT-2-style: LayerNorm, learned positions, {act} MLP"
        return (f"{kind}; {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads, d_mlp {self.d_mlp}, "
                f"vocab {self.text.vocab}, context {self.context}")


def log_checkpoint_steps(total: int, count: int) -> tuple[int, ...]:
    """At least ``count`` distinct steps in [0, total] (0 and ``total`` included), spaced logarithmically."""
    if total < count - 1:
        raise ValueError(f"{total} steps cannot hold {count} distinct checkpoints")
    n = count
    while len(steps := log_spaced_steps(total, n)) < count:  # denser grids until enough distinct steps remain
        n += 1
    return steps


def _member(family: str, d: int, layers: int, activation: str, steps: int) -> FamilyConfig:
    heads = max(1, d // 32)
    if family == "llama":
        name = f"llama-d{d}-l{layers}"
        return FamilyConfig(name, "llama", "llama", d, layers, heads, 8 * ((8 * d // 3 + 7) // 8), "silu", steps=steps)
    name = f"gpt-{activation.split('_')[0]}-d{d}-l{layers}"
    return FamilyConfig(name, "gpt", "gpt2", d, layers, heads, 4 * d, activation, steps=steps)


MEMBERS: dict[str, FamilyConfig] = {
    c.name: c
    for c in (
        _member("llama", 64, 2, "silu", 2000),
        _member("llama", 128, 2, "silu", 2000),
        _member("llama", 64, 4, "silu", 2000),
        _member("llama", 128, 4, "silu", 3000),
        _member("gpt", 64, 2, "relu", 2000),
        _member("gpt", 128, 2, "relu", 2000),
        _member("gpt", 64, 4, "relu", 2000),
        _member("gpt", 128, 4, "relu", 3000),
        _member("gpt", 128, 2, "gelu_new", 2000),
        # not in a family: the dashboard's demo of the training dynamics (about 30 s to build on two cores)
        FamilyConfig("llama-tiny-demo", "demo", "llama", 32, 2, 2, 88, "silu", steps=40, batch=8, context=64,
                     n_checkpoints=10, eval_windows=4, text=TextConfig(("news",), 512)),
    )
}


def family_members(family: str) -> list[str]:
    """Member names of ``family`` (smallest first); an unknown family raises ValueError listing the families."""
    if family not in FAMILIES:
        raise ValueError(f"unknown zoo family {family!r}; families: {', '.join(FAMILIES)}")
    members = [c for c in MEMBERS.values() if c.family == family]
    return [c.name for c in sorted(members, key=lambda c: (c.n_parameters(), c.name))]


def make_model(cfg: FamilyConfig, bos_id: int, pad_id: int):
    """A freshly initialised (seeded) transformers causal LM for ``cfg``, dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    if cfg.arch == "llama":
        hf = LlamaConfig(
            vocab_size=cfg.text.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
            max_position_embeddings=cfg.context, tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=bos_id,
            pad_token_id=pad_id, rope_theta=10000.0, hidden_act="silu",
        )
        return LlamaForCausalLM(hf)
    if cfg.arch == "gpt2":
        hf = GPT2Config(
            vocab_size=cfg.text.vocab, n_positions=cfg.context, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.activation, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=pad_id,
        )
        return GPT2LMHeadModel(hf)
    raise ValueError(f"unknown architecture {cfg.arch!r}; accepted: llama, gpt2")


def train_device() -> str:
    """The device zoo families train on: ``$WORKBENCH_ZOO_DEVICE`` (e.g. ``cuda``), default the CPU."""
    return os.environ.get("WORKBENCH_ZOO_DEVICE", "cpu")


def train_member(cfg: FamilyConfig, workdir: Path, progress: bool = True, device: str | None = None) -> list[dict]:
    """Train (or resume) member ``cfg`` into ``workdir`` on one torch thread; returns the trainer's history.

    The history's ``eval`` entries (one per checkpoint) hold ``train_loss`` and ``heldout_loss``: mean next-token
    loss on ``eval_windows`` fixed windows of each split. ``device`` defaults to :func:`train_device`; weights are
    bit-identical across rebuilds on the same machine and device.
    """
    device = device or train_device()
    tokenizer = load_text_tokenizer(cfg.text)
    streams = token_streams(cfg.text)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    fixed = {
        split: windows(streams[split], cfg.eval_windows, cfg.context, torch.Generator().manual_seed(10_000 + i),
                       bos).to(device)
        for i, split in enumerate(("train", "heldout"))
    }

    def batch_fn(step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return windows(streams["train"], cfg.batch, cfg.context, gen, bos).to(device)

    def eval_fn(model, step: int) -> dict[str, float]:
        return {f"{split}_loss": float(model(input_ids=t, labels=t).loss) for split, t in fixed.items()}

    train_cfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup=max(1, min(50, cfg.steps // 10)), weight_decay=cfg.weight_decay,
        resume_every=cfg.resume_every, save_steps=log_checkpoint_steps(cfg.steps, min(cfg.n_checkpoints, cfg.steps + 1)),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_model(cfg, bos, pad).to(device)
        return train_causal_lm(model, batch_fn, train_cfg, workdir, tokenizer=tokenizer, eval_fn=eval_fn,
                               progress=progress, description=cfg.name)
    finally:
        torch.set_num_threads(threads)


def with_overrides(cfg: FamilyConfig, **changes: Any) -> FamilyConfig:
    """A copy of ``cfg`` with some fields changed (e.g. fewer steps for a quick build)."""
    return replace(cfg, **changes)
