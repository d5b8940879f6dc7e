"""``toy/induction-2l``: a 2-layer transformer trained on repeated random token sequences, which grows induction heads.

Architecture: a Hugging Face Llama configuration (RMSNorm, rotary positions), so it loads through the same
``TransformerBridge.boot_transformers`` path as SmolLM2. Llama has no attention-only option, so each block's MLP is
kept at width 1 with all its weights zero and frozen: the MLP output (``blocks.L.hook_mlp_out``) is exactly zero and
the model is attention-only in function.

Data: every sequence is ``[BOS] + A + A`` with ``A`` a uniform random sequence of ``half_len`` tokens; the batch of
step ``s`` is drawn from a generator seeded with ``(seed, s)``, so training is deterministic and resumable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.train import TrainConfig, train_causal_lm

BOS = "<bos>"


@dataclass(frozen=True)
class InductionConfig:
    """Size, data and optimisation of an induction toy."""

    vocab: int = 128
    half_len: int = 24
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    batch: int = 32
    steps: int = 2000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    n_checkpoints: int = 12
    resume_every: int = 100

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_spaced_steps(total: int, count: int) -> tuple[int, ...]:
    """About ``count`` distinct steps from 0 to ``total``, spaced logarithmically (0 and ``total`` included)."""
    if total <= 0:
        return (0,)
    points = {0, total}
    for i in range(count):
        points.add(int(round(math.exp(math.log(total + 1) * i / max(1, count - 1)))) - 1)
    return tuple(sorted(p for p in points if 0 <= p <= total))


def make_tokenizer(vocab: int):
    """A word-level tokenizer over ``t0 .. t{vocab-1}`` plus ``<bos>`` (id ``vocab``), prepending BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    table = {f"t{i}": i for i in range(vocab)}
    table[BOS] = vocab
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=BOS)


def make_model(cfg: InductionConfig):
    """A freshly initialised (seeded) Llama causal LM with zeroed, frozen width-1 MLPs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab + 1,
        hidden_size=cfg.d_model,
        intermediate_size=1,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=max(128, 2 * cfg.half_len + 1),
        tie_word_embeddings=False,
        bos_token_id=cfg.vocab,
        eos_token_id=cfg.vocab,
        pad_token_id=cfg.vocab,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(hf_cfg)
    for layer in model.model.layers:
        for p in layer.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    return model


def induction_tokens(batch: int, half_len: int, vocab: int, seed: int) -> torch.Tensor:
    """``[BOS] + A + A`` sequences, LongTensor [batch, 1 + 2 * half_len], tokens uniform in [0, vocab), BOS = vocab."""
    from workbench.data.task_induction import induction_batch

    return induction_batch(batch, half_len, vocab + 1, torch.Generator().manual_seed(seed), bos_id=vocab)


def varied_repeat_tokens(batch: int, half_len: int, vocab: int, seed: int, min_period: int) -> torch.Tensor:
    """Training sequences [batch, 1 + 2 * half_len]: BOS, then random tokens whose first ``p`` repeat once.

    The period ``p`` is drawn per row from [min_period, half_len], so the copy sits at no fixed offset and a head
    cannot predict the repeat from positions alone: it has to find the earlier copy by content (induction).
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, 2 * half_len), generator=gen)
    period = torch.randint(min_period, half_len + 1, (batch, 1), generator=gen)
    pos = torch.arange(2 * half_len)[None, :]
    source = torch.where((pos >= period) & (pos < 2 * period), pos - period, pos)
    tokens = tokens.gather(1, source)
    bos = torch.full((batch, 1), vocab, dtype=torch.long)
    return torch.cat([bos, tokens], dim=1)


def batch_fn_for(cfg: InductionConfig):
    """The deterministic training batch of each step (repeats of varied period, see :func:`varied_repeat_tokens`)."""

    def batch_fn(step: int) -> torch.Tensor:
        return varied_repeat_tokens(
            cfg.batch, cfg.half_len, cfg.vocab, seed=cfg.seed * 1_000_003 + step + 1, min_period=max(2, cfg.half_len // 4)
        )

    return batch_fn


def split_losses(logits: torch.Tensor, tokens: torch.Tensor, half_len: int) -> tuple[float, float]:
    """Mean next-token loss on the first half and on the repeated half (first token of each half excluded).

    logits [batch, 1 + 2 h, vocab], tokens [batch, 1 + 2 h]. The first half's tokens 1..h-1 are predicted at positions
    1..h-1; the repeated half's tokens 1..h-1 at positions h+1..2h-1.
    """
    logp = logits.float().log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, 2h]: loss of predicting token p+1 at p
    first = nll[:, 1:half_len].mean().item()
    repeated = nll[:, half_len + 1 : 2 * half_len].mean().item()
    return first, repeated


def induction_head_scores(patterns: torch.Tensor, half_len: int) -> torch.Tensor:
    """Mean attention from each repeated token to the token after its earlier copy.

    patterns [batch, heads, query, key] of one layer; returns [heads]. Query 1+h+j attends to key 2+j (j = 0..h-1).
    """
    j = torch.arange(half_len)
    return patterns[:, :, 1 + half_len + j, 2 + j].mean(dim=(0, 2))


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the previous one; patterns [batch, heads, q, k] -> [heads]."""
    q = torch.arange(1, patterns.shape[-1])
    return patterns[:, :, q, q - 1].mean(dim=(0, 2))


def induction_report(bridge, cfg: InductionConfig, n: int = 64, seed: int = 12345) -> dict[str, Any]:
    """Induction criteria measured on a loaded ``TransformerBridge`` from its attention patterns.

    Returns loss_first, loss_repeated, their ratio, per-layer induction and previous-token scores [layers][heads],
    and the best layer-1 induction head.
    """
    tokens = induction_tokens(n, cfg.half_len, cfg.vocab, seed).to(bridge.cfg.device)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    first, repeated = split_losses(logits, tokens, cfg.half_len)
    ind = [induction_head_scores(cache[name].float(), cfg.half_len).tolist() for name in names]
    prev = [previous_token_scores(cache[name].float()).tolist() for name in names]
    last = len(names) - 1
    best = max(range(len(ind[last])), key=lambda h: ind[last][h])
    return {
        "loss_first_half": first,
        "loss_repeated_half": repeated,
        "loss_ratio": repeated / first,
        "induction_scores": ind,
        "previous_token_scores": prev,
        "best_induction_head": [last, best],
        "best_induction_score": ind[last][best],
    }


def train_induction(cfg: InductionConfig, workdir: Path, progress: bool = True, *, interventions: Sequence[Any] = (),
                    eval_fn: Callable[[Any, int], dict[str, float]] | None = None, eval_steps: Sequence[int] = (),
                    save_steps: Sequence[int] | None = None, device: str | None = None) -> list[dict]:
    """Train (or resume training) the toy in ``workdir``; checkpoints land in ``workdir/checkpoints/step-N``.

    ``interventions`` (clamps, subsampled attention) act during training (see :func:`workbench.train.train_causal_lm`);
    ``eval_fn(model, step)`` replaces the default evaluation (the two halves' losses), also run at ``eval_steps``;
    ``save_steps`` replaces the log-spaced checkpoints; ``device`` is where the model and batches go (default cpu).
    """
    model = make_model(cfg)
    if device is not None:
        model.to(device)
    tokenizer = make_tokenizer(cfg.vocab)
    eval_tokens = induction_tokens(64, cfg.half_len, cfg.vocab, seed=999_999).to(model.device)
    batches = batch_fn_for(cfg)

    def default_eval(m, step: int) -> dict[str, float]:
        first, repeated = split_losses(m(input_ids=eval_tokens).logits, eval_tokens, cfg.half_len)
        return {"loss_first_half": first, "loss_repeated_half": repeated}

    train_cfg = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        warmup=cfg.warmup,
        weight_decay=cfg.weight_decay,
        resume_every=cfg.resume_every,
        save_steps=tuple(save_steps) if save_steps is not None else log_spaced_steps(cfg.steps, cfg.n_checkpoints),
        eval_steps=tuple(eval_steps),
    )
    return train_causal_lm(
        model, lambda step: batches(step).to(model.device), train_cfg, workdir, tokenizer=tokenizer,
        eval_fn=eval_fn or default_eval, progress=progress, description="induction toy", interventions=interventions,
    )
