"""Demo run for the dashboard: a transcoder circuit on a small text-trained Llama-style zoo model.

Trains TopK transcoders for every MLP of ``toy/llama-d64-l4`` on a short stretch of the bundled wiki text, then
explains the logit difference between the model's two most likely next tokens after a wiki sentence.
"""

from __future__ import annotations

from typing import Any

import torch

from circuits.dictionaries.buffer import corpus_source
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries
from circuits.transcoder_paths.runs import save_tc_circuit, tc_circuit
from workbench.data.tokens import bos_id, encode
from workbench.models import load_model

MODEL = "toy/llama-d64-l4"
PROMPT = "The city was founded in the early years of the"


def demo(store, device: str | None = None, progress: bool = True, *, model_spec: str = MODEL, tokens: int = 20_480,
         prompt: str = PROMPT, num_branches: int = 8, max_depth: int = 4) -> Any:
    """Train small transcoders on every layer of ``model_spec``, find the circuit of the top-1 versus top-2 logit
    difference at the end of ``prompt`` and store it as a ``tc-circuit`` run; returns its RunInfo."""
    model = load_model(model_spec, device=device or "cpu")
    specs = [DictSpec(hook_in=f"blocks.{layer}.ln2.hook_normalized", kind="transcoder",
                      hook_out=f"blocks.{layer}.hook_mlp_out", activation="topk", k=16, expansion=4.0, name=f"L{layer}")
             for layer in range(model.cfg.n_layers)]
    cfg = TrainDictConfig(tokens=tokens, batch_size=256, lr=2e-3, warmup_steps=10, block_batches=8)
    source = corpus_source(model.tokenizer, "wiki", seq_len=64, batch_size=16, max_tokens=int(tokens * 1.05))
    trained = train_dictionaries(model, source, specs, cfg, progress=progress, device=device)
    transcoders = {layer: trained.dictionaries[f"L{layer}"] for layer in range(model.cfg.n_layers)}
    bos = bos_id(model.tokenizer)
    ids = torch.tensor(([bos] if bos is not None else []) + encode(model.tokenizer, prompt))
    with torch.no_grad():
        top2 = model(ids[None].to(model.W_E.device), return_type="logits")[0, -1].topk(2).indices.tolist()
    result = tc_circuit(model, ids, transcoders, "logit", correct=top2[0], incorrect=top2[1],
                        num_branches=num_branches, max_depth=max_depth)
    result.summary.update({"prompt": prompt, "correct_token": model.tokenizer.decode([top2[0]]),
                           "incorrect_token": model.tokenizer.decode([top2[1]]), "transcoder_tokens": trained.tokens})
    params = {"prompt": prompt, "target": "logit", "correct": top2[0], "incorrect": top2[1],
              "beam_width": num_branches, "depth": max_depth, "transcoders": "TopK-16, 4x, trained in the demo",
              "tokens": tokens}
    return save_tc_circuit(store, result, model=model_spec, params=params)
