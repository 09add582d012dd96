"""``Gpu``: one accelerator's memory, peak compute and bandwidths, each figure with its source.

Catalog entries come from ``memplan/catalog/gpus.json`` (``memplan.catalog.gpus``); a GPU given
by hand (``--gpu-memory 24GiB --tflops 165 --bandwidth 1TB``) is built with :func:`custom_gpu`.
Peak TFLOP/s are the vendors' *dense* figures (datasheets often print the 2:4 sparse figure,
twice as large, in the same table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from memplan.errors import SetupError

__all__ = [
    "COMPUTE_DTYPES",
    "TORCH_CUDNN_VERSION",
    "CudaDevice",
    "Gpu",
    "compute_dtype",
    "custom_gpu",
]

COMPUTE_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
"""Dtypes whose dense peak a :class:`Gpu` may know."""

_DTYPE_ALIASES = {
    "float32": "fp32",
    "fp32": "fp32",
    "tf32": "tf32",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "fp8": "fp8",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "int8": "int8",
}


TORCH_CUDNN_VERSION = 9_20_00
"""The cuDNN runtime that PyTorch's kernel choice reads (``versionRuntimeCuDNN``), as installed
with torch 2.13.0 from PyPI: the wheel (CUDA 13.0, ``torch.version.cuda == "13.0"``) requires
``nvidia-cudnn-cu13==9.20.0.48``; cuDNN encodes version 9.20.0 as 92000."""


@dataclass(frozen=True, slots=True)
class CudaDevice:
    """What ``select_sdp_backend`` reads off the device and the build (sdp_utils.cpp).

    Both engines take it from :meth:`Gpu.cuda_device`, so their attention-kernel choice cannot
    differ for the same GPU.
    """

    name: str
    major: int
    """Compute capability, major (``cudaDeviceProp::major``): 8 Ampere/Ada, 9 Hopper, 10 Blackwell."""
    minor: int
    cudnn_version: int = TORCH_CUDNN_VERSION
    """cuDNN runtime version (92000 for 9.20.0); 0: no cuDNN."""

    @property
    def sm(self) -> tuple[int, int]:
        return (self.major, self.minor)


def compute_dtype(dtype: str) -> str:
    """The canonical compute dtype for ``dtype`` (``bfloat16`` -> ``bf16``)."""
    key = dtype.lower()
    if key not in _DTYPE_ALIASES:
        raise SetupError(
            f"unknown compute dtype {dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}"
        )
    return _DTYPE_ALIASES[key]


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    """One GPU (or one device of a multi-die package, as the framework sees it)."""

    name: str
    memory_bytes: int
    """Memory the CUDA/ROCm driver reports as total (``cudaMemGetInfo``,
    ``torch.cuda.mem_get_info()[1]``) where known, else an estimate (``memory_estimated``)."""
    memory_estimated: bool = False
    """``memory_bytes`` is not a cudaMemGetInfo reading (the datasheet, nvidia-smi's total, or
    a sibling GPU's figure): its source says which."""
    tflops: dict[str, float] = field(default_factory=dict, hash=False)
    """Dense peak TFLOP/s (TOP/s for int8) per compute dtype; missing: not supported/unknown."""
    memory_bandwidth_bytes_per_s: float | None = None
    interconnect: str = ""
    """GPU-to-GPU fabric: ``NVLink 4``, ``xGMI``, ``PCIe`` ..."""
    interconnect_bytes_per_s: float | None = None
    """GPU-to-GPU bandwidth as the vendor quotes it (total of both directions)."""
    pcie_bytes_per_s: float | None = None
    vendor: str = ""
    datasheet_memory_bytes: int | None = None
    """The capacity on the datasheet (binary, as HBM/GDDR stacks are built)."""
    aliases: tuple[str, ...] = ()
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability (major, minor); None: not a CUDA device (ROCm) or not known."""
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def cuda_device(self) -> CudaDevice | None:
        """The facts PyTorch's attention-kernel choice reads; None for a non-CUDA GPU."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability
        return CudaDevice(self.name, major, minor)

    def peak_flops_per_s(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; a clear error when the GPU has no such unit."""
        key = compute_dtype(dtype)
        if key not in self.tflops:
            known = ", ".join(sorted(self.tflops)) or "none"
            raise SetupError(
                f"no peak {key} TFLOP/s known for {self.name} (known: {known}): "
                f"pick another dtype or give --tflops"
            )
        return self.tflops[key] * 1e12

    def bandwidth_bytes_per_s(self) -> float:
        """Memory bandwidth; a clear error when unknown (a GPU given by --gpu-memory only)."""
        if self.memory_bandwidth_bytes_per_s is None:
            raise SetupError(f"no memory bandwidth known for {self.name}: give --bandwidth")
        return self.memory_bandwidth_bytes_per_s


def custom_gpu(
    *,
    memory_bytes: int,
    tflops: float | None = None,
    bandwidth_bytes_per_s: float | None = None,
    name: str = "custom",
) -> Gpu:
    """A GPU given by hand: ``tflops`` (if given) is the peak for every compute dtype."""
    if memory_bytes <= 0:
        raise SetupError(f"GPU memory must be positive, got {memory_bytes}")
    if tflops is not None and not (math.isfinite(tflops) and tflops > 0):
        raise SetupError(f"--tflops must be positive, got {tflops}")
    if bandwidth_bytes_per_s is not None and not (
        math.isfinite(bandwidth_bytes_per_s) and bandwidth_bytes_per_s > 0
    ):
        raise SetupError(f"--bandwidth must be positive, got {bandwidth_bytes_per_s}")
    peaks = dict.fromkeys(COMPUTE_DTYPES, tflops) if tflops is not None else {}
    return Gpu(
        name=name,
        memory_bytes=memory_bytes,
        tflops=peaks,
        memory_bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        sources=("given on the command line",),
    )
