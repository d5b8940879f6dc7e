"""Information pathways (Hwang et al. 2023): stochastically subsampled self-attention against dense training.

- :mod:`~circuits.pathways.run`: ``compare`` (held-out losses, sub-model ensembles, attention cost);
- :mod:`~circuits.pathways.analysis`: ``SSA`` (``workbench ssa``); :mod:`~circuits.pathways.figures`.
"""
