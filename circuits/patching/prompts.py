"""A patching task from your own prompts: clean and corrupted texts with a one-token right and wrong answer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from circuits.patching.ablation import PatchingInputError
from workbench.data.task_base import Task
from workbench.data.tokens import bos_id, encode, single_token_id

__all__ = ["prompt_task"]


def prompt_task(
    tokenizer,
    prompts: Sequence[str],
    corrupted: Sequence[str],
    correct: Sequence[str] | str,
    incorrect: Sequence[str] | str,
    *,
    prepend_bos: bool = True,
) -> Task:
    """A ``logit_diff`` Task read at each prompt's last position: logit(correct) - logit(incorrect).

    Every clean and corrupted prompt must have the same token count; each answer string must be one token
    (PatchingInputError naming the string otherwise). A single answer string applies to every prompt.
    """
    if not prompts or len(prompts) != len(corrupted):
        raise PatchingInputError(
            f"need as many corrupted prompts as clean prompts (at least one); got {len(prompts)} and {len(corrupted)}"
        )
    n = len(prompts)
    answers = []
    for what, given in (("correct", correct), ("incorrect", incorrect)):
        given = [given] * n if isinstance(given, str) else list(given)
        if len(given) != n:
            raise PatchingInputError(f"{what}: {len(given)} answers for {n} prompts")
        try:
            answers.append([single_token_id(tokenizer, text) for text in given])
        except ValueError as err:
            raise PatchingInputError(f"the metric's {what} answer must be a single token: {err}") from None
    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []
    clean = [bos + encode(tokenizer, p) for p in prompts]
    corr = [bos + encode(tokenizer, p) for p in corrupted]
    lengths = {len(t) for t in clean + corr}
    if len(lengths) != 1:
        raise PatchingInputError(
            f"clean and corrupted prompts must all have the same number of tokens; got lengths {sorted(lengths)}"
        )
    seq = lengths.pop()
    return Task(
        name="prompts",
        clean_tokens=torch.tensor(clean, dtype=torch.long),
        corrupted_tokens=torch.tensor(corr, dtype=torch.long),
        answer_positions=torch.full((n,), seq - 1, dtype=torch.long),
        correct=torch.tensor(answers[0], dtype=torch.long),
        incorrect=torch.tensor(answers[1], dtype=torch.long),
        prompts=list(prompts),
        corrupted_prompts=list(corrupted),
        metric_name="logit_diff",
        description="Given prompts; metric at the last position: logit(correct) - logit(incorrect).",
    )
