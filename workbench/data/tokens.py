"""Small helpers around Hugging Face tokenizers: special ids, plain encoding, single-token look-ups.

Every function takes any ``transformers.PreTrainedTokenizerBase`` (slow or fast). Text is always encoded
without the tokenizer's own special tokens; callers add BOS/EOS themselves, so rows look the same whatever
the tokenizer's ``add_bos_token`` setting is.
"""

from __future__ import annotations

from typing import Any

# a transformers.PreTrainedTokenizerBase, typed loosely so that this module imports without transformers
Tokenizer = Any


def tokenizer_name(tokenizer: Tokenizer) -> str:
    """A short human-readable name for error messages (its ``name_or_path``, else its class name)."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (and no "sequence too long" warning)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def bos_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's BOS id, or None when it has none."""
    return getattr(tokenizer, "bos_token_id", None)


def eos_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's EOS id, or None when it has none."""
    return getattr(tokenizer, "eos_token_id", None)


def pad_id(tokenizer: Tokenizer) -> int:
    """The id used for padding: the pad token, else EOS, else BOS, else 0 (padding is always masked or unread)."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def vocab_size(tokenizer: Tokenizer) -> int:
    """Number of ids the tokenizer can produce (``len(tokenizer)``, which counts added tokens)."""
    return len(tokenizer)


def special_token_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of all special tokens: ``all_special_ids`` plus added tokens flagged ``special``."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for idx, token in decoder.items():
        if getattr(token, "special", False):
            ids.add(int(idx))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids.add(int(value))
    return ids


def _one_token(tokenizer: Tokenizer, text: str) -> list[int]:
    """``encode(text)``, with an unknown-token result counting as no token at all."""
    ids = encode(tokenizer, text)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids and text.strip() != getattr(tokenizer, "unk_token", None):
        return []
    return ids


def single_token_id(tokenizer: Tokenizer, text: str) -> int:
    """The id of ``text`` when it encodes to exactly one (known) token; ValueError naming the string and
    tokenizer otherwise."""
    ids = _one_token(tokenizer, text)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(encode(tokenizer, text))
        raise ValueError(
            f"{text!r} is not a single token for {tokenizer_name(tokenizer)}: it encodes to {pieces}"
        )
    return int(ids[0])


def is_single_token(tokenizer: Tokenizer, text: str) -> bool:
    """Whether ``text`` encodes to exactly one token (not the unknown token)."""
    return len(_one_token(tokenizer, text)) == 1
