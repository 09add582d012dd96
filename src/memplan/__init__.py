"""memplan: exact memory and compute accounting for transformer LLMs.

The core (everything outside ``memplan.trace``) imports no torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "infer", "params", "train"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so that ``import memplan`` stays instant (and torch-free)."""
    if name in ("params", "train", "infer"):
        from memplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'memplan' has no attribute {name!r}")
