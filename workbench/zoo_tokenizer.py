"""The zoo's text: a small byte-level BPE tokenizer trained once on the bundled corpora, and the token streams.

A text setting (corpora, vocabulary size) is trained once into ``$WORKBENCH_HOME/zoo/text-<key>/``:
``tokenizer/`` (a Hugging Face tokenizer folder) and ``tokens.safetensors`` (``train`` and ``heldout``: int32 [n]
token streams, the documents of each split of :func:`workbench.data.load_documents` joined with an end-of-text
token). Every member of a family that names the same setting shares it. BPE training is deterministic for a
given corpus text and vocabulary size, and the cache is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from workbench.atomic import atomic_dir
from workbench.paths import zoo_dir

BOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENS = "tokens.safetensors"


@dataclass(frozen=True)
class TextConfig:
    """Which bundled corpora the tokenizer and the token streams are made of, and the vocabulary size."""

    corpora: tuple[str, ...] = ("wiki", "news", "shakespeare")
    vocab: int = 2048

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{'-'.join(self.corpora)}-v{self.vocab}-{hashlib.blake2b(blob, digest_size=4).hexdigest()}"


def text_dir(cfg: TextConfig) -> Path:
    """The cache folder of a text setting."""
    return zoo_dir() / f"text-{cfg.key()}"


def _documents(cfg: TextConfig, split: str) -> list[str]:
    from workbench.data import load_documents

    docs: list[str] = []
    for name in cfg.corpora:
        docs.extend(load_documents(name, split))
    return docs


def _train_tokenizer(cfg: TextConfig):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if cfg.vocab < 300:
        raise ValueError(f"vocab must be at least 300 (256 bytes + specials + merges), got {cfg.vocab}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_documents(cfg, "train"), trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=None)


def _stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents joined as ``<eot> doc <eot> doc ...``: int32 [n]."""
    ids = tokenizer(docs, add_special_tokens=True)["input_ids"]
    return torch.tensor([t for row in ids for t in row], dtype=torch.int32)


def ensure_text(cfg: TextConfig) -> Path:
    """Train the tokenizer and encode the splits once (cached); returns the setting's folder."""
    from safetensors.torch import save_file

    folder = text_dir(cfg)
    if (folder / TOKENS).is_file():
        return folder
    tokenizer = _train_tokenizer(cfg)
    with atomic_dir(folder, overwrite=True) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        save_file(
            {"train": _stream(tokenizer, _documents(cfg, "train")), "heldout": _stream(tokenizer, _documents(cfg, "heldout"))},
            tmp / TOKENS,
        )
        (tmp / "config.json").write_text(json.dumps(asdict(cfg)))
    return folder


def load_text_tokenizer(cfg: TextConfig):
    """The setting's Hugging Face tokenizer (trained on first use)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(ensure_text(cfg) / "tokenizer"))


@cache
def _streams(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / TOKENS))


def token_streams(cfg: TextConfig) -> dict[str, torch.Tensor]:
    """``{"train": int32 [n_train], "heldout": int32 [n_heldout]}`` (built on first use)."""
    return _streams(str(ensure_text(cfg)))


def windows(stream: torch.Tensor, batch: int, length: int, generator: torch.Generator, bos_id: int) -> torch.Tensor:
    """``batch`` rows of ``[BOS] + length - 1`` tokens from random offsets of ``stream`` [n]: LongTensor [batch, length]."""
    body = length - 1
    if stream.numel() <= body:
        raise ValueError(f"a token stream of {stream.numel()} tokens is too short for windows of {length}")
    starts = torch.randint(0, stream.numel() - body, (batch,), generator=generator)
    rows = torch.stack([stream[s : s + body] for s in starts.tolist()]).long()
    return torch.cat([torch.full((batch, 1), bos_id, dtype=torch.long), rows], dim=1)
