"""Contextual decomposition for transformers (CD-T): every activation split into relevant + irrelevant parts.

- :func:`head_scores`: relevance of each head (at each position) to a task's metric, [L, H] or [L, H, T].
- :func:`decompose_sources`: any sources (heads, MLPs, input spans at positions) against the metric or later components.
- :func:`discover`: the iterative CD-T circuit search with greedy pruning by faithfulness.
- :func:`explain` / :func:`highlight_html`: word and phrase contributions to a classification (local interpretation).
- :class:`Rules`: the propagation rules' options (sign rule, attention rule, bias split, norm epsilon).

How it runs: :mod:`~circuits.cdt.clean` keeps the clean run node by node; :mod:`~circuits.cdt.walk` carries only the
relevant part of each source (the irrelevant part is the clean value minus it) over the positions the metric can see;
:func:`circuits.cdt.decompose.decompose` with ``reference=True`` walks both parts everywhere, the check it is held to.
"""

from circuits.cdt.discovery import candidates, discover, prune
from circuits.cdt.local import Explanation, explain, highlight_html
from circuits.cdt.nodes import CDTInputError, Node, parse_node
from circuits.cdt.rules import Rules
from circuits.cdt.scores import Context, Scores, check_task, decompose_sources, head_scores, prepare

__all__ = [
    "CDTInputError",
    "Context",
    "Explanation",
    "Node",
    "Rules",
    "Scores",
    "candidates",
    "check_task",
    "decompose_sources",
    "discover",
    "explain",
    "head_scores",
    "highlight_html",
    "parse_node",
    "prepare",
    "prune",
]
