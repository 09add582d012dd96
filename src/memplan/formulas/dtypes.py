"""Bytes per element of the number formats memplan counts in, defined once.

The weight formats, the KV cache dtypes and the activation dtypes all read this table;
quantized checkpoint formats (bitsandbytes, GPTQ, AWQ), whose bytes are not a width per
element, are in :mod:`memplan.formulas.weights`.
"""

from __future__ import annotations

__all__ = ["DTYPE_ALIASES", "DTYPE_BYTES", "canonical_dtype", "float_dtype_bytes"]

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
"""Bytes per element (IEEE/bfloat16 widths; fp8 either E4M3 or E5M2; int4 packed two a byte)."""

DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
}
"""Other spellings (PyTorch and transformers names, vLLM's ``--kv-cache-dtype`` values)."""

_FLOATS = ("fp32", "fp16", "bf16")


def canonical_dtype(name: str) -> str:
    """``"bfloat16"`` -> ``"bf16"``; a name that is neither an alias nor in the table is
    returned lowered, unchanged (the caller decides whether it is an error)."""
    key = name.strip().lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(key, key)


def float_dtype_bytes(name: str, default: int = 2) -> int:
    """Bytes of an activation element in the float dtype ``name``; ``default`` (the half
    width of the compute dtype) for anything else (a quantized weight format)."""
    key = canonical_dtype(name)
    return int(DTYPE_BYTES[key]) if key in _FLOATS else default
