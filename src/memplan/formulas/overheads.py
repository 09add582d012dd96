"""Memory outside the model's tensors: CUDA context and library workspaces, as named lines.

Each figure is a default the user can override; none is hidden in another number.
"""

from __future__ import annotations

from memplan.formulas.allocator import cuda_block_bytes
from memplan.report import Item
from memplan.units import MIB

__all__ = [
    "CUBLAS_WORKSPACE_BYTES_HOPPER",
    "CUBLAS_WORKSPACE_BYTES_PRE_HOPPER",
    "CUDA_CONTEXT_BYTES",
    "cublas_workspace_bytes",
    "cuda_block_bytes",
    "overheads_item",
]

CUDA_CONTEXT_BYTES = 512 * MIB
"""CUDA context + loaded kernels of a PyTorch process: an assumed typical figure, not
measured by memplan. It depends on the driver, the CUDA version and lazy module loading
(``CUDA_MODULE_LOADING=LAZY``, the default since CUDA 11.7); ``nvidia-smi`` shows it as the
gap between the process's usage and ``torch.cuda.memory_reserved()``. Override with
``--cuda-context``. vLLM does not count it inside ``gpu_memory_utilization`` (its baseline
snapshot is taken after the context exists)."""

CUBLAS_WORKSPACE_BYTES_HOPPER = 4096 * 8 * 1024
"""32 MiB: PyTorch's default cuBLAS workspace (``:4096:8``) on sm90 and newer, one per
(handle, stream), taken from the caching allocator (``aten/src/ATen/cuda/CublasHandlePool.cpp``,
``parseChosenWorkspaceSize``); cuBLASLt shares it (unified workspace, the default)."""

CUBLAS_WORKSPACE_BYTES_PRE_HOPPER = 4096 * 2 * 1024 + 16 * 8 * 1024
"""8,519,680 B: the default ``:4096:2:16:8`` before sm90 (same source)."""

_HOPPER_OR_NEWER = ("H100", "H200", "B200", "GH200", "RTX-5090")


def cublas_workspace_bytes(gpu_name: str | None) -> int:
    """The cuBLAS workspace PyTorch allocates on the first matmul, by GPU generation."""
    if gpu_name and any(gpu_name.upper().startswith(prefix) for prefix in _HOPPER_OR_NEWER):
        return CUBLAS_WORKSPACE_BYTES_HOPPER
    return CUBLAS_WORKSPACE_BYTES_PRE_HOPPER


def overheads_item(gpu_name: str | None, cuda_context_bytes: int | None = None) -> Item:
    """``overheads``: the CUDA context and the cuBLAS workspace, each a labelled leaf."""
    root = Item("overheads", unit="bytes")
    context = CUDA_CONTEXT_BYTES if cuda_context_bytes is None else cuda_context_bytes
    root.leaf(
        "cuda_context",
        context,
        "assumed typical (override with --cuda-context)" if cuda_context_bytes is None else "given",
        "CUDA driver; memplan.formulas.overheads.CUDA_CONTEXT_BYTES",
    )
    root.leaf(
        "cublas_workspace",
        cublas_workspace_bytes(gpu_name),
        "PyTorch default workspace (32 MiB on sm90+, 8.125 MiB before)",
        "pytorch aten/src/ATen/cuda/CublasHandlePool.cpp",
    )
    return root
