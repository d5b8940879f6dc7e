"""Tasks with a metric: clean tokens, corrupted tokens (for patching baselines) and a metric on logits.

- ``induction``: repeated random tokens ``BOS + A + A`` (corrupted ``BOS + A + B``); metric ``log_prob``.
- ``greater-than``: "The war lasted from the year 1732 to the year 17" -> a later year; metric ``prob_diff``.
- ``ioi``: "When Mary and John went to the store, John gave a drink to" -> " Mary"; metric ``logit_diff``.
- ``sentiment``: "Tweet: ...\\nSentiment:" -> " positive" / " negative"; metric ``logit_diff``.

``make_task(name, tokenizer, n=..., seed=..., **options)`` builds one; each builder's docstring lists its options
and states exactly what its metric computes (also kept in ``Task.description``). Any answer string that is not a
single token for the tokenizer raises ValueError naming the string and the tokenizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from workbench.data.task_base import METRICS, Task
from workbench.data.task_greater_than import make_greater_than
from workbench.data.task_induction import induction_batch, make_induction
from workbench.data.task_ioi import make_ioi
from workbench.data.task_sentiment import make_sentiment
from workbench.data.tokens import Tokenizer

_BUILDERS: dict[str, Callable[..., Task]] = {
    "induction": make_induction,
    "greater-than": make_greater_than,
    "ioi": make_ioi,
    "sentiment": make_sentiment,
}
TASKS: tuple[str, ...] = tuple(_BUILDERS)

__all__ = ["METRICS", "TASKS", "Task", "induction_batch", "make_task"]


def make_task(name: str, tokenizer: Tokenizer, *, n: int = 64, seed: int = 0, **options: Any) -> Task:
    """Build task ``name`` (one of ``TASKS``) for ``tokenizer``: a Task with n examples, deterministic in seed.

    Unknown name -> ValueError listing the tasks; an option the task does not take -> TypeError listing them.
    Names may use underscores for dashes (``"greater_than"``).
    """
    key = name.replace("_", "-")
    if key not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")
    builder = _BUILDERS[key]
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("tokenizer", "n", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"task {key!r} takes no option {', '.join(unknown)}; its options: {', '.join(accepted)}"
        )
    return builder(tokenizer, n=n, seed=seed, **options)
