"""What every dashboard page does with the run store: list runs, pick one, show it, and put every failure in a box.

A store, a run or an artifact that cannot be read becomes an ``st.error`` naming it; it never takes the page down.
The pages import this module as ``page_helpers``: ``streamlit run app/Home.py`` puts the ``app/`` folder on
``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import streamlit as st

from workbench.store import Run, RunInfo, Store

T = TypeVar("T")


def fetch_list(fetch: Callable[[], Iterable[T]], *, failed: str, empty: str, warn: bool = False) -> list[T]:
    """``list(fetch())``; when it raises, a box ``"{failed}: {exception}"`` (``st.warning`` with ``warn``, else
    ``st.error``) and ``[]``; when it is empty, the hint ``empty`` in an ``st.info`` box."""
    try:
        items = list(fetch())
    except Exception as exc:  # an unreadable source must not take the page down
        (st.warning if warn else st.error)(f"{failed}: {exc}")
        return []
    if not items:
        st.info(empty)
    return items


def _list(store: Store, kinds: Sequence[str], only_ok: bool) -> list[RunInfo]:
    if len(kinds) <= 1:
        infos = store.list(kinds[0] if kinds else None)
    else:  # several kinds: one list, newest first
        infos = sorted((i for k in kinds for i in store.list(k)), key=lambda i: i.created or "", reverse=True)
    return [i for i in infos if readable(i)] if only_ok else infos


def stored_runs(store: Store, *kinds: str, empty: str, only_ok: bool = False) -> list[RunInfo]:
    """The runs of ``kinds`` (every kind when none is given), newest first.

    An unreadable store is an error box and ``[]``; no runs is the hint ``empty`` in an info box. With ``only_ok``
    every corrupt run is an error box and only the readable ones come back (the hint shows when none is left).
    """
    return fetch_list(lambda: _list(store, kinds, only_ok), failed=f"Cannot read the run store at {store.root}",
                      empty=empty)


def describe(info: RunInfo) -> str:
    """The default label of a run in a picker: ``run_id (model)``."""
    return f"{info.run_id} ({info.model or '-'})"


def pick_run(infos: Sequence[RunInfo], label_of: Callable[[RunInfo], str] = describe, *, key: str | None,
             label: str = "Run") -> RunInfo:
    """A select box over ``infos`` (labels from ``label_of``, corrupt runs marked); returns the picked run."""
    labels = [label_of(i) + ("" if i.ok else " (corrupt)") for i in infos]
    k = st.selectbox(label, range(len(infos)), format_func=lambda j: labels[j], key=key)
    return infos[k if k is not None else 0]


def readable(info: RunInfo) -> bool:
    """Whether the run can be read; for a corrupt run, an error box naming it and what is wrong."""
    if not info.ok:
        st.error(f"Run {info.kind}/{info.run_id} is corrupt and cannot be read: {info.error}")
    return info.ok


def show_run(store: Store, info: RunInfo, show: Callable[[Run], None]) -> None:
    """Load the run and draw it with ``show``; a corrupt run, or any failure while reading or drawing it, is an
    error box."""
    if not readable(info):
        return
    try:
        show(store.load(info.kind, info.run_id))
    except Exception as exc:  # a damaged artifact must not take the page down
        st.error(f"Run {info.kind}/{info.run_id} cannot be read or shown: {exc}")


def metric_grid(items: Sequence[tuple[str, Any]], columns: int | None = None) -> None:
    """Headline numbers as ``st.metric`` in a grid (``columns`` wide, default up to 4); floats to 4 digits."""
    if not items:
        return
    cols = st.columns(columns or min(len(items), 4))
    for j, (name, value) in enumerate(items):
        cols[j % len(cols)].metric(name, f"{value:.4g}" if isinstance(value, float) else value)


def browse_runs(store: Store, *kinds: str, show: Callable[[Run], None], empty: str, key: str | None = "run",
                label: str = "Run", label_of: Callable[[RunInfo], str] = describe, only_ok: bool = False) -> None:
    """The page's usual body: the runs of ``kinds`` (or the hint ``empty``), a picker, and the picked run drawn by
    ``show`` (see :func:`stored_runs`, :func:`pick_run`, :func:`show_run`)."""
    infos = stored_runs(store, *kinds, empty=empty, only_ok=only_ok)
    if infos:
        show_run(store, pick_run(infos, label_of, key=key, label=label), show)


def run_verb_with_progress(argv: list[str]) -> dict[str, Any] | None:
    """Run ``workbench <argv>`` (``workbench.ui.launch.run_verb``) under a progress bar; its ``--json`` object, or
    None after showing its error in a box."""
    from workbench.ui import launch

    bar = st.progress(0.0, text="starting ...")
    try:
        result = launch.run_verb(argv, on_progress=lambda f, line: bar.progress(f, text=line[-120:] or "running"))
    except Exception as exc:  # the verb's own message, whatever failed
        bar.empty()
        st.error(str(exc))
        return None
    bar.progress(1.0, text="done")
    return result
