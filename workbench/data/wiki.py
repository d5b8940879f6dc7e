"""Plain text from the Wikipedia dump bundled in gensim's test data.

The file is ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``: 206 pages
of an English Wikipedia XML dump, 100 of which are ``#REDIRECT`` stubs. What remains is 106 articles (about 3 MB of
text once the markup is gone). Markup is removed with gensim's own ``filter_wiki`` plus a little more cleaning
(bold/italic quotes, heading markers, trailing "See also"/"References" sections, runs of blank lines).

Parsing takes a few seconds (importing gensim is most of it), so the result is cached as JSON under
``$WORKBENCH_HOME/data/``; the cache name carries the file's size and a parser version, so a changed file or
cleaning rule builds a fresh one.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

from workbench import atomic
from workbench.paths import workbench_home

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PARSER_VERSION = 1

_TAIL_SECTIONS = re.compile(
    r"^=+\s*(see also|references|external links|notes|further reading|bibliography|sources|footnotes)\s*=+\s*$",
    flags=re.IGNORECASE | re.MULTILINE,
)
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", flags=re.MULTILINE)
_BOLD_ITALIC = re.compile(r"'{2,}")
_EMPTY_ITEM = re.compile(r"^[*#;:]+\s*$", flags=re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_wiki_text(markup: str) -> str:
    """Wikipedia markup -> plain text (gensim's ``filter_wiki`` plus the extra cleaning described above)."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    tail = _TAIL_SECTIONS.search(text)
    if tail:
        text = text[: tail.start()]
    text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = _EMPTY_ITEM.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def parse_wiki_dump(path: Path) -> list[str]:
    """Articles of a bz2 XML dump as ``"Title\\n\\nplain text"`` strings, redirects and empty pages dropped."""
    from gensim.corpora.wikicorpus import extract_pages

    articles: list[str] = []
    with bz2.open(path, "rb") as fh:
        for title, markup, _page_id in extract_pages(fh, filter_namespaces=("0",)):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            body = clean_wiki_text(markup)
            if body:
                articles.append(f"{title}\n\n{body}")
    return articles


def load_wiki_articles(path: Path) -> list[str]:
    """The dump's articles, from the JSON cache when present (built on first use)."""
    cache = workbench_home() / "data" / f"wiki-v{PARSER_VERSION}-{path.stat().st_size}.json"
    if cache.is_file():
        try:
            articles = json.loads(cache.read_text(encoding="utf-8"))
            if isinstance(articles, list) and all(isinstance(a, str) for a in articles):
                return articles
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    articles = parse_wiki_dump(path)
    atomic.write_json(cache, articles)
    return articles
