"""What the emulated GPU changes: its compute capability, the sdpa kernel PyTorch picks for it,
and the memory outside the caching allocator's blocks (CUDA context, library workspaces).

Pure Python (no torch import), so that it can be unit-tested and read on its own.

Backend choice follows ``select_sdp_backend`` and the ``can_use_*`` filters of
``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` (PyTorch main as of torch 2.13):
the default priority order is flash, memory-efficient, math; on sm90/sm100 with a cuDNN
runtime newer than 9.15 cuDNN attention comes first (``check_prefer_cudnn_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.overheads import (
    CUBLAS_WORKSPACE_BYTES_HOPPER,
    CUBLAS_WORKSPACE_BYTES_PRE_HOPPER,
)

__all__ = [
    "GpuArch",
    "SdpaCall",
    "choose_sdpa_backend",
    "cublas_workspace_bytes",
    "gpu_arch",
]


@dataclass(frozen=True, slots=True)
class GpuArch:
    """The facts of a GPU the trace needs: its name and compute capability."""

    name: str
    major: int
    minor: int
    cuda_context_bytes: int
    """CUDA context and loaded kernels (outside PyTorch's allocator); a typical figure."""


_MIB = 2**20
# CUDA context sizes are what ``nvidia-smi`` shows for a process that has only initialised
# CUDA and loaded PyTorch's kernels lazily (CUDA >= 11.7 lazy loading): about 0.4-0.6 GiB on
# recent drivers. They are approximate; ``memplan trace --measure`` on the GPU reads the real one.
_ARCHS = {
    "h100": GpuArch("H100", 9, 0, 512 * _MIB),
    "h200": GpuArch("H200", 9, 0, 512 * _MIB),
    "gh200": GpuArch("GH200", 9, 0, 512 * _MIB),
    "a100": GpuArch("A100", 8, 0, 448 * _MIB),
    "a10": GpuArch("A10", 8, 6, 384 * _MIB),
    "a10g": GpuArch("A10G", 8, 6, 384 * _MIB),
    "a6000": GpuArch("RTX A6000", 8, 6, 384 * _MIB),
    "l4": GpuArch("L4", 8, 9, 384 * _MIB),
    "l40": GpuArch("L40", 8, 9, 384 * _MIB),
    "l40s": GpuArch("L40S", 8, 9, 384 * _MIB),
    "rtx4090": GpuArch("RTX 4090", 8, 9, 384 * _MIB),
    "rtx3090": GpuArch("RTX 3090", 8, 6, 384 * _MIB),
    "b200": GpuArch("B200", 10, 0, 512 * _MIB),
    "v100": GpuArch("V100", 7, 0, 384 * _MIB),
    "t4": GpuArch("T4", 7, 5, 320 * _MIB),
}
DEFAULT_GPU = "H100"


def gpu_arch(name: str | None) -> GpuArch:
    """The architecture of GPU ``name`` ("H100", "A100-80GB", "h100-sxm", ...); H100 if None."""
    if name is None:
        name = DEFAULT_GPU
    key = name.lower().replace(" ", "").replace("_", "-").removeprefix("nvidia-")
    for prefix in sorted(_ARCHS, key=len, reverse=True):
        if key.replace("-", "").startswith(prefix):
            return _ARCHS[prefix]
    known = ", ".join(arch.name for arch in _ARCHS.values())
    raise SetupError(f"the trace does not know the GPU {name!r}; choose one of {known}")


def cublas_workspace_bytes(arch: GpuArch) -> int:
    """Bytes of one cuBLAS workspace (one per handle and stream, from the caching allocator).

    ``parseChosenWorkspaceSize`` in aten/src/ATen/cuda/CublasHandlePool.cpp: 4096 KiB x 8 on
    sm90 (Hopper), else 4096 KiB x 2 + 16 KiB x 8, unless ``CUBLAS_WORKSPACE_CONFIG`` is set.
    """
    if (arch.major, arch.minor) == (9, 0):
        return CUBLAS_WORKSPACE_BYTES_HOPPER
    return CUBLAS_WORKSPACE_BYTES_PRE_HOPPER


@dataclass(frozen=True, slots=True, kw_only=True)
class SdpaCall:
    """The properties of one ``scaled_dot_product_attention`` call the backend filters read."""

    dtype: str  # "float16", "bfloat16", "float32"
    head_dim_qk: int
    head_dim_v: int
    q_len: int
    kv_len: int
    has_mask: bool
    dropout_p: float
    is_causal: bool
    requires_grad: bool


def _flash_ok(call: SdpaCall, arch: GpuArch) -> bool:
    """``can_use_flash_attention``: no mask, equal head dims <= 256, sm80+, half types."""
    if call.has_mask or arch.major < 8:
        return False
    if call.head_dim_qk != call.head_dim_v or call.head_dim_qk > 256:
        return False
    if call.dtype not in ("float16", "bfloat16"):
        return False
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120
    sm86_89_120 = (arch.major, arch.minor) in ((8, 6), (8, 9), (12, 0))
    if sm86_89_120 and call.requires_grad and call.head_dim_qk > 192:
        return False
    # check_flash_causal_non_square_seqlens
    return not (call.is_causal and call.q_len != call.kv_len)


def _mem_efficient_ok(call: SdpaCall, arch: GpuArch) -> bool:
    """``can_use_mem_efficient_attention``: head dims aligned to the GEMM alignment, sm50+."""
    if arch.major < 5:
        return False
    is_half = call.dtype in ("float16", "bfloat16")
    # minimum_gemm_alignment: 4 on sm80+, 128 / bits with tensor cores (half on sm70+, all on sm80+)
    alignment = 4 if arch.major >= 8 else 1
    if arch.major >= 8 or (arch.major >= 7 and is_half):
        alignment = max(alignment, 128 // (16 if is_half else 32))
    if call.head_dim_qk % alignment or call.head_dim_v % alignment:
        return False
    return not (call.dtype == "bfloat16" and arch.major < 8)


def _cudnn_ok(call: SdpaCall, arch: GpuArch) -> bool:
    """``can_use_cudnn_attention`` (simplified): sm80-sm121, half types, head dim % 8, <= 128."""
    if not (8, 0) <= (arch.major, arch.minor) <= (12, 1):
        return False
    if call.dtype not in ("float16", "bfloat16"):
        return False
    return call.head_dim_qk % 8 == 0 and max(call.head_dim_qk, call.head_dim_v) <= 128


def choose_sdpa_backend(call: SdpaCall, arch: GpuArch, *, prefer_cudnn: bool = False) -> str:
    """The kernel ``F.scaled_dot_product_attention`` runs on ``arch``: "flash",
    "mem-efficient", "cudnn" or "math" (``select_sdp_backend``, sdp_utils.cpp)."""
    order = ["flash", "mem-efficient", "math"]
    if prefer_cudnn and arch.major in (9, 10):
        order.insert(0, "cudnn")
    checks = {"flash": _flash_ok, "mem-efficient": _mem_efficient_ok, "cudnn": _cudnn_ok}
    for backend in order:
        if backend == "math" or checks[backend](call, arch):
            return backend
    return "math"


def backend_usable(backend: str, call: SdpaCall, arch: GpuArch) -> bool:
    """Whether an explicitly requested backend can run this call."""
    checks = {"flash": _flash_ok, "mem-efficient": _mem_efficient_ok, "cudnn": _cudnn_ok}
    return backend == "math" or checks[backend](call, arch)
