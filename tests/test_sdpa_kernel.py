"""The attention-kernel choice both engines share (``memplan.formulas.sdpa``), backend by backend,
against torch 2.13.0's ``select_sdp_backend`` (``aten/src/ATen/native/transformers/cuda/
sdp_utils.cpp``; what the 2.13.0 CUDA wheel compiles, see the module docstring), and the call
transformers 5.23 makes (``integrations/sdpa_attention.py``). No torch needed.
"""

from __future__ import annotations

import dataclasses

import pytest

from memplan.catalog.gpus import kernel_device, resolve_gpu
from memplan.errors import SetupError
from memplan.formulas.masks import sdpa_mask_built, sdpa_mask_storage_bytes
from memplan.formulas.sdpa import (
    SdpaCall,
    backend_usable,
    cudnn_usable,
    flash_usable,
    mem_efficient_usable,
    prefers_cudnn,
    sdpa_backend,
    transformers_sdpa_call,
)

H100 = kernel_device("H100")
A100 = kernel_device("A100")
L40S = kernel_device("L40S")
B200 = kernel_device("B200")
V100 = kernel_device("V100")
RTX5090 = kernel_device("RTX-5090")


def _call(**kw: object) -> SdpaCall:
    """Llama-3-8B's training call (32 query heads, 8 KV heads, head dim 128) as transformers
    makes it without a mask: K and V as they are, ``enable_gqa=True``."""
    values: dict[str, object] = dict(
        dtype="bfloat16", batch=2, q_heads=32, kv_heads=8, head_dim_qk=128, head_dim_v=128,
        q_len=2048, kv_len=2048, has_mask=False, dropout_p=0.0, is_causal=True,
        enable_gqa=True, requires_grad=True,
    )  # fmt: skip
    values.update(kw)
    return SdpaCall(**values)  # type: ignore[arg-type]


def test_gpu_facts_come_from_the_catalog() -> None:
    assert (H100.major, H100.minor, A100.sm, L40S.sm, B200.sm) == (9, 0, (8, 0), (8, 9), (10, 0))
    assert H100.cudnn_version == 92000  # torch 2.13.0 wheel: nvidia-cudnn-cu13==9.20.0.48
    assert resolve_gpu("MI300X").cuda_device() is None
    with pytest.raises(SetupError, match="not a CUDA GPU"):
        kernel_device("MI300X")
    assert kernel_device(None).name == "H100-SXM-80GB"


def test_priority_order_prefers_cudnn_on_sm90_and_sm100_only() -> None:
    """``check_prefer_cudnn_attention`` (cu130 build: ``cudnn_version > 91500 && (major == 9
    || major == 10)``) reorders to cuDNN, flash, mem-efficient, math; otherwise Context.h
    lines 481-484: flash, mem-efficient, math."""
    assert prefers_cudnn(H100) and prefers_cudnn(B200)
    assert not prefers_cudnn(A100) and not prefers_cudnn(L40S) and not prefers_cudnn(RTX5090)
    assert not prefers_cudnn(dataclasses.replace(H100, cudnn_version=91500))
    assert sdpa_backend(_call(), H100) == "cudnn"
    assert sdpa_backend(_call(), B200) == "cudnn"
    assert sdpa_backend(_call(), A100) == "flash"
    assert sdpa_backend(_call(), dataclasses.replace(H100, cudnn_version=91000)) == "flash"


def test_flash_constraints() -> None:
    """``can_use_flash_attention``: ``check_for_attn_mask`` (sdp_utils_cpp.h line 260),
    ``check_head_dim_size_flash`` (equal, <= 256), sm80-sm121, the sm86-89/sm120 training
    head-dim gap, ``check_flash_causal_non_square_seqlens``, fp16/bf16, and dense
    ``check_batch_size_and_num_heads_dense<true, true>`` (GQA only with ``enable_gqa``)."""
    assert flash_usable(_call(), A100)
    assert not flash_usable(_call(has_mask=True, is_causal=False), A100)
    assert not flash_usable(_call(head_dim_qk=192, head_dim_v=128), A100)
    assert not flash_usable(_call(head_dim_qk=512, head_dim_v=512), A100)
    assert not flash_usable(_call(dtype="float32"), A100)
    assert not flash_usable(_call(dtype="float16"), V100)  # sm70 < sm80
    assert not flash_usable(_call(head_dim_qk=200, head_dim_v=200), L40S)  # (192, 224]
    assert flash_usable(_call(head_dim_qk=200, head_dim_v=200, requires_grad=False), L40S)
    assert flash_usable(_call(head_dim_qk=256, head_dim_v=256), L40S)  # > 224, no dropout
    assert not flash_usable(_call(head_dim_qk=256, head_dim_v=256, dropout_p=0.1), L40S)
    assert not flash_usable(_call(q_len=1, kv_len=10), A100)  # causal, non-square
    assert flash_usable(_call(q_len=1, kv_len=10, is_causal=False), A100)
    assert not flash_usable(_call(enable_gqa=False), A100)  # 32 vs 8 heads, no enable_gqa
    assert flash_usable(_call(kv_heads=32, enable_gqa=False), A100)


def test_mem_efficient_constraints() -> None:
    """``can_use_mem_efficient_attention``: sm50-sm121, ``minimum_gemm_alignment`` of the head
    dims, bf16 only from sm80, masks allowed, and dense
    ``check_batch_size_and_num_heads_dense<false, true>``: never grouped KV heads in 2.13."""
    mha = _call(kv_heads=32, enable_gqa=False)
    assert mem_efficient_usable(mha, A100)
    assert mem_efficient_usable(dataclasses.replace(mha, has_mask=True, is_causal=False), A100)
    assert mem_efficient_usable(dataclasses.replace(mha, dtype="float32"), A100)
    assert not mem_efficient_usable(_call(), A100)  # grouped heads, even with enable_gqa
    assert not mem_efficient_usable(_call(dtype="float32"), A100)
    assert not mem_efficient_usable(dataclasses.replace(mha, dtype="bfloat16"), V100)
    assert mem_efficient_usable(dataclasses.replace(mha, dtype="float16"), V100)
    assert not mem_efficient_usable(dataclasses.replace(mha, head_dim_qk=100, head_dim_v=100), A100)
    assert mem_efficient_usable(dataclasses.replace(mha, head_dim_qk=100, head_dim_v=100,
                                                    dtype="float32"), A100)  # fmt: skip
    # fp32 with grouped KV heads (Llama-3.2-1B in fp32): no fused kernel takes it -> math
    assert sdpa_backend(_call(dtype="float32", head_dim_qk=64, head_dim_v=64), H100) == "math"
    assert sdpa_backend(dataclasses.replace(mha, dtype="float32"), H100) == "mem-efficient"


def test_cudnn_constraints() -> None:
    """``can_use_cudnn_attention``: fp16/bf16 on sm80-sm121, ``check_attn_mask_shape`` (masks
    allowed, header line 270), ``check_cudnn_dropout`` (multiples of 1/16), dense
    ``check_batch_size_and_num_heads_dense<true, false>`` (GQA with ``enable_gqa``) and
    ``check_cudnn_tensor_shapes``: head dims % 8, <= 128 (256 on sm90 from cuDNN 9.10),
    kv_len != 1, batch and heads <= 65535."""
    assert cudnn_usable(_call(), H100)
    assert cudnn_usable(_call(has_mask=True, is_causal=False, kv_heads=32, enable_gqa=False), H100)
    assert not cudnn_usable(_call(dtype="float32"), H100)
    assert not cudnn_usable(_call(dropout_p=0.1), H100)
    assert cudnn_usable(_call(dropout_p=0.125), H100)
    assert not cudnn_usable(_call(dropout_p=0.125), dataclasses.replace(H100, cudnn_version=91200))
    assert cudnn_usable(_call(head_dim_qk=256, head_dim_v=256), H100)
    assert not cudnn_usable(_call(head_dim_qk=256, head_dim_v=256), B200)
    assert cudnn_usable(_call(head_dim_qk=192, head_dim_v=128), B200)
    assert not cudnn_usable(_call(head_dim_qk=100, head_dim_v=100), H100)
    assert not cudnn_usable(_call(kv_len=1, q_len=1, is_causal=False), H100)
    assert not cudnn_usable(_call(batch=65536), H100)
    assert not cudnn_usable(_call(enable_gqa=False), H100)
    # on H100 a head dim of 256 is cuDNN's; without cuDNN, flash's
    assert sdpa_backend(_call(head_dim_qk=256, head_dim_v=256), H100) == "cudnn"


def test_math_is_the_fallback_and_always_usable() -> None:
    """``select_sdp_backend`` falls through to math when no fused kernel qualifies."""
    odd = _call(head_dim_qk=96, head_dim_v=100, enable_gqa=False, kv_heads=32)
    assert sdpa_backend(odd, A100) == "math"
    assert sdpa_backend(_call(), V100) == "math"  # bf16 before sm80, grouped heads
    assert backend_usable("math", odd, A100)
    assert not backend_usable("flash", _call(has_mask=True), H100)


def test_transformers_call_for_grouped_heads() -> None:
    """``sdpa_attention_forward``: without a mask K and V go as they are with ``enable_gqa``;
    with a mask they are repeated (``repeat_kv``); one query token with a mask packs the query
    onto the KV heads (``pack_gqa``); ``is_causal`` only for q_len > 1 without a mask."""
    args = dict(dtype="float32", batch=2, q_heads=32, kv_heads=8, head_dim_qk=64, head_dim_v=64,
                dropout_p=0.0, requires_grad=True)  # fmt: skip
    call, gqa = transformers_sdpa_call(q_len=2048, kv_len=2048, has_mask=False, **args)  # type: ignore[arg-type]
    assert (gqa, call.enable_gqa, call.kv_heads, call.is_causal) == ("enable_gqa", True, 8, True)
    call, gqa = transformers_sdpa_call(q_len=2048, kv_len=2048, has_mask=True, **args)  # type: ignore[arg-type]
    assert (gqa, call.enable_gqa, call.kv_heads, call.is_causal) == ("repeat_kv", False, 32, False)
    assert sdpa_backend(call, H100) == "mem-efficient"  # fp32, equal heads, a mask
    call, gqa = transformers_sdpa_call(q_len=1, kv_len=100, has_mask=True, **args)  # type: ignore[arg-type]
    assert (gqa, call.q_heads, call.q_len, call.kv_heads) == ("pack_gqa", 8, 4, 8)
    call, gqa = transformers_sdpa_call(q_len=16, kv_len=100, has_mask=False, **args)  # type: ignore[arg-type]
    assert call.kv_len == 16  # a static cache's empty tail is cut off for the prefill


def test_when_transformers_builds_a_mask() -> None:
    """``masking_utils``: eager always; a sliding (or chunked) layer once kv_len reaches the
    window; padding, packing and a static-cache decode turn the ``is_causal`` skip off."""
    assert not sdpa_mask_built(q_len=2048, kv_len=2048)
    assert sdpa_mask_built(eager=True, q_len=2048, kv_len=2048)
    assert not sdpa_mask_built(local_size=4096, q_len=4095, kv_len=4095)
    assert sdpa_mask_built(local_size=4096, q_len=4096, kv_len=4096)
    assert sdpa_mask_built(q_len=2048, kv_len=2048, padded=True)
    assert sdpa_mask_built(q_len=2048, kv_len=2048, packed=True)
    assert not sdpa_mask_built(q_len=1, kv_len=500)
    assert sdpa_mask_built(q_len=1, kv_len=500, compileable_decode=True)
    assert not sdpa_mask_built(q_len=16, kv_len=512)  # static-cache prefill from position 0
    assert sdpa_mask_built(q_len=16, kv_len=512, q_offset=100)  # chunked prefill
    assert sdpa_mask_storage_bytes(batch=4, q_len=10, kv_len=12, padded=False) == 120
    assert sdpa_mask_storage_bytes(batch=4, q_len=10, kv_len=12, padded=True) == 480


def test_the_analytic_kernel_follows_the_gpu_and_the_plan_cache_knows_it() -> None:
    """Item 10 of issue 8: the estimate's kernel depends on the GPU (catalog facts), and the
    fast path's plan cache is keyed by it. Llama-3.2-1B in fp16 AMP: on A100 flash takes the
    grouped heads; V100 (sm70) has no flash and the memory-efficient kernel takes no grouped
    heads, so the math kernel keeps fp32 (B, H, S, S) softmaxes."""
    from memplan.catalog import resolve
    from memplan.estimate.training import estimate_training, training_peak_bytes
    from memplan.specs.training import Precision, TrainingSetup

    spec = resolve("meta-llama/Llama-3.2-1B")
    peaks, saved = {}, {}
    for gpu in ("A100", "V100", "H100", None):
        setup = TrainingSetup(batch=4, seq=2048, precision=Precision.FP16_MIXED, gpu=gpu)
        report = estimate_training(spec, setup)
        peaks[gpu] = training_peak_bytes(spec, setup)
        assert peaks[gpu] == report.scalars["peak_bytes"]
        saved[gpu] = {p.name: p.bytes for p in report.phases}["end_of_forward"]
        kernel = {"A100": "flash", "V100": "math", "H100": "cudnn", None: "cudnn"}[gpu]
        assert report.notes[0].startswith(f"attention kernel: {kernel}")
    # math keeps fp32 softmaxes: 16 layers x (4, 32, 2048, 2048) x 4 B beyond flash's tensors
    assert saved["V100"] - saved["A100"] > 16 * 4 * 32 * 2048 * 2048 * 4
    assert peaks["V100"] > peaks["A100"]
    assert peaks[None] == peaks["H100"]


def test_every_nvidia_catalog_gpu_has_a_compute_capability() -> None:
    """The kernel choice of both engines reads it; an NVIDIA entry without one would fail."""
    from memplan.catalog.gpus import list_gpus

    missing = [g.name for g in list_gpus() if g.vendor == "NVIDIA" and g.compute_capability is None]
    assert missing == []
    assert all(g.compute_capability is None for g in list_gpus() if g.vendor == "AMD")
