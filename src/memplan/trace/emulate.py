"""CUDA semantics on fake cpu tensors: sdpa kernels, dropout, and CUDA autocast.

A ``TorchFunctionMode`` sits above autograd, so what it substitutes is recorded by autograd
exactly as on the GPU:

- ``F.scaled_dot_product_attention`` calls the kernel PyTorch picks on the emulated GPU
  (:func:`memplan.formulas.sdpa.sdpa_backend`, the same choice the analytic engine makes):
  ``aten._scaled_dot_product_flash_attention`` / ``_efficient_attention`` /
  ``_cudnn_attention``, whose meta kernels and autograd formulas save what the GPU saves
  (TRACE-NOTES.md), or the math composite (with ``enable_gqa`` it repeats K and V itself),
  with the mask handling of ``attention.cpp`` (bool mask converted to the query dtype;
  mem-efficient pads its last dim to a multiple of 8; flash pads head dims to 8).
- ``F.dropout`` calls ``aten.native_dropout`` (the fused CUDA kernel, bool mask), as
  ``at::native::dropout`` does for CUDA tensors (``is_fused_kernel_acceptable``).
- Autocast with CUDA's op lists (``aten/src/ATen/autocast_mode.cpp``, ``AutocastCUDA``):
  CPU autocast has other lists (e.g. it leaves ``layer_norm`` and ``softmax`` in half), and
  autocast for ``device_type="cuda"`` never fires on cpu tensors. Casts of leaf fp32 tensors
  that require grad are cached until the autocast region ends, like ``cached_cast``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from memplan.errors import SetupError
from memplan.formulas.sdpa import SdpaCall, backend_usable, sdpa_backend
from memplan.trace.cuda_env import GpuArch
from memplan.trace.tracker import Flag, StorageTracker

__all__ = ["CudaEmulation"]

# autocast_mode.cpp, CUDA: ops that run in the lower precision type.
LOWER_PRECISION_OPS = frozenset(
    {
        "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm",
        "addbmm", "addmv", "addr", "mv", "einsum", "prelu", "conv1d", "conv2d", "conv3d",
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "chain_matmul",
        "linalg_vecdot", "scaled_dot_product_attention",
    }
)  # fmt: skip
# ops that run in fp32 (cast half inputs up)
FP32_OPS = frozenset(
    {
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus",
        "layer_norm", "group_norm", "norm", "cosine_similarity", "nll_loss", "kl_div",
        "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "binary_cross_entropy_with_logits",
        "dist", "cdist", "renorm", "logsumexp", "cross_entropy",
    }
)  # fmt: skip
# ops that get ``dtype=torch.float32`` when called on half inputs without a dtype
FP32_SET_DTYPE_OPS = frozenset(
    {"softmax", "log_softmax", "cumsum", "cumprod", "prod", "sum"}
)  # fmt: skip
_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class CudaEmulation(TorchFunctionMode):
    """Replaces the CPU behaviour of sdpa, dropout and autocast by the CUDA one."""

    def __init__(
        self,
        tracker: StorageTracker | None,
        arch: GpuArch,
        *,
        sdpa_backend: str = "auto",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.arch = arch
        self.sdpa_backend = sdpa_backend
        self.autocast_dtype = autocast_dtype
        self.autocast_on = False
        """Inside an autocast region (the forward, and checkpointing's recomputation)."""
        self.cache_on = True
        self._cache: dict[int, torch.Tensor] = {}
        self.backends_used: dict[str, int] = {}
        self.calls: list[tuple[str, SdpaCall]] = []
        """Every sdpa call emulated, with the kernel it ran (for tests of the choice)."""

    def clear_cache(self) -> None:
        """End of the autocast region: drop the cached casts (as leaving ``torch.autocast``)."""
        self._cache.clear()

    # Dispatch ------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "backward" and len(args) == 1 and not any(kwargs.values()):
            # the backward may call Python code (checkpointing recomputes layers): keep the
            # emulation on for it (a mode is off while it handles a call), and run the engine
            # directly so that ``backward`` is not dispatched to this mode again
            return self._backward(args[0])
        if name == "dropout" and func is F.dropout:
            return self._dropout(*args, **kwargs)
        if self.autocast_on:
            if name in LOWER_PRECISION_OPS:
                args, kwargs = self._cast_all(args, kwargs, self.autocast_dtype)
            elif name in FP32_OPS:
                args, kwargs = self._cast_all(args, kwargs, torch.float32)
            elif name in FP32_SET_DTYPE_OPS and kwargs.get("dtype") is None:
                first = args[0] if args else None
                if isinstance(first, torch.Tensor) and first.dtype in _HALF:
                    kwargs = {**kwargs, "dtype": torch.float32}
        if name == "scaled_dot_product_attention":
            return self._sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    def _backward(self, loss: torch.Tensor) -> None:
        from torch.autograd import _make_grads
        from torch.autograd.graph import _engine_run_backward

        with self:
            grads = _make_grads((loss,), (None,), is_grads_batched=False)
            _engine_run_backward(
                (loss,), grads, False, False, (), allow_unreachable=True, accumulate_grad=True
            )

    # Autocast ------------------------------------------------------------------------------
    def _cast(self, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if dtype is None or tensor.dtype not in _FLOATS or tensor.dtype == dtype:
            return tensor
        cacheable = (
            self.cache_on
            and dtype != torch.float32
            and tensor.dtype == torch.float32
            and tensor.is_leaf
            and tensor.requires_grad
            and not tensor._is_view()
        )
        if cacheable:
            cached = self._cache.get(id(tensor))
            if cached is None:
                cached = tensor.to(dtype)
                self._cache[id(tensor)] = cached
                if self.tracker is not None:
                    self.tracker.flag(cached, Flag.AUTOCAST_CACHE)
            return cached
        return tensor.to(dtype)

    def _cast_all(self, args: Any, kwargs: dict[str, Any], dtype: torch.dtype | None) -> Any:
        def conv(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return self._cast(value, dtype)
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                return type(value)(conv(v) for v in value)
            return value

        return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}

    # Dropout -------------------------------------------------------------------------------
    def _dropout(
        self, input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        if not training or p == 0.0 or input.numel() == 0:
            return input
        out, _mask = torch.ops.aten.native_dropout(input, p, True)
        if inplace:
            return input.copy_(out)
        return out

    # Attention -----------------------------------------------------------------------------
    def _sdpa(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        call = SdpaCall(
            dtype=str(query.dtype).removeprefix("torch."),
            batch=query.shape[0],
            q_heads=query.shape[1],
            kv_heads=key.shape[1],
            head_dim_qk=query.shape[-1],
            head_dim_v=value.shape[-1],
            q_len=query.shape[-2],
            kv_len=key.shape[-2],
            has_mask=attn_mask is not None,
            dropout_p=dropout_p,
            is_causal=is_causal,
            enable_gqa=enable_gqa,
            requires_grad=torch.is_grad_enabled()
            and any(t.requires_grad for t in (query, key, value)),
        )
        backend = self._backend(call)
        self.backends_used[backend] = self.backends_used.get(backend, 0) + 1
        self.calls.append((backend, call))
        if backend == "math" and dropout_p > 0:
            return _math_with_cuda_dropout(
                query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )
        if backend == "math":
            # the composite is the same code on every device (attention.cpp); with enable_gqa it
            # repeats K and V itself (pre_process_group_query_attention_input)
            return torch.ops.aten._scaled_dot_product_attention_math(
                query, key, value, attn_mask, dropout_p, is_causal, None,
                scale=scale, enable_gqa=enable_gqa,
            )[0]  # fmt: skip
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # attention.cpp convert_boolean_attn_mask: one new mask in the query dtype
            zero = torch.zeros((), dtype=query.dtype)
            attn_mask = torch.where(attn_mask, zero, torch.full((), -math.inf, dtype=query.dtype))
        grad = call.requires_grad
        if backend == "flash":
            return _flash(query, key, value, dropout_p, is_causal, scale)
        if backend == "cudnn":
            return torch.ops.aten._scaled_dot_product_cudnn_attention(
                query, key, value, attn_mask, grad, dropout_p, is_causal, False, scale=scale
            )[0]
        if attn_mask is not None:
            attn_mask = _pad_mask_8(attn_mask)
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, grad, dropout_p, is_causal, scale=scale
        )[0]

    def _backend(self, call: SdpaCall) -> str:
        device = self.arch.device
        if self.sdpa_backend == "auto":
            return sdpa_backend(call, device)
        if not backend_usable(self.sdpa_backend, call, device):
            raise SetupError(
                f"the {self.sdpa_backend} attention kernel cannot run this model on "
                f"{self.arch.name} (head dim {call.head_dim_qk}/{call.head_dim_v}, "
                f"{call.dtype}, {call.q_heads}/{call.kv_heads} heads, "
                f"{'a' if call.has_mask else 'no'} mask); use --attention sdpa "
                "to let PyTorch choose"
            )
        return self.sdpa_backend


def _math_with_cuda_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """``_scaled_dot_product_attention_math`` (attention.cpp) op by op, with the dropout a CUDA
    tensor gets: ``at::dropout`` takes the fused ``native_dropout`` (bool mask) on CUDA
    (``is_fused_kernel_acceptable``), where the CPU composite would keep a float mask.

    Half inputs run in fp32; q and k are each scaled by sqrt(scale); the causal mask is a
    (S_q, S_kv) additive tensor; grouped K/V heads are repeated with ``repeat_interleave``;
    the second output, ``attn.to(origin_dtype)``, is made and dropped.
    """
    origin = query.dtype
    q, k, v = (t.to(torch.float32) if t.dtype in _HALF else t for t in (query, key, value))
    factor = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    q = q * factor
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        attn_mask = causal
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=q.dtype)
        attn_mask = torch.where(attn_mask, zero, torch.full((), -math.inf, dtype=q.dtype))
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    attn = torch.matmul(q, k.transpose(-2, -1) * factor)
    if attn_mask is not None:
        attn.add_(attn_mask)
    attn = torch.ops.aten._safe_softmax(attn, -1)
    attn = torch.ops.aten.native_dropout(attn, dropout_p, True)[0]
    out = torch.matmul(attn, v).to(origin)
    attn.to(origin)
    return out


def _flash(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """attention.cpp: pad head dims to a multiple of 8, run flash, slice the output."""
    head_dim = query.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    pad = -head_dim % 8
    if pad:
        query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
    out = torch.ops.aten._scaled_dot_product_flash_attention(
        query, key, value, dropout_p, is_causal, False, scale=scale
    )[0]
    return out[..., :head_dim] if pad else out


def _pad_mask_8(mask: torch.Tensor) -> torch.Tensor:
    """attention.cpp ``preprocess_mask`` as torch 2.13.0 compiles it (``pad_bias<8>``): unless
    every stride but the last is a multiple of 8 (and the last is 1), pad the last dim by
    ``8 - last % 8`` and slice back; the memory-efficient kernel saves the padded storage."""
    strides = mask.stride()
    if strides[-1] == 1 and all(stride % 8 == 0 for stride in strides[:-1]):
        return mask
    last = mask.shape[-1]
    return F.pad(mask, (0, 8 - last % 8))[..., :last]
