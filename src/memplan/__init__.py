"""memplan: exact memory and compute accounting for transformer LLMs.

The core (everything outside ``memplan.trace``) imports no torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
