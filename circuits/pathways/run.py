"""SSA against dense training on the induction toy: held-out losses, the sub-model ensemble, and the attention cost.

Two variants of the toy train on the same batches for the same steps: dense, and with stochastically subsampled
self-attention (:mod:`workbench.ssa`). Both are evaluated on held-out ``[BOS] + A + A`` sequences (never a training
batch): dense inference for both, one subsampled pass, and ensembles of 1..K subsampled sub-models (the log of the
mean of their probabilities). Losses are mean next-token losses (nats) over every position after BOS
(``loss``) and over the repeated half (``loss_repeated_half``, as in :func:`workbench.induction_toy.split_losses`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import torch

from workbench.induction_toy import InductionConfig, induction_tokens, split_losses
from workbench.ssa import SSAConfig, SSAIntervention, attention_flops, ensemble_logprobs, kept_counts
from workbench.toy_variants import evenly_spaced, train_variant

EVAL_SEED = 999_999


def _losses(logprobs: torch.Tensor, tokens: torch.Tensor, half_len: int) -> dict[str, float]:
    """Mean next-token loss over all positions and over each half; logprobs [b, s, vocab], tokens [b, s]."""
    nll = -logprobs[:, :-1].float().gather(-1, tokens[:, 1:, None])[..., 0]
    first, repeated = split_losses(logprobs, tokens, half_len)
    return {"loss": float(nll.mean()), "loss_first_half": first, "loss_repeated_half": repeated}


def _eval_fn(tokens: torch.Tensor, half_len: int):
    def eval_fn(model: Any, step: int) -> dict[str, float]:
        x = tokens.to(model.device)
        return _losses(model(input_ids=x).logits.float().log_softmax(-1), x, half_len)

    return eval_fn


def _load(folder: Any, steps: int, device: str | None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder / "checkpoints" / f"step-{steps:07d}"))
    return model.to(device or "cpu").eval()


def compare(toy: InductionConfig, ssa: SSAConfig, *, k: int = 4, evaluations: int = 20, n_eval: int = 64,
            device: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Train dense and SSA variants and compare them: tables ``curves`` (held-out loss per evaluation),
    ``losses`` (final model x inference mode) and ``cost`` (attention FLOPs, kept score entries, training seconds)."""
    tokens = induction_tokens(n_eval, toy.half_len, toy.vocab, EVAL_SEED)
    eval_steps = evenly_spaced(toy.steps, evaluations)
    eval_fn = _eval_fn(tokens, toy.half_len)
    runs, curves, seconds = {}, [], {}
    for name, ivs, what in (("dense", [], None), ("ssa", [SSAIntervention(ssa)], ssa.__dict__)):
        history, folder = train_variant(toy, {"ssa": what, "eval": "pathways-1", "n_eval": n_eval,
                                              "device": device or "cpu"}, ivs, eval_fn, eval_steps, device=device,
                                        progress=progress)
        runs[name] = folder
        seconds[name] = json.loads((folder / "variant.json").read_text()).get("seconds_last_session")
        curves += [{"training": name, "step": h["step"], **h["eval"]} for h in history if "eval" in h]
    rows = []
    with torch.no_grad():
        for name, folder in runs.items():
            model = _load(folder, toy.steps, device)
            x = tokens.to(model.device)
            t0 = time.perf_counter()
            rows.append({"training": name, "inference": "dense", "k": 0,
                         **_losses(model(input_ids=x).logits.float().log_softmax(-1), x, toy.half_len),
                         "seconds": time.perf_counter() - t0})
            for kk in range(1, k + 1):
                t0 = time.perf_counter()
                lp = ensemble_logprobs(model, x, ssa, kk)
                rows.append({"training": name, "inference": f"ensemble of {kk}", "k": kk,
                             **_losses(lp, x, toy.half_len), "seconds": time.perf_counter() - t0})
    seq = 1 + 2 * toy.half_len
    d_head = toy.d_model // toy.n_heads
    dense_flops = attention_flops(seq, d_head, toy.n_heads, toy.n_layers, 1.0)
    ssa_flops = attention_flops(seq, d_head, toy.n_heads, toy.n_layers, ssa.fraction)
    cost = pd.DataFrame([
        {"training": "dense", "attention_flops_per_sequence": dense_flops, "kept_score_entries": seq * (seq + 1) // 2,
         "train_seconds": seconds["dense"]},
        {"training": "ssa", "attention_flops_per_sequence": ssa_flops,
         "kept_score_entries": int(kept_counts(seq, ssa.fraction).sum()), "train_seconds": seconds["ssa"]},
    ])
    return {"curves": pd.DataFrame(curves), "losses": pd.DataFrame(rows), "cost": cost, "eval_steps": eval_steps,
            "seq": seq}
