"""The dashboard's demo ``dictionary`` run: a small TopK transcoder and a ReLU SAE on SmolLM2's layer 3 (about a minute)."""

from __future__ import annotations

from typing import Any

from circuits.dictionaries.runs import train_and_store
from circuits.dictionaries.train import DictSpec, TrainDictConfig
from workbench.store import RunInfo, Store

MODEL = "smollm2-135m"
LAYER = 3


def demo(store: Store, device: str | None, progress: bool, tokens: int = 32_768) -> RunInfo:
    """Train a TopK-16 transcoder (MLP 3) and a ReLU SAE (residual stream after block 3) on ``tokens`` wiki tokens in
    one pass, evaluate them on 2,048 held-out tokens and store a ``dictionary`` run with feature tables."""
    specs = [
        DictSpec(f"blocks.{LAYER}.ln2.hook_normalized", kind="transcoder", hook_out=f"blocks.{LAYER}.hook_mlp_out",
                 activation="topk", k=16, expansion=4),
        DictSpec(f"blocks.{LAYER}.hook_resid_post", activation="relu", l1=3e-3, expansion=4),
    ]
    cfg = TrainDictConfig(tokens=tokens, batch_size=512, lr=1e-3, warmup_steps=8, block_batches=8)
    info, _ = train_and_store(MODEL, specs, cfg, store=store, seq_len=128, token_batch=8, eval_tokens=2048,
                              feature_tokens=4096, device=device, progress=progress)
    return info


def describe() -> dict[str, Any]:
    """What the demo computes (for ``workbench demo`` listings)."""
    return {"kind": "dictionary", "model": MODEL, "layer": LAYER}
