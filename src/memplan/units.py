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
    "bytes_mark",
    "format_bytes",
    "format_count",
    "format_flops",
    "format_seconds",
    "format_sig",
    "parse_count",
    "parse_size",
    "render_marks",
    "round_sig",
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


def parse_size(text: str, *, flag: str = "") -> int:
    """``"80GiB"`` -> bytes; ``GB`` is 10**9, ``GiB`` is 2**30, ``B`` is bytes.

    A bare number is bytes, except where ``flag`` names the command-line flag it came from:
    there a unit is required (``--gpu-memory 24`` means 24 GiB or 24 GB, never 24 bytes).
    """
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise SetupError(
            f"cannot read the size {text!r}: write a number with a unit, e.g. 80GiB, 80GB or 24e9B"
        )
    if flag and not unit:
        number = match.group(1)
        raise SetupError(
            f"{flag} {text.strip()} has no unit: write {number}GiB (2^30 bytes) or {number}GB "
            f"(10^9 bytes)"
        )
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise SetupError(f"the size {text!r} must be positive")
    if not math.isfinite(value) or value > MAX_SIZE_BYTES:
        raise SetupError(f"the size {text!r} is beyond any real memory (at most 1 EiB)")
    return round(value)


_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]?)\s*$", re.IGNORECASE)


def parse_count(text: str, *, limit: float = 1e18) -> int:
    """``"2T"`` -> 2,000,000,000,000: a count as an integer, in e-notation (``1e12``) or with a
    decimal suffix (``k`` 10^3, ``M`` 10^6, ``B``/``G`` 10^9, ``T`` 10^12), as token counts
    are written in papers (Llama 2: "2T tokens")."""
    match = _COUNT_RE.match(text)
    suffix = match.group(2).lower() if match else None
    if match is None or suffix not in _COUNT_SUFFIXES:
        raise SetupError(f"cannot read the count {text!r}: write e.g. 400000, 15e12 or 2T")
    value = float(match.group(1)) * _COUNT_SUFFIXES[suffix]
    if not math.isfinite(value) or value > limit:
        raise SetupError(f"the count {text!r} is beyond {limit:.0e}")
    if value < 1 or not value.is_integer():
        raise SetupError(f"the count {text!r} must be a positive whole number")
    return int(value)


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


_BYTES_MARK = re.compile(r"\[\[(-?[0-9]+) B\]\]")


def bytes_mark(n_bytes: float) -> str:
    """A size inside a note, rendered later in the unit the user asked for: the CLI writes it
    in GiB, or in GB under ``--decimal`` (:func:`render_marks`)."""
    return f"[[{round(n_bytes)} B]]"


def render_marks(text: str, *, decimal: bool = False) -> str:
    """``text`` with every :func:`bytes_mark` written as GiB (or GB)."""
    return _BYTES_MARK.sub(lambda m: format_bytes(int(m.group(1)), decimal=decimal), text)


def format_count(n: int | float) -> str:
    """A count with thousands separators: 6,738,415,616."""
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.2f}"
    return f"{int(n):,}"


def format_flops(flops: float) -> str:
    """FLOPs in scientific notation with an SI label: 9.06e10 FLOPs."""
    return f"{flops:.4g} FLOP"


def round_sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant figures (32,732 -> 32,700)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_sig(value: float, digits: int = 3) -> str:
    """Three significant figures with thousands separators: 32,700; 1.23; 0.0457."""
    rounded = round_sig(value, digits)
    if abs(rounded) >= 10 ** (digits - 1):
        return f"{rounded:,.0f}"
    return f"{rounded:,.{digits}g}" if abs(rounded) >= 1 else f"{rounded:.{digits}g}"


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
    return f"{format_sig(seconds / 86400)} days"
