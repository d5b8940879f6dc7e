"""Sentiment of a tweet: "Tweet: {text}\\nSentiment:" -> " positive" or " negative".

Tweets come from the labelled ``tweets`` corpus (negative = 0, positive = 1). Each prompt is encoded in three
pieces, concatenated: the template's text before ``{text}``, the tweet (with a leading space, cut to
``max_text_tokens`` tokens) and the template's text after it, so every prompt ends with the same tokens.

Rows are right-padded with the tokenizer's pad id (else EOS) to the longest prompt, and ``answer_positions``
points at each prompt's last real token. Under causal attention padding on the right never changes the logits
at or before the answer position, so no attention mask is needed.

Corrupted prompts: each clean tweet is paired with a tweet of the opposite label whose prompt has exactly the
same token length, so clean and corrupted rows line up and share the answer position. Labels alternate
positive / negative by example (balanced).

Metric ``logit_diff`` at the answer position: ``logit(correct) - logit(incorrect)``, ``correct`` being the
label's answer token (" positive" for 1) and ``incorrect`` the other one; i.e. (" positive" - " negative")
times +1 for positive tweets and -1 for negative ones.
"""

from __future__ import annotations

import random

import torch

from workbench.data.corpora import load_labelled
from workbench.data.task_base import Task
from workbench.data.tokens import Tokenizer, bos_id, encode, pad_id, single_token_id

TEMPLATE = "Tweet: {text}\nSentiment:"
ANSWERS = (" negative", " positive")  # index = label


def make_sentiment(
    tokenizer: Tokenizer,
    *,
    n: int = 64,
    seed: int = 0,
    split: str = "all",
    max_text_tokens: int = 48,
    template: str = TEMPLATE,
    answers: tuple[str, str] = ANSWERS,
    corpus: str = "tweets",
    prepend_bos: bool = True,
) -> Task:
    """The sentiment task: clean / corrupted tokens [n, seq] (right-padded); metric ``logit_diff``.

    split: corpus split to draw tweets from. max_text_tokens: the tweet is cut to this many tokens.
    template: must contain ``{text}`` once. answers: (negative, positive) strings, each a single token, else
    ValueError naming the string and tokenizer.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if max_text_tokens < 1:
        raise ValueError(f"max_text_tokens must be positive, got {max_text_tokens}")
    if template.count("{text}") != 1:
        raise ValueError(f"template must contain '{{text}}' exactly once, got {template!r}")
    answer_ids = [single_token_id(tokenizer, a) for a in answers]
    before, after = template.split("{text}")
    space = " " if before.endswith(" ") else ""
    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []
    head = bos + encode(tokenizer, before.rstrip(" "))
    tail = encode(tokenizer, after)

    texts, labels = load_labelled(corpus, split)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    waiting: dict[tuple[int, int], list[list[int]]] = {}  # (length, label) -> prompts still without a partner
    pairs: list[tuple[int, list[int], list[int]]] = []  # (clean label, clean ids, corrupted ids)
    for i in order:
        if len(pairs) == n:
            break
        ids = head + encode(tokenizer, space + texts[i])[:max_text_tokens] + tail
        label = labels[i]
        partners = waiting.get((len(ids), 1 - label))
        if not partners:
            waiting.setdefault((len(ids), label), []).append(ids)
            continue
        other = partners.pop()
        want = 1 if len(pairs) % 2 == 0 else 0  # alternate the clean label
        pairs.append((want, ids, other) if label == want else (want, other, ids))
    if len(pairs) < n:
        raise ValueError(
            f"only {len(pairs)} clean/corrupted pairs of equal length in {corpus!r} split {split!r}; asked for {n}"
        )

    width = max(len(c) for _, c, _ in pairs)
    pad = pad_id(tokenizer)
    clean = torch.full((n, width), pad, dtype=torch.long)
    corrupted = torch.full((n, width), pad, dtype=torch.long)
    for row, (_, c, k) in enumerate(pairs):
        clean[row, : len(c)] = torch.tensor(c)
        corrupted[row, : len(k)] = torch.tensor(k)
    pair_labels = [p[0] for p in pairs]
    return Task(
        name="sentiment",
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_positions=torch.tensor([len(c) - 1 for _, c, _ in pairs], dtype=torch.long),
        correct=torch.tensor([answer_ids[y] for y in pair_labels], dtype=torch.long),
        incorrect=torch.tensor([answer_ids[1 - y] for y in pair_labels], dtype=torch.long),
        prompts=[tokenizer.decode(c[len(bos) :]) for _, c, _ in pairs],
        corrupted_prompts=[tokenizer.decode(k[len(bos) :]) for _, _, k in pairs],
        metric_name="logit_diff",
        description=(
            f"Sentiment of tweets, prompt {template!r}, right-padded (answer_positions = last real token). Metric: "
            f"logit({answers[1]!r}) - logit({answers[0]!r}), negated for negative tweets. Corrupted: a tweet of the "
            "opposite label with the same token length."
        ),
        info={
            "template": template,
            "answers": list(answers),
            "split": split,
            "max_text_tokens": max_text_tokens,
            "examples": [{"label": y} for y in pair_labels],
        },
    )
