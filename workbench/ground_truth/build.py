"""Building a designed ground truth into a zoo folder: tokenizer, strict interchange training, Hugging Face checkpoints.

The folder holds ``checkpoints/step-0000000`` (the seeded initialisation) and ``checkpoints/step-<steps>`` (the
trained model), like every zoo member. Torch runs on one thread during a build, so a rebuild gives the same weights,
bit for bit, on the same machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.ground_truth.designs import BOS, Design
from workbench.ground_truth.strict import (
    Wiring,
    accuracy,
    components,
    make_llama,
    strict_logits,
    train_strict,
)
from workbench.train import CHECKPOINTS, save_hf_checkpoint, step_dir


def make_tokenizer(names: tuple[str, ...]):
    """A word-level tokenizer over ``names`` (id = index; ``<bos>`` last), prepending BOS to every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    table = {name: i for i, name in enumerate(names)}
    bos = table[BOS]
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=BOS)


def new_model(design: Design):
    """The design's seeded, untrained model (a transformers ``LlamaForCausalLM``).

    The heads outside the circuit are distractors: their query and key projections are scaled up by
    ``design.distractor_qk`` and their value and output projections by ``design.distractor_vo``, so that they
    attend sharply and write as loudly as the circuit does (strict training leaves them as they start, and
    teaches the circuit to ignore them); otherwise they would stand out by the smallness of their outputs alone.
    """
    model = make_llama(len(design.names), design.d_model, design.n_layers, design.n_heads, design.seq_len,
                       design.bos, design.seed, design.d_mlp)
    dh = design.d_model // design.n_heads
    circuit = Wiring.from_edges(design.edges).circuit
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            attn = block.self_attn
            for head in range(design.n_heads):
                if (layer, head) in circuit:
                    continue
                rows = slice(head * dh, (head + 1) * dh)
                attn.q_proj.weight[rows] *= design.distractor_qk
                attn.k_proj.weight[rows] *= design.distractor_qk
                attn.v_proj.weight[rows] *= design.distractor_vo
                attn.o_proj.weight[:, rows] *= design.distractor_vo
    return model


def train_design(design: Design, folder: Path, progress: bool = False) -> list[dict]:
    """Train ``design`` by strict interchange into ``folder`` (checkpoints at step 0 and the last step); its history."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = new_model(design)
        tokenizer = make_tokenizer(design.names)
        save_hf_checkpoint(step_dir(folder / CHECKPOINTS, 0), model, tokenizer)
        history = train_strict(model, Wiring.from_edges(design.edges), design.batch, steps=design.steps,
                               batch_size=design.batch_size, lr=design.lr, seed=design.seed)
        history.append({"step": design.steps, "eval": evaluate(model, design)})
        save_hf_checkpoint(step_dir(folder / CHECKPOINTS, design.steps), model, tokenizer)
        return history
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def evaluate(model, design: Design, n: int = 512, seed: int = 4242) -> dict[str, Any]:
    """Accuracy of the plain and of the strict run on ``n`` fresh training-distribution inputs (scored positions),
    and the mean norm of each component's output (``emb``, ``L{l}.H{h}``, and ``mlp{l}`` in a design with MLPs) per
    position in the plain run."""
    gen = torch.Generator().manual_seed(seed)
    tokens, targets = design.batch(gen, n)
    source, _ = design.batch(gen, n)
    mlps: list[torch.Tensor] = []
    emb, heads, plain = components(model, tokens, mlps=mlps)
    strict = strict_logits(model, Wiring.from_edges(design.edges), tokens, source)
    norms = {f"L{layer}.H{h}": float(out[:, h].norm(dim=-1).mean()) for layer, out in enumerate(heads)
             for h in range(out.shape[1])}
    if design.d_mlp:
        norms.update({f"mlp{layer}": float(out.norm(dim=-1).mean()) for layer, out in enumerate(mlps)})
    return {"plain_accuracy": accuracy(plain, targets), "strict_accuracy": accuracy(strict, targets),
            "output_norms": {"emb": float(emb.norm(dim=-1).mean()), **norms}}
