"""The ``Task`` type: clean and corrupted tokens plus a metric on logits.

Three metrics, named by ``Task.metric_name``; each reads the logits of one forward pass and returns one number
per example (differentiable, computed in float32, on the logits' device):

- ``"logit_diff"``: ``logits[b, answer_positions[b], correct[b]] - logits[b, answer_positions[b], incorrect[b]]``.
- ``"prob_diff"``: ``sum_k candidate_signs[b, k] * softmax(logits[b, answer_positions[b]])[candidate_tokens[k]]``,
  signs +1 (a right answer), -1 (a wrong one) or 0 (left out).
- ``"log_prob"``: the mean over ``t`` in ``score_positions`` of ``log_softmax(logits[b, t])[clean_tokens[b, t + 1]]``.

Targets always come from the clean run, so the metric of a corrupted or patched run measures how much of the
clean behaviour is there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

METRICS: tuple[str, ...] = ("logit_diff", "prob_diff", "log_prob")


@dataclass
class Task:
    """A behaviour to study, with its patching baseline and its metric.

    name: the task's name (see ``TASKS``).
    clean_tokens: LongTensor [batch, seq], BOS first when the tokenizer has one (like ``model.to_tokens``).
    corrupted_tokens: LongTensor [batch, seq], same shape, aligned position by position with the clean tokens.
    answer_positions: LongTensor [batch], the position whose logits the metric reads (``log_prob``: the last
        scored position).
    correct / incorrect: LongTensor [batch], token ids; ``logit_diff`` reads them, the other metrics hold a
        representative pair (documented by each task) so that a logit difference can always be taken.
    prompts / corrupted_prompts: list[str] of length batch, the decoded texts (without BOS).
    metric_name: one of ``METRICS``. description: what the task is and exactly what its metric computes.
    candidate_tokens: LongTensor [k] and candidate_signs: FloatTensor [batch, k], for ``prob_diff`` only.
    score_positions: LongTensor [k], for ``log_prob`` only.
    info: plain facts about the task (the options used ...); ``info["examples"]``, when present, is a list with
        one dict per example (its label, names, year ...), kept in step by :meth:`select`.
    """

    name: str
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_positions: torch.Tensor
    correct: torch.Tensor
    incorrect: torch.Tensor
    prompts: list[str]
    metric_name: str
    description: str
    corrupted_prompts: list[str] = field(default_factory=list)
    candidate_tokens: torch.Tensor | None = None
    candidate_signs: torch.Tensor | None = None
    score_positions: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clean_tokens.ndim != 2:
            raise ValueError(f"clean_tokens must be [batch, seq], got shape {tuple(self.clean_tokens.shape)}")
        if self.corrupted_tokens.shape != self.clean_tokens.shape:
            raise ValueError(
                f"corrupted_tokens {tuple(self.corrupted_tokens.shape)} must match clean_tokens "
                f"{tuple(self.clean_tokens.shape)}"
            )
        batch = self.clean_tokens.shape[0]
        for attr in ("answer_positions", "correct", "incorrect"):
            if tuple(getattr(self, attr).shape) != (batch,):
                raise ValueError(
                    f"{attr} must be [batch] = [{batch}], got {tuple(getattr(self, attr).shape)}"
                )
        if len(self.prompts) != batch:
            raise ValueError(f"{len(self.prompts)} prompts for a batch of {batch}")
        if self.metric_name not in METRICS:
            raise ValueError(f"unknown metric {self.metric_name!r}; metrics: {', '.join(METRICS)}")
        if self.metric_name == "prob_diff":
            if self.candidate_tokens is None or self.candidate_signs is None:
                raise ValueError("a prob_diff task needs candidate_tokens and candidate_signs")
            if tuple(self.candidate_signs.shape) != (batch, len(self.candidate_tokens)):
                raise ValueError(
                    f"candidate_signs must be [batch, k] = [{batch}, {len(self.candidate_tokens)}], "
                    f"got {tuple(self.candidate_signs.shape)}"
                )
        if self.metric_name == "log_prob":
            if self.score_positions is None or self.score_positions.numel() == 0:
                raise ValueError("a log_prob task needs score_positions")
            if int(self.score_positions.max()) >= self.clean_tokens.shape[1] - 1:
                raise ValueError("score_positions must leave a next token to predict")

    @property
    def batch_size(self) -> int:
        """Number of examples."""
        return int(self.clean_tokens.shape[0])

    @property
    def seq_len(self) -> int:
        """Token positions per example."""
        return int(self.clean_tokens.shape[1])

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: torch.device | str) -> Task:
        """The same task with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def select(self, index: slice | list[int] | torch.Tensor) -> Task:
        """A task holding only the chosen examples (e.g. ``task.select(slice(0, 16))`` for one chunk)."""
        rows = torch.arange(self.batch_size)[index].reshape(-1).tolist()
        cut: dict[str, Any] = {}
        for name in (
            "clean_tokens",
            "corrupted_tokens",
            "answer_positions",
            "correct",
            "incorrect",
            "candidate_signs",
        ):
            value = getattr(self, name)
            if value is not None:
                cut[name] = value[torch.tensor(rows, dtype=torch.long, device=value.device)]
        cut["prompts"] = [self.prompts[i] for i in rows]
        cut["corrupted_prompts"] = [self.corrupted_prompts[i] for i in rows] if self.corrupted_prompts else []
        if isinstance(self.info.get("examples"), list):
            cut["info"] = {**self.info, "examples": [self.info["examples"][i] for i in rows]}
        return dataclasses.replace(self, **cut)

    def check_logits(self, logits: torch.Tensor) -> None:
        """ValueError unless ``logits`` is [batch, seq, vocab] for this task's tokens."""
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 3
            or tuple(logits.shape[:2]) != tuple(self.clean_tokens.shape)
        ):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"task {self.name!r} expects logits [batch, seq, vocab] = [{self.batch_size}, {self.seq_len}, vocab], "
                f"got {shape}"
            )
        ids = [self.correct, self.incorrect, self.clean_tokens]
        if self.candidate_tokens is not None:
            ids.append(self.candidate_tokens)
        largest = max(int(t.max()) for t in ids if t.numel())
        if largest >= logits.shape[-1]:
            raise ValueError(
                f"logits have a vocabulary of {logits.shape[-1]} but the task uses token id {largest}"
            )

    def metric_per_example(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric of each example: logits [batch, seq, vocab] -> Tensor [batch] (float32, differentiable)."""
        self.check_logits(logits)
        rows = torch.arange(self.batch_size, device=logits.device)
        if self.metric_name == "log_prob":
            assert self.score_positions is not None
            positions = self.score_positions.to(logits.device)
            log_probs = torch.log_softmax(logits[:, positions].float(), dim=-1)  # [batch, k, vocab]
            targets = self.clean_tokens.to(logits.device)[:, positions + 1]  # [batch, k]
            return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(dim=-1)
        final = logits[rows, self.answer_positions.to(logits.device)].float()  # [batch, vocab]
        if self.metric_name == "logit_diff":
            correct = final.gather(-1, self.correct.to(logits.device).unsqueeze(-1)).squeeze(-1)
            incorrect = final.gather(-1, self.incorrect.to(logits.device).unsqueeze(-1)).squeeze(-1)
            return correct - incorrect
        assert self.candidate_tokens is not None and self.candidate_signs is not None
        probs = torch.softmax(final, dim=-1)[:, self.candidate_tokens.to(logits.device)]  # [batch, k]
        return (probs * self.candidate_signs.to(logits.device, torch.float32)).sum(dim=-1)

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean of :meth:`metric_per_example`: logits [batch, seq, vocab] -> scalar Tensor []."""
        return self.metric_per_example(logits).mean()
