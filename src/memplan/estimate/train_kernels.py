"""The attention kernels a training estimate follows: the GPU's facts from the catalog, the
compute dtype of the precision, and one kernel per layer type at (batch, seq)
(:func:`memplan.formulas.attention.attention_kernel`, the rule the trace emulates).
"""

from __future__ import annotations

from functools import lru_cache

from memplan.catalog.gpus import DEFAULT_KERNEL_GPU, resolve_gpu
from memplan.formulas.attention import AttentionKernel, attention_kernel, cpu_attention_kernel
from memplan.formulas.training import Regime, regime
from memplan.specs.hardware import CudaDevice
from memplan.specs.model import ModelSpec
from memplan.specs.training import Precision, Target, TrainingSetup

__all__ = [
    "Kernels",
    "attention_kernels",
    "compute_dtype_name",
    "kernel_device",
    "kernel_notes",
]

Kernels = tuple[AttentionKernel, AttentionKernel]
_HALF_PRECISIONS = {
    Precision.FP16: "float16",
    Precision.FP16_MIXED: "float16",
    Precision.DEEPSPEED_FP16: "float16",
}


def compute_dtype_name(setup: TrainingSetup, reg: Regime) -> str:
    """The dtype q, k and v reach the attention in: fp32, or the half type of the precision."""
    if reg.compute_bytes == 4:
        return "float32"
    return _HALF_PRECISIONS.get(setup.precision, "bfloat16")


@lru_cache(maxsize=64)
def kernel_device(name: str | None) -> tuple[CudaDevice, str]:
    """The CUDA device whose kernel choice the estimate follows, and how it was chosen.

    The GPU named in the setup (the same catalog facts the trace reads); the default kernel GPU
    when none is named, or when the named one is not a CUDA GPU (memplan models CUDA's choice).
    """
    gpu = resolve_gpu(name or DEFAULT_KERNEL_GPU)
    device = gpu.cuda_device()
    how = "" if name else " (no --gpu given)"
    if device is None:
        fallback = resolve_gpu(DEFAULT_KERNEL_GPU).cuda_device()
        assert fallback is not None  # the catalog's default kernel GPU is a CUDA GPU
        device = fallback
        how = f" ({gpu.name} is not a CUDA GPU: CUDA's choice shown)"
    return device, f"chosen as on {device.name}, sm{device.major}{device.minor}{how}"


def attention_kernels(spec: ModelSpec, setup: TrainingSetup, batch: int, seq: int) -> Kernels:
    """The attention kernel of full-attention and of sliding-window layers at (batch, seq):
    one choice rule for both engines (:func:`memplan.formulas.activations.attention_kernel`)."""
    reg = regime(setup.precision, fp32_grad_accumulation=setup.fp32_grad_accumulation)
    if setup.target is Target.CPU:
        kernel = cpu_attention_kernel(spec, setup.attention, half=reg.compute_bytes == 2)
        return (kernel, kernel)
    device = kernel_device(setup.gpu)[0]
    dropout = spec.attention_dropout if setup.dropout is None else setup.dropout
    dtype = compute_dtype_name(setup, reg)

    def one(sliding: bool) -> AttentionKernel:
        return attention_kernel(
            spec, setup.attention, device, dtype=dtype, dropout=dropout,
            sliding=sliding, batch=batch, seq=seq,
        )  # fmt: skip

    full = one(False)
    return (full, one(True) if spec.local_attention_size is not None else full)


def _kernel_words(kernel: AttentionKernel, spec: ModelSpec) -> str:
    words = kernel.backend
    if kernel.has_mask and kernel.backend != "eager":
        words += " (transformers builds a mask)"
    if kernel.gqa == "repeat_kv" and kernel.backend != "eager":
        words += f", K/V repeated to {spec.n_heads} heads"
    elif kernel.gqa == "enable_gqa" and kernel.backend == "math":
        words += ", grouped K/V heads (the memory-efficient kernel takes none)"
    return words


def kernel_notes(spec: ModelSpec, setup: TrainingSetup, kernels: Kernels) -> list[str]:
    """The report's lines on the attention kernels: which, why, and on which GPU's rules."""
    full, sliding = kernels
    notes = [f"attention kernel: {_kernel_words(full, spec)}"]
    if setup.target is Target.CUDA:
        notes[0] += f"; {kernel_device(setup.gpu)[1]} (torch 2.13 sdp_utils.cpp)"
    local = spec.local_attention_size
    if local is not None and any(spec.slides(i) for i in range(spec.n_layers)):
        kind = (
            "chunked-attention layers (chunk"
            if spec.sliding_window is None
            else ("sliding-window layers (window")
        )
        notes.append(f"{kind} {local}): {_kernel_words(sliding, spec)}")
    return notes
