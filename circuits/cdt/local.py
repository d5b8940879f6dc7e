"""Local interpretation: which words (and phrases) of a text push a classification up or down, by CD-T.

The text is put into a prompt template (default ``"Tweet: {text}\\nSentiment:"``) and classified by the next-token logit
difference ``logit(answers[1]) - logit(answers[0])`` at the last position (default ``" positive"`` minus
``" negative"``). Each word (or run of up to ``phrase_len`` consecutive words) is one source: its tokens' input embeddings,
with zero-ablation semantics by default (``beta`` = the words' embeddings, everything else ``gamma``). A word's
contribution is the beta part of the logit difference: positive pushes towards ``answers[1]``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from circuits.cdt.nodes import CDTInputError
from circuits.cdt.scores import decompose_sources, prepare
from workbench.data.task_base import Task
from workbench.data.tokens import bos_id, encode, single_token_id

__all__ = ["Explanation", "explain", "highlight_html"]

TEMPLATE = "Tweet: {text}\nSentiment:"
ANSWERS = (" negative", " positive")


@dataclass
class Explanation:
    """Contributions of a text's words and phrases to ``logit(answers[1]) - logit(answers[0])``.

    table: pandas DataFrame, one row per word or phrase: ``phrase`` (its text), ``first_word``, ``last_word``
    (word indices, inclusive), ``n_words``, ``first_token``, ``last_token`` (positions in the prompt, inclusive),
    ``contribution`` (the beta part of the logit difference). logit_diff: the clean logit difference.
    """

    text: str
    words: list[str]
    table: object
    logit_diff: float
    answers: tuple[str, str]
    tokens: list[int]

    def word_table(self):
        """The rows of single words only."""
        return self.table[self.table["n_words"] == 1].reset_index(drop=True)

    def html(self) -> str:
        """The text with each word highlighted by its contribution (see :func:`highlight_html`)."""
        return highlight_html(self.words, self.word_table()["contribution"].tolist(), self.answers)


def _prompt(tokenizer, text: str, template: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    if template.count("{text}") != 1:
        raise CDTInputError(f"template must contain '{{text}}' exactly once, got {template!r}")
    words = text.split()
    if not words:
        raise CDTInputError("the text to explain has no words")
    before, after = template.split("{text}")
    bos = bos_id(tokenizer)
    ids = ([bos] if bos is not None else []) + encode(tokenizer, before.rstrip(" "))
    spans = []
    for word in words:
        piece = encode(tokenizer, " " + word)
        spans.append((len(ids), len(ids) + len(piece) - 1))
        ids += piece
    ids += encode(tokenizer, after)
    return ids, words, spans


@torch.no_grad()
def explain(model, text: str, *, answers: tuple[str, str] = ANSWERS, template: str = TEMPLATE, phrase_len: int = 1,
            ablation: str = "zero", tokenizer=None, **rule_options) -> Explanation:
    """Word (and phrase, up to ``phrase_len`` words) contributions of ``text`` to the answer logit difference.

    answers: (negative, positive) strings, each a single token of the model's tokenizer (ValueError otherwise).
    ablation: ``"zero"`` (default) or ``"mean"`` (a word's embedding against the mean embedding of the prompt's other
    positions is not defined, so ``"mean"`` uses the mean over the vocabulary's embeddings at that position).
    rule_options: :class:`~circuits.cdt.rules.Rules` options. The attention rule defaults to ``"total"`` here (patterns
    fixed at the clean run's): with ``"ablated"`` or ``"own"``, zero-ablating an early word of a prompt on a deep model
    (SmolLM2) lets the irrelevant part grow without bound under frozen norm statistics (contributions of order 1e9,
    or NaN).
    """
    rule_options.setdefault("attention", "total")
    tokenizer = tokenizer or model.tokenizer
    if phrase_len < 1:
        raise CDTInputError(f"phrase_len must be at least 1, got {phrase_len}")
    if ablation not in ("zero", "mean"):
        raise CDTInputError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    neg, pos = (single_token_id(tokenizer, a) for a in answers)
    ids, words, spans = _prompt(tokenizer, text, template)
    tokens = torch.tensor([ids])
    task = Task(
        name="explain", clean_tokens=tokens, corrupted_tokens=tokens.clone(),
        answer_positions=torch.tensor([len(ids) - 1]), correct=torch.tensor([pos]), incorrect=torch.tensor([neg]),
        prompts=[text], metric_name="logit_diff",
        description=f"logit({answers[1]!r}) - logit({answers[0]!r}) at the last position of {template!r}",
    )
    ctx = prepare(model, task, ablation="zero")
    if ablation == "mean":
        ctx.means.embed = ctx.weights.W_E.mean(0).expand_as(ctx.means.embed) + (
            ctx.cache.embed[0] - ctx.weights.W_E[tokens[0].to(ctx.weights.W_E.device)])
    rows = []
    for n in range(1, phrase_len + 1):
        for i in range(len(words) - n + 1):
            rows.append((i, i + n - 1))
    sources = [f"emb@{spans[a][0]}-{spans[b][1]}" for a, b in rows]
    scores = decompose_sources(ctx, sources=sources, **rule_options)
    import pandas as pd

    table = pd.DataFrame({
        "phrase": [" ".join(words[a:b + 1]) for a, b in rows],
        "first_word": [a for a, _ in rows], "last_word": [b for _, b in rows],
        "n_words": [b - a + 1 for a, b in rows],
        "first_token": [spans[a][0] for a, _ in rows], "last_token": [spans[b][1] for _, b in rows],
        "contribution": scores.metric.double().cpu().numpy(),
    })
    return Explanation(text, words, table, scores.clean_metric, tuple(answers), ids)


def highlight_html(words: list[str], contributions: list[float], answers: tuple[str, str] = ANSWERS) -> str:
    """An HTML fragment: each word on a background whose colour and strength follow its contribution (blue towards
    ``answers[1]``, red towards ``answers[0]``), the value in its tooltip. Words are HTML-escaped."""
    if len(words) != len(contributions):
        raise ValueError(f"{len(words)} words but {len(contributions)} contributions")
    top = max((abs(c) for c in contributions), default=0.0) or 1.0
    parts = []
    for word, c in zip(words, contributions, strict=True):
        alpha = min(1.0, abs(c) / top)
        colour = f"rgba(31, 119, 180, {alpha:.2f})" if c >= 0 else f"rgba(214, 39, 40, {alpha:.2f})"
        towards = answers[1] if c >= 0 else answers[0]
        parts.append(
            f'<span style="background:{colour};padding:1px 3px;border-radius:3px" '
            f'title="{c:+.3f} towards {html.escape(towards.strip())}">{html.escape(word)}</span>'
        )
    return '<div class="cdt-highlight" style="line-height:1.9">' + " ".join(parts) + "</div>"
