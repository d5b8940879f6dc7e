"""Errors the core's modules share (kept apart so that those modules need not import each other)."""

from __future__ import annotations


class ModelSpecError(ValueError):
    """An unknown or malformed model spec, or a checkpoint step that does not exist."""


class ConfigError(ValueError):
    """An option value outside its stated range or choices; the message names the option and what is accepted."""
