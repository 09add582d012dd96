"""Errors that memplan reports to the user as one line.

Every input problem is raised as a :class:`MemplanError` (never ``assert``); the CLI prints
``memplan: error: <message>`` and exits with status 2. The message says what is wrong and how
to fix it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "MemplanError",
    "MissingExtraError",
    "SetupError",
    "UnknownGpuError",
    "UnknownModelError",
    "install_command",
]


class MemplanError(Exception):
    """Base class: an input problem with a one-line, actionable message."""


class ConfigError(MemplanError):
    """A model config is malformed, incomplete or inconsistent."""


class UnknownModelError(MemplanError):
    """A model name matches no catalog entry, file or folder."""


class UnknownGpuError(MemplanError):
    """A GPU name matches no catalog entry."""


class SetupError(MemplanError):
    """A training, inference or serving setup is impossible (batch 0, bad degree, ...)."""


class MissingExtraError(MemplanError):
    """An optional dependency (the ``trace`` extra, ``huggingface_hub``) is not installed."""


def install_command(extra: str) -> str:
    """The command that installs ``extra`` for this copy of memplan: from a source checkout
    (a ``pyproject.toml`` beside ``src/``) ``pip install -e '.[extra]'`` in the checkout, else
    ``pip install 'memplan[extra]'`` from the package index."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "memplan"' in pyproject.read_text(encoding="utf-8"):
        return f"pip install -e '.[{extra}]' (in {root})"
    return f"pip install 'memplan[{extra}]'"
