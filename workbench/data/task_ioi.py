"""Indirect object identification (Wang et al., 2022): "When Mary and John went to the store, John gave a drink to"
-> " Mary".

Each template names two people, the indirect object ``IO`` and the subject ``S``, then repeats ``S``; the
answer is ``IO``. Both orders are used ("ABBA": IO first, "BABA": S first). Corrupted prompts are the "ABC"
version: the three name slots filled with three other names, all different, so no name repeats.
Metric ``logit_diff`` at the last position: ``logit(IO) - logit(S)`` (``correct`` = IO, ``incorrect`` = S).

Names are kept when " Name" (leading space) is one token. Templates differ in token length; only those with the
most common length are used, so every prompt of a task has the same length and name positions line up within a
template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from workbench.data.task_base import Task
from workbench.data.tokens import Tokenizer, bos_id, encode, is_single_token, single_token_id, tokenizer_name

TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {C} gave a drink to",
    "When {A} and {B} went to the park, {C} gave a ball to",
    "When {A} and {B} went to the market, {C} gave a bag to",
    "When {A} and {B} got a letter at the office, {C} gave it to",
    "After {A} and {B} went to the station, {C} gave a ticket to",
    "After {A} and {B} arrived at the party, {C} gave a gift to",
    "While {A} and {B} were working at the hospital, {C} gave a book to",
    "While {A} and {B} were at the restaurant, {C} passed the salt to",
    "Then, {A} and {B} had a long argument, and afterwards {C} said to",
    "Then, {A} and {B} went to the school. {C} gave a pencil to",
    "Friends {A} and {B} found a necklace at the beach. {C} gave it to",
    "The local big {A} and {B} went to the house, and {C} gave a snack to",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Paul", "Kate", "Lisa", "Mark", "Sarah",
    "David", "Michael", "Robert", "Laura", "Emma", "Peter", "George", "Alice", "Jack", "Henry", "Rose", "Grace",
    "Susan", "Karen", "Steve", "Chris", "Ben", "Sam", "Joe", "Mike", "Jane", "Emily", "Eric", "Adam", "Ryan",
    "Brian", "Kevin", "Jason", "Andrew", "Daniel", "Thomas", "Richard", "Charles", "William", "Joseph", "Edward",
    "Helen", "Linda", "Nancy", "Betty", "Ruth", "Julia", "Victoria", "Jessica", "Rachel", "Megan", "Nick", "Luke",
)  # fmt: skip


def _fill(template: str, a: str, b: str, c: str) -> str:
    return template.format(A=a, B=b, C=c)


def make_ioi(
    tokenizer: Tokenizer,
    *,
    n: int = 64,
    seed: int = 0,
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] = NAMES,
    prepend_bos: bool = True,
) -> Task:
    """The IOI task: clean / corrupted tokens [n, seq] of equal length; metric ``logit_diff`` (IO - S).

    templates: strings with ``{A}``, ``{B}`` (the two people) and ``{C}`` (the repeated subject). names: first
    names, kept when " Name" is one token (at least 5 are needed). Order ABBA / BABA alternates by example.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    kept = [name for name in dict.fromkeys(names) if is_single_token(tokenizer, " " + name)]
    if len(kept) < 5:
        raise ValueError(
            f"only {len(kept)} of the names are single tokens (with a leading space) for {tokenizer_name(tokenizer)}; need 5"
        )
    lengths = {t: len(encode(tokenizer, _fill(t, kept[0], kept[1], kept[1]))) for t in templates}
    counts = list(lengths.values())
    common = max(set(counts), key=counts.count)
    usable = [t for t in templates if lengths[t] == common]
    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []

    rng = random.Random(seed)
    rows: list[tuple[str, str, str, str, list[int], list[int], str, str]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(
                f"could not build {n} IOI prompts of equal length for {tokenizer_name(tokenizer)}"
            )
        template = usable[len(rows) % len(usable)] if len(rows) < len(usable) else rng.choice(usable)
        io, s, x, y, z = rng.sample(kept, 5)
        order = "ABBA" if len(rows) % 2 == 0 else "BABA"
        clean_text = _fill(template, io, s, s) if order == "ABBA" else _fill(template, s, io, s)
        corrupted_text = _fill(template, x, y, z)
        clean, corrupted = bos + encode(tokenizer, clean_text), bos + encode(tokenizer, corrupted_text)
        if len(clean) != len(bos) + common or len(corrupted) != len(clean):
            continue  # a name merged with its neighbours; draw again
        rows.append((template, order, io, s, clean, corrupted, clean_text, corrupted_text))

    return Task(
        name="ioi",
        clean_tokens=torch.tensor([r[4] for r in rows], dtype=torch.long),
        corrupted_tokens=torch.tensor([r[5] for r in rows], dtype=torch.long),
        answer_positions=torch.full((n,), len(bos) + common - 1, dtype=torch.long),
        correct=torch.tensor([single_token_id(tokenizer, " " + r[2]) for r in rows], dtype=torch.long),
        incorrect=torch.tensor([single_token_id(tokenizer, " " + r[3]) for r in rows], dtype=torch.long),
        prompts=[r[6] for r in rows],
        corrupted_prompts=[r[7] for r in rows],
        metric_name="logit_diff",
        description=(
            "IOI: 'When IO and S went to the store, S gave a drink to' -> IO. Metric at the last position: "
            "logit(' IO') - logit(' S'). Corrupted: the three names replaced by three other distinct names (ABC)."
        ),
        info={
            "templates": usable,
            "names": kept,
            "examples": [{"template": r[0], "order": r[1], "io": r[2], "s": r[3]} for r in rows],
        },
    )
