"""The GPU catalog: ``resolve_gpu(name) -> Gpu`` and ``list_gpus()``, read from ``gpus.json``.

Names match case-insensitively and ignoring separators, so ``H100``, ``H100-SXM``,
``h100-sxm-80gb`` and ``NVIDIA H100 80GB HBM3`` (as ``nvidia-smi`` prints it) all find the same
entry. ``Gpu.memory_bytes`` is the total ``cudaMemGetInfo`` reports (what a program can get and
vLLM sizes from), not the marketing size; ``Gpu.memory_estimated`` marks the figures that are
not such a reading. Every figure carries its
source (datasheet or product page) in ``Gpu.sources``.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from memplan.errors import SetupError, UnknownGpuError
from memplan.specs.hardware import CudaDevice, Gpu
from memplan.units import GB, GIB, MIB

__all__ = ["DEFAULT_KERNEL_GPU", "gpu_names", "kernel_device", "list_gpus", "resolve_gpu"]

DEFAULT_KERNEL_GPU = "H100-SXM-80GB"
"""The GPU whose attention-kernel choice both engines follow when none is named."""

_PREFIXES = ("nvidia", "geforce", "amd", "instinct", "tesla")


def _normalise(name: str) -> str:
    """``"NVIDIA GeForce RTX-4090"`` -> ``"rtx4090"``: lower case, alphanumerics only."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _gpu_from_entry(entry: dict[str, Any]) -> Gpu:
    datasheet_bytes = round(entry["memory_gib"] * GIB)
    driver_mib = entry.get("driver_memory_mib")
    memory_source = entry.get("driver_memory_source")
    sources = tuple(entry.get("sources", ()))
    if memory_source:
        sources = (*sources, f"usable memory: {memory_source}")
    return Gpu(
        name=entry["name"],
        memory_bytes=driver_mib * MIB if driver_mib else datasheet_bytes,
        memory_estimated=bool(entry.get("driver_memory_estimated", not driver_mib)),
        datasheet_memory_bytes=datasheet_bytes,
        tflops={key: float(value) for key, value in entry["tflops"].items()},
        memory_bandwidth_bytes_per_s=entry["memory_bandwidth_gb_s"] * GB,
        interconnect=entry.get("interconnect", ""),
        interconnect_bytes_per_s=entry.get("interconnect_gb_s", 0) * GB or None,
        pcie_bytes_per_s=entry.get("pcie_gb_s", 0) * GB or None,
        vendor=entry.get("vendor", ""),
        aliases=tuple(entry.get("aliases", ())),
        compute_capability=_capability(entry.get("compute_capability")),
        sources=sources,
        notes=tuple(entry.get("notes", ())),
    )


def _capability(text: str | None) -> tuple[int, int] | None:
    """``"9.0"`` -> (9, 0)."""
    if text is None:
        return None
    major, minor = text.split(".")
    return int(major), int(minor)


@cache
def _catalog() -> tuple[Gpu, ...]:
    text = resources.files("memplan.catalog").joinpath("gpus.json").read_text(encoding="utf-8")
    return tuple(_gpu_from_entry(entry) for entry in json.loads(text)["gpus"])


@cache
def _index() -> dict[str, Gpu]:
    index: dict[str, Gpu] = {}
    for gpu in _catalog():
        for name in (gpu.name, *gpu.aliases):
            index[_normalise(name)] = gpu
    return index


def list_gpus() -> tuple[Gpu, ...]:
    """Every catalog GPU, in catalog order."""
    return _catalog()


def gpu_names() -> tuple[str, ...]:
    """Canonical names and aliases (for suggestions and help texts)."""
    return tuple(name for gpu in _catalog() for name in (gpu.name, *gpu.aliases))


def resolve_gpu(name: str) -> Gpu:
    """The catalog GPU called ``name`` (any case or common form); else UnknownGpuError."""
    gpu = _index().get(_normalise(name))
    if gpu is not None:
        return gpu
    names = gpu_names()
    by_key = {_normalise(n): n for n in names}
    close = difflib.get_close_matches(_normalise(name), list(by_key), n=4, cutoff=0.5)
    hint = ", ".join(by_key[key] for key in close) if close else "run `memplan gpus` for the list"
    raise UnknownGpuError(
        f"unknown GPU {name!r}: did you mean {hint}? "
        f"(or give --gpu-memory/--tflops/--bandwidth by hand)"
        if close
        else f"unknown GPU {name!r}: {hint} (or give --gpu-memory/--tflops/--bandwidth by hand)"
    )


def kernel_device(name: str | None) -> CudaDevice:
    """The CUDA device whose kernel choice (``select_sdp_backend``) both engines follow.

    ``name`` is a catalog GPU (any form ``resolve_gpu`` accepts); None means
    :data:`DEFAULT_KERNEL_GPU`. A GPU without a CUDA compute capability (AMD) is refused:
    memplan models CUDA's kernel choice, not ROCm's.
    """
    gpu = resolve_gpu(name or DEFAULT_KERNEL_GPU)
    device = gpu.cuda_device()
    if device is None:
        raise SetupError(
            f"{gpu.name} is not a CUDA GPU: memplan emulates the attention kernels PyTorch picks "
            "on CUDA (sdp_utils.cpp), not ROCm's; name an NVIDIA GPU"
        )
    return device
