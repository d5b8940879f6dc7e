"""Strict interchange training: a Llama-style model whose circuit is fixed by construction.

The forward pass is written out component by component (token embedding ``emb``, each head ``L{l}.H{h}``, each MLP
``mlp{l}``, the logits) on the weights of a Hugging Face ``LlamaForCausalLM``, so that the residual stream is exactly
``emb + sum of head outputs + sum of MLP outputs`` and each component's contribution can be replaced on its own. In
an attention-only design the MLPs are zeroed and frozen (their outputs are exactly zero); a design with MLPs has
real SwiGLU MLPs, and an MLP is a component like a head (it reads the residual stream after its layer's heads).

Training (:func:`train_strict`) draws every batch twice from the task's distribution: the current inputs and, as
resampling sources, independent inputs. The sources run the plain model (no gradient) and give every component's
value on another input. In the current run

- every head and MLP outside the circuit outputs its value on the source input (resample ablation): it carries
  nothing about the current input, so the loss cannot use it;
- every circuit head reads, as its input (for queries, keys and values alike), the current values of its designed
  senders only and the source values of every other sender; so does every circuit MLP;
- the logits read the current values of the senders of the designed ``* -> logit`` edges only.

The loss is the task's cross-entropy on this run. Heads outside the circuit therefore never receive a gradient (their
projections stay at their initialisation, which :func:`workbench.ground_truth.build.new_model` scales up so that they
attend sharply and write loudly: distractors the circuit learns to ignore); the embeddings, norms and the unembedding
are trained through the circuit, and so are the circuit's MLPs. The edge set is fixed by design: a circuit component
cannot read a sender that has no designed edge to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Batch = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Wiring:
    """Who reads whom: ``senders[receiver]`` for every circuit head ``L{l}.H{h}``, circuit MLP ``mlp{l}`` and for
    ``logit``.

    circuit: the circuit's heads as (layer, head) pairs; mlps: the layers whose MLP is in the circuit.
    """

    circuit: frozenset[tuple[int, int]]
    senders: dict[str, frozenset[str]]
    mlps: frozenset[int] = frozenset()

    @staticmethod
    def from_edges(edges: frozenset[str]) -> Wiring:
        senders: dict[str, set[str]] = {}
        circuit: set[tuple[int, int]] = set()
        mlps: set[int] = set()
        for edge in edges:
            sender, receiver = edge.split("->")
            senders.setdefault(receiver, set()).add(sender)
            for node in (sender, receiver):
                if node.startswith("L"):
                    layer, head = node[1:].split(".H")
                    circuit.add((int(layer), int(head)))
                elif node.startswith("mlp"):
                    mlps.add(int(node[3:]))
        return Wiring(frozenset(circuit), {r: frozenset(s) for r, s in senders.items()}, frozenset(mlps))


def _head_outputs(model, layer: int, x: torch.Tensor, position_ids: torch.Tensor,
                  patterns: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Every head of ``layer`` on its own input: x [B, H, S, d] -> outputs [B, H, S, d] (o_proj slice of each head).

    patterns: when given, the attention pattern [B, H, query, key] is appended to it.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    block = model.model.layers[layer]
    attn = block.self_attn
    n_heads = model.config.num_attention_heads
    d = model.config.hidden_size
    dh = d // n_heads
    xn = block.input_layernorm(x)
    wq = attn.q_proj.weight.view(n_heads, dh, d)
    wk = attn.k_proj.weight.view(n_heads, dh, d)
    wv = attn.v_proj.weight.view(n_heads, dh, d)
    wo = attn.o_proj.weight.view(d, n_heads, dh)
    q = torch.einsum("bhsd,hed->bhse", xn, wq)
    k = torch.einsum("bhsd,hed->bhse", xn, wk)
    v = torch.einsum("bhsd,hed->bhse", xn, wv)
    cos, sin = model.model.rotary_emb(x[:, 0], position_ids)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    seq = x.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    if patterns is not None:
        patterns.append(pattern.detach())
    z = pattern @ v  # [B, H, S, dh]
    return torch.einsum("bhse,dhe->bhsd", z, wo)


def _mlp_output(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    """MLP ``layer`` on its input (the residual stream after the layer's heads): x [..., d] -> [..., d]."""
    block = model.model.layers[layer]
    return block.mlp(block.post_attention_layernorm(x))


def components(model, tokens: torch.Tensor, patterns: list[torch.Tensor] | None = None,
               mlps: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The plain forward, component by component: (emb [B, S, d], heads [layer] -> [B, H, S, d], logits [B, S, V]).

    patterns: when given, each layer's attention pattern [B, H, query, key] is appended to it; mlps: when given,
    each layer's MLP output [B, S, d] (exactly zero in an attention-only design).
    """
    emb = model.model.embed_tokens(tokens)
    n_heads = model.config.num_attention_heads
    position_ids = torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
    resid = emb
    heads = []
    for layer in range(model.config.num_hidden_layers):
        out = _head_outputs(model, layer, resid[:, None].expand(-1, n_heads, -1, -1), position_ids, patterns)
        heads.append(out)
        resid = resid + out.sum(1)
        mlp = _mlp_output(model, layer, resid)
        if mlps is not None:
            mlps.append(mlp)
        resid = resid + mlp
    return emb, heads, model.lm_head(model.model.norm(resid))


def strict_logits(model, wiring: Wiring, tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The strict interchange run of ``tokens`` [B, S] with resampling sources ``source`` [B, S]: logits [B, S, V]."""
    src_mlps: list[torch.Tensor] = []
    with torch.no_grad():
        src_emb, src_heads, _ = components(model, source, mlps=src_mlps)
    n_heads = model.config.num_attention_heads
    position_ids = torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
    cur_emb = model.model.embed_tokens(tokens)
    current: dict[str, torch.Tensor] = {"emb": cur_emb}
    sources: dict[str, torch.Tensor] = {"emb": src_emb}
    for layer, out in enumerate(src_heads):
        for head in range(n_heads):
            sources[f"L{layer}.H{head}"] = out[:, head]
        sources[f"mlp{layer}"] = src_mlps[layer]

    def read(receiver: str, available: list[str]) -> torch.Tensor:
        allowed = wiring.senders.get(receiver, frozenset())
        return sum(current[s] if s in allowed and s in current else sources[s] for s in available)

    available = ["emb"]
    for layer in range(model.config.num_hidden_layers):
        mine = [h for h in range(n_heads) if (layer, h) in wiring.circuit]
        if mine:
            inputs = torch.stack([read(f"L{layer}.H{h}", available) if h in mine else cur_emb
                                  for h in range(n_heads)], dim=1)
            out = _head_outputs(model, layer, inputs, position_ids)
            for h in mine:
                current[f"L{layer}.H{h}"] = out[:, h]
        available = available + [f"L{layer}.H{h}" for h in range(n_heads)]
        if layer in wiring.mlps:
            current[f"mlp{layer}"] = _mlp_output(model, layer, read(f"mlp{layer}", available))
        available.append(f"mlp{layer}")
    return model.lm_head(model.model.norm(read("logit", available)))


def make_llama(vocab: int, d_model: int, n_layers: int, n_heads: int, seq_len: int, bos: int, seed: int,
               d_mlp: int = 0):
    """A seeded Llama with an untied unembedding: attention-only (``d_mlp`` 0: width-1 MLPs zeroed and frozen) or
    with SwiGLU MLPs of width ``d_mlp``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp or 1, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=max(64, seq_len),
                      tie_word_embeddings=False, bos_token_id=bos, eos_token_id=bos, pad_token_id=bos, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg)
    if d_mlp:
        return model
    for block in model.model.layers:
        for p in block.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    return model


def train_strict(model, wiring: Wiring, batch: Batch, *, steps: int, batch_size: int, lr: float, seed: int,
                 weight_decay: float = 0.0) -> list[dict]:
    """Train ``model`` in place by strict interchange for ``steps`` updates; returns the history (step, loss).

    batch(generator, n) -> (tokens [n, S], targets [n, S]) with target -1 where a position is not scored. The
    current and source batches of every step come from one generator seeded with ``seed``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(steps):
        for group in optim.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        tokens, targets = batch(gen, batch_size)
        source, _ = batch(gen, batch_size)
        logits = strict_logits(model, wiring, tokens, source)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": float(loss.detach())})
    model.eval()
    return history


@torch.no_grad()
def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (target >= 0) whose argmax is the target: logits [B, S, V], targets [B, S]."""
    scored = targets >= 0
    return float((logits.argmax(-1)[scored] == targets[scored]).float().mean())
