"""What the emulated GPU changes: its CUDA facts (from the GPU catalog, the one place both
engines read them) and the memory outside the caching allocator's blocks (CUDA context,
library workspaces). The attention kernel PyTorch picks for it is :mod:`memplan.formulas.sdpa`.

Pure Python (no torch import), so that it can be unit-tested and read on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.catalog.gpus import kernel_device
from memplan.errors import SetupError
from memplan.formulas.overheads import (
    CUBLAS_WORKSPACE_BYTES_HOPPER,
    CUBLAS_WORKSPACE_BYTES_PRE_HOPPER,
)
from memplan.specs.hardware import CudaDevice

__all__ = ["GpuArch", "cublas_workspace_bytes", "gpu_arch"]


@dataclass(frozen=True, slots=True)
class GpuArch:
    """The facts of a GPU the trace needs: its CUDA device facts and context size."""

    device: CudaDevice
    cuda_context_bytes: int
    """CUDA context and loaded kernels (outside PyTorch's allocator); a typical figure."""

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def major(self) -> int:
        return self.device.major

    @property
    def minor(self) -> int:
        return self.device.minor


_MIB = 2**20
# CUDA context sizes are what ``nvidia-smi`` shows for a process that has only initialised
# CUDA and loaded PyTorch's kernels lazily (CUDA >= 11.7 lazy loading): about 0.4-0.6 GiB on
# recent drivers, by architecture. They are approximate; ``memplan trace --measure`` on the GPU
# reads the real one.
_CONTEXT_BYTES = {
    (10, 0): 512 * _MIB,  # B200
    (9, 0): 512 * _MIB,  # H100, H200, GH200
    (8, 9): 384 * _MIB,  # L4, L40S, RTX 4090
    (8, 6): 384 * _MIB,  # A10G, RTX 3090
    (8, 0): 448 * _MIB,  # A100
    (7, 5): 320 * _MIB,  # T4
    (7, 0): 384 * _MIB,  # V100
}


def gpu_arch(name: str | None) -> GpuArch:
    """The catalog GPU ``name`` ("H100", "A100-80GB", "h100-sxm", ...) as the trace emulates it;
    the default kernel GPU (H100) if None."""
    device = kernel_device(name)
    context = _CONTEXT_BYTES.get(device.sm)
    if context is None:
        known = ", ".join(f"sm{major}{minor}" for major, minor in _CONTEXT_BYTES)
        raise SetupError(
            f"the trace has no CUDA context figure for {device.name} (sm{device.major}"
            f"{device.minor}); it emulates {known}"
        )
    return GpuArch(device, context)


def cublas_workspace_bytes(arch: GpuArch) -> int:
    """Bytes of one cuBLAS workspace (one per handle and stream, from the caching allocator).

    ``parseChosenWorkspaceSize`` in aten/src/ATen/cuda/CublasHandlePool.cpp: 4096 KiB x 8 on
    sm90 (Hopper), else 4096 KiB x 2 + 16 KiB x 8, unless ``CUBLAS_WORKSPACE_CONFIG`` is set.
    """
    if (arch.major, arch.minor) == (9, 0):
        return CUBLAS_WORKSPACE_BYTES_HOPPER
    return CUBLAS_WORKSPACE_BYTES_PRE_HOPPER
