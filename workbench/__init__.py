"""The interpretability workbench: hooked models, data, streaming harvest, a run store and the analysis contract.

``import workbench`` is cheap: the public names below are imported on first use.

- :func:`load_model` (``workbench.models``): a spec (``smollm2-135m``, ``toy/induction-2l``, a folder) -> a
  transformer-lens ``TransformerBridge`` in compatibility mode.
- :func:`make_task` (``workbench.data``): induction, greater-than, IOI, sentiment: clean / corrupted tokens, a metric.
- :func:`harvest` (``workbench.harvest``): stream batches through a model to consumers that keep summaries.
- :class:`Store` (``workbench.store``): runs on disk, each whole or absent.
- :class:`Analysis`, :class:`Result` (``workbench.analysis``): the contract every analysis follows.
- :class:`Circuit` (``workbench.circuit``): a circuit graph over nodes, with faithfulness, JSON/GraphML and a figure.
- :class:`Node` (``workbench.nodes``): the one node-id grammar (``L2.H5``, ``L1.MLP@7``, ``L2.H5@7:3``).
"""

from workbench.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "load_model": "workbench.models",
    "list_models": "workbench.models",
    "make_task": "workbench.data",
    "token_batches": "workbench.data",
    "harvest": "workbench.harvest",
    "Store": "workbench.store",
    "Analysis": "workbench.analysis",
    "Result": "workbench.analysis",
    "Circuit": "workbench.circuit",
    "Node": "workbench.nodes",
})
