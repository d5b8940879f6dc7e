"""Greater-than: "The war lasted from the year 1732 to the year 17" -> a year after 1732 (Hanna et al., 2023).

The task adapts to how the tokenizer writes numbers, which it finds out by encoding the prompt followed by each
candidate continuation:

- two-digit mode (GPT-2 style: "17" and "32" are tokens): the candidates are the 100 tokens ``00 .. 99``; the
  metric is the probability difference ``PD = sum_{y > YY} p(y) - sum_{y <= YY} p(y)`` at the last position,
  start years ``YY`` in 02..98 by default.
- digit mode (SmolLM2, Llama 3 ... split numbers into single digits: " 1732" is " ", "1", "7", "3", "2"): the next
  token is only the tens digit ``d`` of the end year. The metric is ``PD = sum_{d: every year 17d* > 17YY} p(d) -
  sum_{d: every year 17d* <= 17YY} p(d)``, i.e. digits ``d > YY // 10`` count +1, digits ``10 d + 9 <= YY`` count
  -1 and the tens digit of ``YY`` itself, which can go either way, is left out unless ``YY`` ends in 9. Start
  years default to 19, 29, ..., 89, for which nothing is left out and PD is exactly the two-digit PD summed over
  the tens digit: ``P(end year > start year) - P(end year <= start year)``.

Corrupted prompts use the start year 1701 (``YY = 01``), which tells the model nothing about the answer.
``correct`` holds the smallest right continuation (``YY + 1``; digit mode: the digit ``YY // 10 + 1``) and
``incorrect`` the start year's own (``YY``; digit mode: the digit ``YY // 10``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from workbench.data.task_base import Task
from workbench.data.tokens import Tokenizer, bos_id, encode, is_single_token, tokenizer_name

TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"
NOUNS: tuple[str, ...] = (
    "war", "expedition", "dynasty", "reign", "siege", "drought", "famine", "voyage", "rebellion", "occupation",
    "crusade", "campaign", "pilgrimage", "treaty", "conflict", "revolution", "empire", "alliance", "marriage",
    "trial", "journey", "project", "tradition", "plague", "epidemic", "invasion", "rivalry", "embargo", "tour",
    "friendship", "truce", "kingdom", "strike", "study", "program", "quest", "feud", "regime", "exile", "trip",
)  # fmt: skip
CORRUPTED_YY = 1


def _continuation_ids(tokenizer: Tokenizer, prompt: str, strings: Sequence[str]) -> list[int] | None:
    """Ids of ``strings`` when each is exactly one token right after ``prompt`` (and distinct), else None."""
    prefix = encode(tokenizer, prompt)
    ids = []
    for s in strings:
        full = encode(tokenizer, prompt + s)
        if len(full) != len(prefix) + 1 or full[:-1] != prefix:
            return None
        ids.append(full[-1])
    return ids if len(set(ids)) == len(ids) else None


def number_mode(tokenizer: Tokenizer, prompt: str) -> tuple[str, list[int]]:
    """``("two_digit", ids of 00..99)`` or ``("digit", ids of 0..9)``: how the year continues after ``prompt``."""
    two = _continuation_ids(tokenizer, prompt, [f"{y:02d}" for y in range(100)])
    if two is not None:
        return "two_digit", two
    one = _continuation_ids(tokenizer, prompt, [str(d) for d in range(10)])
    if one is not None:
        return "digit", one
    raise ValueError(
        f"greater-than needs the two-digit strings 00..99, or the digits 0..9, to be single tokens after "
        f"{prompt!r}; neither holds for {tokenizer_name(tokenizer)}"
    )


def year_signs(mode: str, yy: int) -> list[float]:
    """+1 / -1 / 0 per candidate (100 two-digit numbers or 10 digits) for the start year ``YY``."""
    if mode == "two_digit":
        return [1.0 if y > yy else -1.0 for y in range(100)]
    return [1.0 if 10 * d > yy else (-1.0 if 10 * d + 9 <= yy else 0.0) for d in range(10)]


def make_greater_than(
    tokenizer: Tokenizer,
    *,
    n: int = 64,
    seed: int = 0,
    nouns: Sequence[str] = NOUNS,
    years: Sequence[int] | None = None,
    century: int = 17,
    prepend_bos: bool = True,
) -> Task:
    """The greater-than task: clean / corrupted tokens [n, seq]; metric ``prob_diff`` at the last position.

    nouns: event nouns, kept when " noun" is one token (so every prompt has the same length). years: start
    years ``YY`` (0..99) to draw from, default by mode (see the module docstring); a year that leaves no right
    or no wrong answer is refused. Examples are drawn evenly from the noun x year grid, shuffled with ``seed``.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    kept = [noun for noun in nouns if is_single_token(tokenizer, " " + noun)]
    if not kept:
        raise ValueError(
            f"none of the nouns {list(nouns)} is a single token (with a leading space) for {tokenizer_name(tokenizer)}"
        )
    mode, candidates = number_mode(tokenizer, TEMPLATE.format(noun=kept[0], century=century, yy=CORRUPTED_YY))
    if years is None:
        years = range(2, 99) if mode == "two_digit" else range(19, 90, 10)
    years = list(years)
    for yy in years:
        signs = year_signs(mode, yy) if 0 <= yy <= 99 else []
        if 1.0 not in signs or -1.0 not in signs:
            raise ValueError(
                f"start year {century}{yy:02d} leaves no right or no wrong answer in {mode} mode"
            )

    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []
    grid = []
    for noun in kept:
        corrupted = bos + encode(tokenizer, TEMPLATE.format(noun=noun, century=century, yy=CORRUPTED_YY))
        for yy in years:
            clean = bos + encode(tokenizer, TEMPLATE.format(noun=noun, century=century, yy=yy))
            if len(clean) == len(corrupted):
                grid.append((noun, yy, clean, corrupted))
    if not grid:
        raise ValueError(
            f"no start year in {years} keeps the prompt's length when encoded by {tokenizer_name(tokenizer)}"
        )
    lengths = [len(g[2]) for g in grid]
    common = max(set(lengths), key=lengths.count)  # one length for the whole batch
    grid = [g for g in grid if len(g[2]) == common]
    random.Random(seed).shuffle(grid)
    chosen = [grid[i % len(grid)] for i in range(n)]

    # digit mode: a valid YY has a right tens digit, so YY // 10 + 1 <= 9; two-digit mode: YY <= 98
    correct = [candidates[yy // 10 + 1] if mode == "digit" else candidates[yy + 1] for _, yy, _, _ in chosen]
    incorrect = [candidates[yy // 10] if mode == "digit" else candidates[yy] for _, yy, _, _ in chosen]
    metric_text = (
        "PD = sum over two-digit tokens y > YY of p(y) - sum over y <= YY of p(y)"
        if mode == "two_digit"
        else "PD = sum of p(d) over tens digits d with 10d > YY - sum of p(d) over d with 10d + 9 <= YY "
        "(the tens digit of YY itself is left out unless YY ends in 9)"
    )
    return Task(
        name="greater-than",
        clean_tokens=torch.tensor([g[2] for g in chosen], dtype=torch.long),
        corrupted_tokens=torch.tensor([g[3] for g in chosen], dtype=torch.long),
        answer_positions=torch.full((n,), common - 1, dtype=torch.long),
        correct=torch.tensor(correct, dtype=torch.long),
        incorrect=torch.tensor(incorrect, dtype=torch.long),
        prompts=[TEMPLATE.format(noun=noun, century=century, yy=yy) for noun, yy, _, _ in chosen],
        corrupted_prompts=[
            TEMPLATE.format(noun=noun, century=century, yy=CORRUPTED_YY) for noun, *_ in chosen
        ],
        metric_name="prob_diff",
        description=(
            f"Greater-than ({mode} mode): 'The <noun> lasted from the year {century}YY to the year {century}'. "
            f"Metric at the last position: {metric_text}. Corrupted: YY = 01."
        ),
        candidate_tokens=torch.tensor(candidates, dtype=torch.long),
        candidate_signs=torch.tensor([year_signs(mode, yy) for _, yy, _, _ in chosen], dtype=torch.float32),
        info={
            "mode": mode,
            "century": century,
            "nouns": kept,
            "years": years,
            "examples": [{"noun": noun, "yy": yy} for noun, yy, _, _ in chosen],
        },
    )
