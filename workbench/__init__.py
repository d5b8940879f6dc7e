"""The interpretability workbench: hooked models, data, streaming harvest and a run store.

Heavy submodules (torch, transformer-lens) are imported on use, so ``import workbench`` stays cheap.
"""

__version__ = "0.1.0"
