"""Data: bundled text corpora (read from installed packages, never downloaded), token batches, and tasks.

- :mod:`workbench.data.corpora`: ``CORPORA``, ``list_corpora``, ``load_documents``, ``load_labelled`` (splits).
- :mod:`workbench.data.batches`: ``TokenBatch``, ``token_batches`` (lazy, fixed-length rows with BOS and mask).
- :mod:`workbench.data.tasks`: ``Task``, ``make_task``, ``TASKS``, ``induction_batch``.
"""

from __future__ import annotations

from workbench.data.batches import TokenBatch, token_batches
from workbench.data.corpora import (
    CORPORA,
    LABELLED_CORPORA,
    SPLITS,
    CorpusUnavailableError,
    list_corpora,
    load_documents,
    load_labelled,
)
from workbench.data.tasks import METRICS, TASKS, Task, induction_batch, make_task

__all__ = [
    "CORPORA",
    "LABELLED_CORPORA",
    "METRICS",
    "SPLITS",
    "TASKS",
    "CorpusUnavailableError",
    "Task",
    "TokenBatch",
    "induction_batch",
    "list_corpora",
    "load_documents",
    "load_labelled",
    "make_task",
    "token_batches",
]
