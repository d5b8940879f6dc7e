"""Sparse dictionaries (SAEs, transcoders, skip transcoders): model, training, evaluation, SAELens-format files, feature views."""

from circuits.dictionaries.model import ACTIVATIONS, KINDS, Dictionary, DictionaryConfigError, expansion_width

__all__ = ["ACTIVATIONS", "KINDS", "Dictionary", "DictionaryConfigError", "expansion_width"]
