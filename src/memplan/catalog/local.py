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
    "parse_config_text",
    "read_config_file",
    "read_safetensors_header",
    "spec_from_text",
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
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except OSError as exc:
        raise UnknownModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}); a config.json is a UTF-8 JSON file"
        ) from exc
    return parse_config_text(text, str(path))


def parse_config_text(text: str, label: str) -> dict[str, Any]:
    """The text of a config.json as a dict; ``label`` names it in the one-line errors (a path,
    or ``pasted config.json`` on the web page)."""
    try:
        data = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{label} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError as exc:
        raise ConfigError(f"{label} is nested too deeply to be a model config") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must hold a JSON object (the model's config)")
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


def spec_from_text(text: str, filename: str = "config.json") -> ModelSpec:
    """The spec of a config.json given as text (pasted or dropped on the web page): parsed and
    validated exactly as :func:`load_local` does for a file, named like it too."""
    from memplan.specs.hf import spec_from_config

    label = f"the pasted {filename}"
    config = parse_config_text(text, label)
    name = str(config.get("_name_or_path") or "") or filename
    return spec_from_config(config, name=name, source=label)


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
            raw = handle.read(length)
            if len(raw) < length:
                raise ConfigError(
                    f"{path}: the safetensors header claims {length:,} bytes but the file ends "
                    f"after {len(raw):,}; the file is truncated"
                )
            header = json.loads(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: the safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_tensor_entry(path, name, info)
    return header


def _check_tensor_entry(path: Path, name: str, info: Any) -> None:
    """One header entry must be ``{"dtype": str, "shape": [int, ...], "data_offsets": [b, e]}``
    (the safetensors format); raise ConfigError naming the tensor otherwise."""
    ok = isinstance(info, dict) and isinstance(info.get("dtype"), str)
    shape = info.get("shape") if ok else None
    offsets = info.get("data_offsets") if ok else None
    ok = ok and isinstance(shape, list) and all(_is_count(d) for d in shape)
    ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
    if not ok or offsets is None or offsets[1] < offsets[0]:
        raise ConfigError(
            f"{path}: tensor {name!r} has a malformed header entry (expected dtype, shape and "
            "data_offsets); the file is corrupt or not a safetensors file"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
        metadata = data.get("metadata") or {}
        total = metadata.get("total_size") if isinstance(metadata, dict) else None
        if not isinstance(weight_map, dict) or not all(
            _is_shard_name(v) for v in weight_map.values()
        ):
            raise ConfigError(
                f"{index}: weight_map must map tensor names to shard file names in the folder"
            )
        names = sorted(set(weight_map.values()))
        return names, int(total) if isinstance(total, int | float) and total >= 0 else None
    return sorted(p.name for p in folder.glob("*.safetensors")), None


def _is_shard_name(name: Any) -> bool:
    """A plain file name (no folder part), so an index cannot point outside its folder."""
    return isinstance(name, str) and bool(name) and Path(name).name == name and name != ".."


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
