"""Units: bytes, FLOPs and seconds inside; GiB, GB, TFLOP/s only at the edges.

GiB = 2**30 bytes and is labelled GiB; GB = 10**9 bytes and is used only where asked.
"""

from __future__ import annotations

import math
import re

from memplan.errors import SetupError

__all__ = [
    "GB",
    "GIB",
    "KIB",
    "MAX_COUNT",
    "MIB",
    "TIB",
    "format_bytes",
    "format_count",
    "format_flops",
    "format_seconds",
    "parse_size",
]

KIB = 2**10
MIB = 2**20
GIB = 2**30
TIB = 2**40
KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12
MAX_SIZE_BYTES = 2**60
"""Largest size ``parse_size`` accepts (1 EiB): beyond it a value is a typo, not a GPU."""
MAX_COUNT = 2**40
"""Largest count accepted (batch, lengths, degrees, ranks): about 1.1e12, far beyond any real
setup, and small enough that products of counts stay exact in float arithmetic's range."""

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KB,
    "kb": KB,
    "kib": KIB,
    "m": MB,
    "mb": MB,
    "mib": MIB,
    "g": GB,
    "gb": GB,
    "gib": GIB,
    "t": TB,
    "tb": TB,
    "tib": TIB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"80GiB"`` -> bytes. A bare number is bytes; ``GB`` is 10**9, ``GiB`` is 2**30."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise SetupError(
            f"cannot read the size {text!r}: write a number with a unit, e.g. 80GiB, 80GB or 24e9"
        )
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise SetupError(f"the size {text!r} must be positive")
    if not math.isfinite(value) or value > MAX_SIZE_BYTES:
        raise SetupError(f"the size {text!r} is beyond any real memory (at most 1 EiB)")
    return round(value)


def format_bytes(n_bytes: float, *, decimal: bool = False, digits: int = 2) -> str:
    """Bytes as GiB (or GB with ``decimal=True``), labelled; small values in MiB/KiB."""
    if decimal:
        steps = ((TB, "TB"), (GB, "GB"), (MB, "MB"), (KB, "kB"))
    else:
        steps = ((TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB"))
    for scale, label in steps:
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:,.{digits}f} {label}"
    return f"{int(n_bytes):,} B"


def format_count(n: int | float) -> str:
    """A count with thousands separators: 6,738,415,616."""
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.2f}"
    return f"{int(n):,}"


def format_flops(flops: float) -> str:
    """FLOPs in scientific notation with an SI label: 9.06e10 FLOPs."""
    return f"{flops:.4g} FLOP"


def format_seconds(seconds: float) -> str:
    """Seconds as the largest readable unit (ms, s, min, h, days)."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.4g} days"
