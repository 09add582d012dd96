"""Which kernel ``F.scaled_dot_product_attention`` runs on a CUDA GPU, as torch 2.13.0 decides.

One definition for both engines: the trace calls :func:`sdpa_backend` for every attention call it
emulates on CUDA, the analytic engine for the call transformers makes in each layer
(:func:`transformers_sdpa_call`), so the two cannot pick different kernels.

Source: ``select_sdp_backend`` and the ``can_use_*_attention`` filter lists of
``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``. The v2.13.0 tag is not in the stored
sources; the rules below are those of the stored ``main`` copy (commit 001f694a) corrected to what
the torch 2.13.0 CUDA wheel compiles (its symbol table, ``nm -C libtorch_cuda.so``, git
cf30153c), and to the 2.13.0 headers installed with the CPU build
(``torch/include/ATen/native/transformers/sdp_utils_cpp.h``, ``ATen/Context.h``):

- **Order.** ``Context.h`` lines 481-484: flash, memory-efficient, math (cuDNN after math, so
  never reached), unless ``check_prefer_cudnn_attention`` holds: cuDNN runtime newer than
  9.15.0 and compute capability 9.x or 10.x (the cu130 build has no minor-version test), then
  cuDNN, flash, memory-efficient, math. torch 2.13.0 from PyPI ships cuDNN 9.20
  (``memplan.specs.hardware.TORCH_CUDNN_VERSION``): cuDNN first on H100/H200/B200.
- **Grouped KV heads.** ``check_batch_size_and_num_heads_dense<supports_gqa,
  requires_same_num_heads>`` (sdp_utils_cpp.h lines 397-445): with ``enable_gqa`` and
  ``supports_gqa`` the query heads must be a multiple of the KV heads; otherwise all head counts
  must be equal. torch 2.13.0 instantiates ``<true, true>`` for flash, ``<true, false>`` for
  cuDNN and ``<false, true>`` for memory-efficient: the memory-efficient kernel never takes
  grouped heads (the later ``main`` copy, with a third ``supports_mqa`` parameter the 2.13
  header does not have, enables them). Its meta backward agrees: it sizes the K and V gradients
  with the query's head count (``torch/_meta_registrations.py``,
  ``meta__scaled_dot_product_efficient_backward``).
- **Flash** (``can_use_flash_attention``): no mask (``check_for_attn_mask``, header line 260);
  q, k, v head dims equal and <= 256 (``check_head_dim_size_flash``); sm80-sm121; in training
  on sm86-sm89 and sm120-sm121 not head dim (192, 224], nor (224, 256] with dropout
  (``check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120``); ``is_causal``
  only with q_len == kv_len (``check_flash_causal_non_square_seqlens``); fp16/bf16
  (``check_dtypes_flash_attention``: fp8 only with FA3 enabled, off by default).
- **Memory-efficient** (``can_use_mem_efficient_attention``): sm50-sm121; q and k head dims
  equal, q and v head dims multiples of ``minimum_gemm_alignment`` (sm80+: 4, and 8 for half;
  sm70-sm75: 8 for half, 1 for fp32; older: 1); fp16/fp32, and bf16 from sm80; masks accepted.
  Storage offsets are assumed aligned (``check_data_ptr_alignment_mem_efficient``: q, k, v
  are whole tensors or head-aligned views in transformers).
- **cuDNN** (``can_use_cudnn_attention``): fp16/bf16 on sm80-sm121; masks of shape
  (B|1, H|1, S_q, S_kv) (``check_attn_mask_shape``, header line 270); dropout a multiple of
  1/16 (``check_cudnn_dropout``) and not with cuDNN 9.11-9.13; batch and heads <= 65535; head
  dims multiples of 8 and at most 128, or 256 on sm90 with cuDNN >= 9.10, or 192/128 on
  sm10x with cuDNN >= 9.11 (``check_cudnn_tensor_shapes``, read off the compiled 2.13.0 code:
  it has no ``check_cudnn_d256_bprop_head_dim``); kv_len != 1; q_len != 1 with dropout.
- **Math** (``_scaled_dot_product_attention_math``, attention.cpp): always available; with
  ``enable_gqa`` it repeats K and V to the query heads (``pre_process_group_query_attention_input``)
  and runs in fp32 for half inputs.

Nested (jagged) inputs are not modelled: transformers passes dense (B, H, S, D) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.specs.hardware import CudaDevice

__all__ = [
    "BACKENDS",
    "SdpaCall",
    "backend_usable",
    "cudnn_usable",
    "flash_usable",
    "mem_efficient_usable",
    "prefers_cudnn",
    "sdpa_backend",
    "transformers_sdpa_call",
]

BACKENDS = ("flash", "mem-efficient", "cudnn", "math")
_HALF = ("float16", "bfloat16")
_CUDNN_MAX_DIM = 65535
_CUDNN_PREFERRED_AFTER = 9_15_00
"""``check_prefer_cudnn_attention``: ``cudnn_version > 91500``."""


# Not frozen: the analytic engine builds one per kernel choice, thousands a second, and a frozen
# dataclass's __init__ costs about 0.2 us a field (object.__setattr__ each); none is changed.
@dataclass(slots=True, kw_only=True)
class SdpaCall:
    """The properties of one ``scaled_dot_product_attention`` call that the filters read."""

    dtype: str  # "float16", "bfloat16", "float32"
    batch: int
    q_heads: int
    kv_heads: int
    """Heads of k and v as passed (equal to ``q_heads`` after transformers' ``repeat_kv``)."""
    head_dim_qk: int
    head_dim_v: int
    q_len: int
    kv_len: int
    has_mask: bool
    dropout_p: float
    is_causal: bool
    enable_gqa: bool
    requires_grad: bool
    """Grad mode on and q, k or v requires grad (``input_requires_grad``)."""


def _heads_ok(call: SdpaCall, *, supports_gqa: bool) -> bool:
    """``check_batch_size_and_num_heads_dense`` (sdp_utils_cpp.h lines 397-445), k and v with
    the same head count as transformers passes them."""
    if call.enable_gqa and supports_gqa:
        return call.q_heads % call.kv_heads == 0
    return call.q_heads == call.kv_heads


def _in_sm_range(device: CudaDevice, low: tuple[int, int], high: tuple[int, int]) -> bool:
    """``check_sm_version<low, high>``: inclusive on both ends."""
    return low <= device.sm <= high


def flash_usable(call: SdpaCall, device: CudaDevice) -> bool:
    """``can_use_flash_attention`` (torch 2.13.0): see the module docstring for each filter."""
    if call.has_mask or not _in_sm_range(device, (8, 0), (12, 1)):
        return False
    d = call.head_dim_qk
    if d != call.head_dim_v or d > 256:
        return False
    narrow_sm = _in_sm_range(device, (8, 6), (8, 9)) or _in_sm_range(device, (12, 0), (12, 1))
    if call.requires_grad and narrow_sm and not (d <= 192 or (call.dropout_p == 0 and d > 224)):
        return False
    if call.is_causal and call.q_len != call.kv_len:
        return False
    if call.dtype not in _HALF or min(call.q_len, call.kv_len) == 0:
        return False
    return _heads_ok(call, supports_gqa=True)


def _gemm_alignment(call: SdpaCall, device: CudaDevice) -> int:
    """``minimum_gemm_alignment``: 4 on sm80+, 128 / bits with tensor cores (all dtypes on
    sm80+, half on sm70+)."""
    half = call.dtype in _HALF
    alignment = 4 if device.major >= 8 else 1
    if device.major >= 8 or (device.major >= 7 and half):
        alignment = max(alignment, 128 // (16 if half else 32))
    return alignment


def mem_efficient_usable(call: SdpaCall, device: CudaDevice) -> bool:
    """``can_use_mem_efficient_attention`` (torch 2.13.0): dense constraints
    ``check_batch_size_and_num_heads_dense<false, true>``, so never grouped KV heads."""
    if not _in_sm_range(device, (5, 0), (12, 1)):
        return False
    align = _gemm_alignment(call, device)
    if call.head_dim_qk % align or call.head_dim_v % align:
        return False
    if min(call.q_len, call.kv_len) == 0 or not _heads_ok(call, supports_gqa=False):
        return False
    allowed = ("float16", "float32", "bfloat16") if device.major >= 8 else ("float16", "float32")
    return call.dtype in allowed


def _cudnn_head_dim_limit(call: SdpaCall, device: CudaDevice) -> int:
    """``check_cudnn_tensor_shapes`` in the compiled 2.13.0 code: 128; 256 on sm90 (minor 0)
    from cuDNN 9.10; 192 for (192, 128) heads on sm10x from cuDNN 9.11."""
    limit = 128
    if device.cudnn_version >= 9_10_00 and device.sm == (9, 0):
        limit = 256
    pair = (call.head_dim_qk, call.head_dim_v)
    if device.cudnn_version >= 9_11_00 and device.major == 10 and pair == (192, 128):
        limit = 192
    return limit


def cudnn_usable(call: SdpaCall, device: CudaDevice) -> bool:
    """``can_use_cudnn_attention`` (torch 2.13.0): dense constraints
    ``check_batch_size_and_num_heads_dense<true, false>`` and ``check_cudnn_tensor_shapes``."""
    version = device.cudnn_version
    if version < 9_00_00 or not _in_sm_range(device, (8, 0), (12, 1)):
        return False
    if call.dropout_p > 0 and 9_11_00 < version < 9_14_00:
        return False
    if call.dtype not in _HALF or (call.dropout_p * 16) % 1:
        return False
    if call.batch > _CUDNN_MAX_DIM or call.q_heads > _CUDNN_MAX_DIM:
        return False
    limit = _cudnn_head_dim_limit(call, device)
    dims = (call.head_dim_qk, call.head_dim_v)
    if max(dims) > limit or dims[0] % 8 or dims[1] % 8:
        return False
    if min(call.q_len, call.kv_len) == 0 or call.kv_len == 1:
        return False
    if call.dropout_p > 0 and call.q_len == 1:
        return False
    return _heads_ok(call, supports_gqa=True)


def prefers_cudnn(device: CudaDevice) -> bool:
    """``check_prefer_cudnn_attention`` (CUDA 13 build): cuDNN newer than 9.15.0 on sm9x/sm10x."""
    return device.cudnn_version > _CUDNN_PREFERRED_AFTER and device.major in (9, 10)


_USABLE = {"flash": flash_usable, "mem-efficient": mem_efficient_usable, "cudnn": cudnn_usable}


def sdpa_backend(call: SdpaCall, device: CudaDevice) -> str:
    """The kernel PyTorch runs: "cudnn", "flash", "mem-efficient" or "math"
    (``select_sdp_backend``: the first usable backend in priority order)."""
    order: tuple[str, ...] = ("flash", "mem-efficient")
    if prefers_cudnn(device):
        order = ("cudnn", *order)
    for backend in order:
        if _USABLE[backend](call, device):
            return backend
    return "math"


def backend_usable(backend: str, call: SdpaCall, device: CudaDevice) -> bool:
    """Whether ``backend`` alone (``torch.nn.attention.sdpa_kernel([backend])``) can run it."""
    return backend == "math" or _USABLE[backend](call, device)


def transformers_sdpa_call(
    *,
    dtype: str,
    batch: int,
    q_heads: int,
    kv_heads: int,
    head_dim_qk: int,
    head_dim_v: int,
    q_len: int,
    kv_len: int,
    has_mask: bool,
    dropout_p: float,
    requires_grad: bool,
) -> tuple[SdpaCall, str]:
    """The call transformers 5.23's ``sdpa_attention_forward`` makes, and how it treats grouped
    KV heads: ``"none"`` (as many KV heads as query heads), ``"enable_gqa"`` (K and V passed
    as they are, ``enable_gqa=True``), ``"repeat_kv"`` (K and V copied to the query heads) or
    ``"pack_gqa"`` (one query token: the query reshaped to the KV heads).

    ``integrations/sdpa_attention.py`` lines 43-52 (``use_gqa_in_sdpa``: on CUDA, no mask and
    equal K/V head dims <= 256), 129-138 (else ``pack_gqa`` for q_len == 1, else
    ``repeat_kv``), 159 (``is_causal`` only for q_len > 1 without a mask) and 180-182.
    """
    gqa = "none"
    if kv_heads != q_heads:
        if not has_mask and head_dim_qk == head_dim_v <= 256:
            gqa = "enable_gqa"
        elif q_len == 1:
            gqa = "pack_gqa"
        else:
            gqa = "repeat_kv"
    is_causal = q_len > 1 and not has_mask
    if is_causal and kv_len > q_len:
        kv_len = q_len  # lines 180-182: a static cache's empty tail is cut off for prefill
    heads, queries, kv = q_heads, q_len, kv_heads
    if gqa == "repeat_kv":
        kv = q_heads
    elif gqa == "pack_gqa":
        heads, queries = kv_heads, q_len * (q_heads // kv_heads)
    call = SdpaCall(
        dtype=dtype,
        batch=batch,
        q_heads=heads,
        kv_heads=kv,
        head_dim_qk=head_dim_qk,
        head_dim_v=head_dim_v,
        q_len=queries,
        kv_len=kv_len,
        has_mask=has_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        enable_gqa=gqa == "enable_gqa",
        requires_grad=requires_grad,
    )
    return call, gqa
