"""One frozen model beneath the circuit methods.

- :mod:`~circuits.frozen.facts`: ``ModelFacts.of(model)``, the one place that reads a model's architecture facts;
- :mod:`~circuits.frozen.weights`: the model's weights as stacked tensors in any dtype (``model_weights``);
- :mod:`~circuits.frozen.clean`: ``capture(model, tokens, dtype=...) -> CleanRun``, the clean run kept node by node.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelFacts": "circuits.frozen.facts",
    "UnsupportedModelError": "circuits.frozen.facts",
    "Weights": "circuits.frozen.weights",
    "model_weights": "circuits.frozen.weights",
    "CleanRun": "circuits.frozen.clean",
    "LayerRun": "circuits.frozen.clean",
    "capture": "circuits.frozen.clean",
    "forward": "circuits.frozen.clean",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'circuits.frozen' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
