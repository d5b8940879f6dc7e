"""Contextual decomposition for transformers (CD-T): every activation split into relevant + irrelevant parts.

- :func:`head_scores`: relevance of each head (at each position) to a task's metric, [L, H] or [L, H, T].
- :func:`decompose_sources`: any sources (heads, MLPs, input spans at positions) against the metric or later components.
- :func:`discover`: the iterative CD-T circuit search with greedy pruning by faithfulness (its scorer
  :class:`CdtScorer` drives the one loop :func:`circuits.discovery.discover`).
- :func:`explain` / :func:`highlight_html`: word and phrase contributions to a classification (local interpretation).
- :class:`Rules`: the propagation rules' options (sign rule, attention rule, bias split, norm epsilon).
- :data:`CDT` / :class:`CdtConfig`: the analysis behind the contract (``CDT.run(model, CdtConfig(...))``).

How it runs: :mod:`~circuits.cdt.clean` keeps the clean run node by node; :mod:`~circuits.cdt.walk` carries only the
relevant part of each source (the irrelevant part is the clean value minus it) over the positions the metric can see;
:func:`circuits.cdt.decompose.decompose` with ``reference=True`` walks both parts everywhere, the check it is held to.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "CDT": "circuits.cdt.analysis",
    "CdtConfig": "circuits.cdt.analysis",
    "CdtScorer": "circuits.cdt.discovery",
    "candidates": "circuits.cdt.discovery",
    "discover": "circuits.cdt.discovery",
    "prune": "circuits.cdt.discovery",
    "Explanation": "circuits.cdt.local",
    "explain": "circuits.cdt.local",
    "highlight_html": "circuits.cdt.local",
    "CDTInputError": "circuits.cdt.nodes",
    "Node": "circuits.cdt.nodes",
    "parse_node": "circuits.cdt.nodes",
    "Rules": "circuits.cdt.rules",
    "Context": "circuits.cdt.scores",
    "Scores": "circuits.cdt.scores",
    "check_task": "circuits.cdt.scores",
    "decompose_sources": "circuits.cdt.scores",
    "head_scores": "circuits.cdt.scores",
    "prepare": "circuits.cdt.scores",
})
