"""Memory outside the model's tensors: CUDA context and library workspaces, as named lines.

Each figure is a default the user can override; none is hidden in another number.
"""

from __future__ import annotations

from memplan.formulas.allocator import cuda_block_bytes
from memplan.report import Item
from memplan.specs.hardware import Gpu
from memplan.units import MIB

__all__ = [
    "CUBLAS_WORKSPACE_BYTES_HOPPER",
    "CUBLAS_WORKSPACE_BYTES_PRE_HOPPER",
    "CUDA_CONTEXT_BYTES",
    "HIPBLAS_WORKSPACE_BYTES",
    "HIPBLAS_WORKSPACE_BYTES_GFX94",
    "compute_capability_of",
    "cublas_workspace_bytes",
    "cuda_block_bytes",
    "outside_tensors_item",
]

CUDA_CONTEXT_BYTES = 512 * MIB
"""CUDA context + loaded kernels of a PyTorch process: an assumed typical figure, not
measured by memplan. It depends on the driver, the CUDA version and lazy module loading
(``CUDA_MODULE_LOADING=LAZY``, the default since CUDA 11.7); ``nvidia-smi`` shows it as the
gap between the process's usage and ``torch.cuda.memory_reserved()``. Override with
``--cuda-context``. vLLM does not count it inside ``gpu_memory_utilization`` (its baseline
snapshot is taken after the context exists)."""

_CUBLAS_SOURCE = "pytorch aten/src/ATen/cuda/CublasHandlePool.cpp (parseChosenWorkspaceSize)"

CUBLAS_WORKSPACE_BYTES_HOPPER = 4096 * 8 * 1024
"""32 MiB: PyTorch's default cuBLAS workspace (``:4096:8``) on sm90 (compute capability 9.0
exactly: ``properties->major == 9 && properties->minor == 0``), one per (handle, stream),
taken from the caching allocator (``CublasHandlePool.cpp``, ``parseChosenWorkspaceSize``);
cuBLASLt shares it (unified workspace)."""

CUBLAS_WORKSPACE_BYTES_PRE_HOPPER = 4096 * 2 * 1024 + 16 * 8 * 1024
"""8,519,680 B: the default ``:4096:2:16:8`` on every other CUDA architecture (same source;
Blackwell sm100/sm120 included, as the check is for 9.0 only)."""

HIPBLAS_WORKSPACE_BYTES = 32 * MIB
"""ROCm builds: 32 MiB default hipBLAS workspace (same function, ``USE_ROCM`` branch)."""

HIPBLAS_WORKSPACE_BYTES_GFX94 = 128 * MIB
"""ROCm on gfx94x/gfx95x (MI300X, MI325X, MI355X): 128 MiB (same source)."""

_GFX94_OR_95 = ("MI300", "MI325", "MI350", "MI355")


def compute_capability_of(gpu: Gpu | None) -> tuple[int, int] | None:
    """The GPU's CUDA compute capability from the catalog, or None (not known, not CUDA)."""
    return None if gpu is None else gpu.compute_capability


def cublas_workspace_bytes(gpu: Gpu | None) -> tuple[int, str]:
    """(bytes, how it was chosen) of the BLAS workspace PyTorch allocates at the first matmul,
    by architecture (:data:`CUBLAS_WORKSPACE_BYTES_HOPPER` and the others). A GPU whose
    architecture memplan does not know (given by ``--gpu-memory`` only) gets the larger
    CUDA default, and says so."""
    if gpu is not None and gpu.vendor == "AMD":
        if any(gpu.name.upper().startswith(prefix) for prefix in _GFX94_OR_95):
            return HIPBLAS_WORKSPACE_BYTES_GFX94, "ROCm gfx94x/95x default (128 MiB)"
        return HIPBLAS_WORKSPACE_BYTES, "ROCm default (32 MiB)"
    capability = compute_capability_of(gpu)
    if capability is None:
        return CUBLAS_WORKSPACE_BYTES_HOPPER, "architecture unknown: the larger default (32 MiB)"
    sm = f"sm{capability[0]}{capability[1]}"
    if capability == (9, 0):
        return CUBLAS_WORKSPACE_BYTES_HOPPER, f"{sm} default :4096:8 (32 MiB)"
    return CUBLAS_WORKSPACE_BYTES_PRE_HOPPER, f"{sm} default :4096:2:16:8 (8.125 MiB)"


def outside_tensors_item(
    gpu: Gpu | None,
    *,
    cuda_context_bytes: int | None = None,
    n_workspaces: int = 1,
    reserved_bytes: int | None = None,
) -> Item:
    """``outside_tensors``: what a process holds on the GPU beyond its tensors' allocated
    bytes, as named lines: the CUDA context, ``n_workspaces`` cuBLAS workspaces (one per
    handle and stream: 1 for inference, 2 for training, whose backward runs on its own
    thread) and, where known, the caching allocator's reserved-but-unallocated bytes."""
    root = Item("outside_tensors", unit="bytes")
    context = CUDA_CONTEXT_BYTES if cuda_context_bytes is None else cuda_context_bytes
    root.leaf(
        "cuda_context",
        context,
        "assumed typical (override with --cuda-context)" if cuda_context_bytes is None else "given",
        "CUDA driver; memplan.formulas.overheads.CUDA_CONTEXT_BYTES",
    )
    if n_workspaces:
        each, how = cublas_workspace_bytes(gpu)
        root.leaf(
            "cublas_workspace",
            n_workspaces * each,
            f"{n_workspaces} x {how}",
            _CUBLAS_SOURCE,
            "from the caching allocator: inside torch.cuda.max_memory_allocated on a GPU",
        )
    if reserved_bytes is not None:
        root.leaf(
            "allocator_reserved",
            reserved_bytes,
            "reserved by the caching allocator beyond the allocated bytes at the peak",
            "memplan.trace.allocator (a replay of c10/cuda/CUDACachingAllocator.cpp)",
        )
    return root
