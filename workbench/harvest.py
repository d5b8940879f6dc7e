"""Streaming harvest: run batches through a hooked model and hand each hooked activation to consumers.

Nothing is cached: a consumer receives ``(hook_name, activation, attention_mask)`` for each batch while the forward
pass is running and keeps whatever summary it wants. Memory therefore stays bounded by one batch whatever the token
budget. When no consumer needs the logits, the forward pass stops right after the last requested hook has fired
(the later layers and the unembedding are never computed).

Rows are right-padded (as :func:`workbench.data.token_batches` makes them), so in a causal model a padding token
never changes the activations of the real tokens before it; consumers mask padding with ``attention_mask``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

LOGITS = "logits"


@runtime_checkable
class Consumer(Protocol):
    """Receives activations batch by batch.

    ``hooks``: the hook names it wants (``"logits"`` for the model's output logits [batch, seq, vocab]).
    ``consume(name, activation, mask)``: activation [batch, seq, ...] (attention patterns [batch, heads, q, k]),
    mask [batch, seq] (1 = real token). The activation tensor is only valid during the call.
    """

    hooks: Sequence[str]

    def consume(self, name: str, activation: torch.Tensor, mask: torch.Tensor) -> None: ...


@dataclass
class HarvestStats:
    """What a harvest did: batches, real tokens, wall seconds, tokens per second."""

    batches: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


class _Stop(Exception):
    """Raised inside the last needed hook to end a forward pass early."""


def check_hooks(model, names: Iterable[str]) -> None:
    """Raise ValueError for hook names the model lacks, naming close alternatives."""
    available = set(model.hook_dict.keys())
    missing = [n for n in names if n != LOGITS and n not in available]
    if missing:
        import difflib

        hints = {n: difflib.get_close_matches(n, sorted(available), n=3) for n in missing}
        raise ValueError(
            "the model has no hook " + "; ".join(f"{n!r} (close: {hints[n]})" for n in missing)
            + f". It has {len(available)} hook points, e.g. blocks.0.hook_resid_post, blocks.0.mlp.hook_post, "
            "blocks.0.attn.hook_pattern"
        )


def _as_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        tokens = batch
        mask = torch.ones_like(tokens)
    else:
        tokens, mask = batch.tokens, batch.attention_mask
    if tokens.ndim != 2:
        raise ValueError(f"token batches must be [batch, seq], got shape {tuple(tokens.shape)}")
    return tokens, mask


def harvest(
    model,
    batches: Iterable[Any],
    consumers: Sequence[Consumer],
    *,
    max_tokens: int | None = None,
    progress: bool = True,
    device: str | None = None,
) -> HarvestStats:
    """Stream ``batches`` (TokenBatch or LongTensor [batch, seq]) through ``model``, feeding ``consumers``.

    Stops after the batch that reaches ``max_tokens`` real tokens. Returns :class:`HarvestStats`.
    """
    if not consumers:
        raise ValueError("harvest needs at least one consumer")
    wanted: dict[str, list[Consumer]] = {}
    for consumer in consumers:
        if not consumer.hooks:
            raise ValueError(f"consumer {type(consumer).__name__} asks for no hook")
        for name in consumer.hooks:
            wanted.setdefault(name, []).append(consumer)
    check_hooks(model, wanted)
    need_logits = LOGITS in wanted
    hook_names = [n for n in wanted if n != LOGITS]
    device = device or str(getattr(model.cfg, "device", "cpu"))
    state: dict[str, Any] = {}

    def make_hook(name: str):
        targets = wanted[name]

        def hook(activation: torch.Tensor, hook=None) -> None:
            for consumer in targets:
                consumer.consume(name, activation, state["mask"])
            state["fired"] += 1
            if not need_logits and state["fired"] >= len(hook_names):
                raise _Stop
            return None

        return hook

    fwd_hooks = [(name, make_hook(name)) for name in hook_names]
    n_batches = n_tokens = 0
    bar = tqdm(total=max_tokens, desc="harvest", unit="tok", disable=not progress)
    t0 = time.perf_counter()
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        for batch in batches:
            tokens, mask = _as_batch(batch)
            tokens, mask = tokens.to(device), mask.to(device)
            state["mask"], state["fired"] = mask, 0
            try:
                logits = model(tokens, return_type="logits")
            except _Stop:
                logits = None
            if need_logits:
                for consumer in wanted[LOGITS]:
                    consumer.consume(LOGITS, logits, mask)
            real = int(mask.sum())
            n_batches += 1
            n_tokens += real
            bar.update(real)
            if max_tokens is not None and n_tokens >= max_tokens:
                break
    bar.close()
    if n_batches == 0:
        raise ValueError("harvest received no batch (empty corpus or split?)")
    return HarvestStats(batches=n_batches, tokens=n_tokens, seconds=time.perf_counter() - t0)

