"""Induction-head formation under clamps (Singh et al. 2024): the induction toy trained with components fixed at every
training step, and the phase change read from its curves.

- :mod:`~circuits.formation.measure`: what each evaluation records; ``phase_change``;
- :mod:`~circuits.formation.sweep`: ``run_sweep`` over clamp entries (``none``, ``prev.``, ``H*``);
- :mod:`~circuits.formation.analysis`: ``FORMATION`` (``workbench formation``); :mod:`~circuits.formation.figures`.
"""
