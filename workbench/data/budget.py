"""Token budgets against what a corpus holds: a budget larger than the corpus is refused at once (tokenizing the
whole corpus to find out would take minutes), from a bound that needs no tokenizer."""

from __future__ import annotations

from functools import cache

from workbench.data.corpora import CORPORA, LABELLED_CORPORA, load_documents, load_labelled

__all__ = ["check_corpus", "check_labelled_count", "check_token_budget", "max_tokens"]


def check_corpus(name: str, flag: str = "--corpus", labelled: bool = False) -> None:
    """ValueError naming ``flag`` for a corpus that does not exist (or, with ``labelled``, carries no labels)."""
    accepted = LABELLED_CORPORA if labelled else CORPORA
    if name not in accepted:
        kind = "labelled corpus" if labelled else "corpus"
        raise ValueError(f"{flag} {name!r}: unknown {kind}; accepted: {', '.join(accepted)}")


@cache
def _size(name: str, split: str) -> tuple[int, int]:
    docs = load_documents(name, split)
    return sum(len(d.encode("utf-8")) for d in docs), len(docs)


def max_tokens(name: str, split: str, seq_len: int) -> int:
    """An upper bound on the tokens of ``name``'s ``split`` cut into rows of ``seq_len`` (a BOS per row): every
    token covers at least one byte of text, besides one EOS (and a possible prefix) per document."""
    n_bytes, n_docs = _size(name, split)
    body = n_bytes + 2 * n_docs
    rows = body // max(seq_len - 1, 1) + n_docs + 1
    return body + rows


def check_token_budget(name: str, split: str, tokens: int, seq_len: int, flag: str) -> None:
    """ValueError naming ``flag`` when ``tokens`` exceed what the corpus's split can give."""
    bound = max_tokens(name, split, seq_len)
    if tokens > bound:
        n_bytes, n_docs = _size(name, split)
        raise ValueError(f"{flag} {tokens:,} is more than the corpus {name!r} holds: its {split} split has {n_docs} "
                         f"documents of {n_bytes:,} bytes, at most {bound:,} tokens; lower {flag}")


def check_labelled_count(name: str, n: int, flag: str = "--n") -> None:
    """ValueError naming ``flag`` when ``n`` class-balanced examples exceed what the labelled corpus holds."""
    _, labels = load_labelled(name)
    classes = sorted(set(labels))
    per_class = min(labels.count(c) for c in classes)
    most = per_class * len(classes)
    if n > most:
        raise ValueError(f"{flag} {n:,} is more than the corpus {name!r} holds: {len(labels):,} labelled texts, at "
                         f"most {most:,} class-balanced ({per_class:,} per class); lower {flag}")
