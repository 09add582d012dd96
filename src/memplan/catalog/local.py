"""Local models: a ``config.json`` path or a model folder, and its safetensors headers.

A safetensors file starts with an 8-byte little-endian header length N and N bytes of JSON
giving every tensor's dtype, shape and byte range (https://github.com/huggingface/safetensors,
"Format"). Reading that header gives the stored dtypes and the exact count without touching
the weights. ``model.safetensors.index.json`` maps tensors to shards and gives their total size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError, UnknownModelError
from memplan.specs.model import ModelSpec

__all__ = [
    "CheckpointSummary",
    "checkpoint_note",
    "load_local",
    "read_config_file",
    "read_safetensors_header",
    "summarize_checkpoint",
]

_MAX_HEADER_BYTES = 100 * 2**20  # the format caps headers at 100 MB

# Bytes per element of the safetensors dtypes.
DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1,
    "BOOL": 1, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip


def read_config_file(path: Path) -> dict[str, Any]:
    """A config.json as a dict, with a one-line error for unreadable or malformed files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnknownModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object (the model's config)")
    return data


def load_local(path: Path) -> ModelSpec:
    """The spec of a config.json file or a folder holding one."""
    from memplan.specs.hf import spec_from_config

    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UnknownModelError(f"{path} has no config.json; point at a model folder or a config")
    config = read_config_file(config_path)
    name = str(config.get("_name_or_path") or "") or (path.name if path.is_dir() else str(path))
    return spec_from_config(config, name=name, source=str(path))


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (tensor name -> dtype, shape, data_offsets)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ConfigError(f"{path} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER_BYTES:
                raise ConfigError(f"{path}: safetensors header of {length} bytes is not valid")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: the safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """What a folder's safetensors headers say: counts and bytes per stored dtype."""

    files: tuple[str, ...]
    n_tensors: int
    n_params: int | None
    """Exact element count from the headers; None when shards are missing (index only)."""
    params_by_dtype: dict[str, int] = field(default_factory=dict)
    total_bytes: int | None = None
    missing_files: tuple[str, ...] = ()


def _shard_names(folder: Path) -> tuple[list[str], int | None]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = read_config_file(index)
        weight_map = data.get("weight_map") or {}
        total = (data.get("metadata") or {}).get("total_size")
        names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        return names, int(total) if isinstance(total, int | float) else None
    return sorted(p.name for p in folder.glob("*.safetensors")), None


def summarize_checkpoint(folder: Path) -> CheckpointSummary | None:
    """Counts from the safetensors headers in ``folder``; None when it has no safetensors."""
    names, index_total = _shard_names(folder)
    if not names:
        return None
    by_dtype: dict[str, int] = {}
    n_tensors = 0
    total_bytes = 0
    missing = tuple(name for name in names if not (folder / name).is_file())
    for name in names:
        if name in missing:
            continue
        for info in read_safetensors_header(folder / name).values():
            numel = prod(int(d) for d in info.get("shape", []))
            dtype = str(info.get("dtype", "?"))
            by_dtype[dtype] = by_dtype.get(dtype, 0) + numel
            begin, end = info.get("data_offsets", (0, 0))
            total_bytes += int(end) - int(begin)
            n_tensors += 1
    complete = not missing
    return CheckpointSummary(
        files=tuple(names),
        n_tensors=n_tensors,
        n_params=sum(by_dtype.values()) if complete else None,
        params_by_dtype=by_dtype,
        total_bytes=total_bytes if complete else index_total,
        missing_files=missing,
    )


def checkpoint_note(summary: CheckpointSummary, expected: int) -> str:
    """One sentence: do the stored tensors agree with the count from the config?"""
    dtypes = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.params_by_dtype.items()))
    if summary.n_params is None:
        size = f"{summary.total_bytes:,} bytes" if summary.total_bytes else "unknown size"
        return (
            f"checkpoint: {len(summary.missing_files)} of {len(summary.files)} shards missing; "
            f"index total {size}; count not cross-checked"
        )
    if summary.n_params == expected:
        return (
            f"checkpoint: {summary.n_tensors} tensors in {len(summary.files)} safetensors "
            f"file(s) hold {summary.n_params:,} elements ({dtypes}): agrees with the config"
        )
    diff = summary.n_params - expected
    return (
        f"checkpoint: the safetensors headers hold {summary.n_params:,} elements ({dtypes}), "
        f"{diff:+,} vs the config's {expected:,} (stored buffers, tied copies or extra "
        "layers such as DeepSeek-V3's MTP layer explain typical differences)"
    )
