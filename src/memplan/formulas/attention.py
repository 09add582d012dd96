"""The attention kernel a decoder layer runs in training: transformers' mask and GQA handling,
then PyTorch's kernel choice (:mod:`memplan.formulas.masks`, :mod:`memplan.formulas.sdpa`).

Both engines share it: the trace emulates the same choice op by op
(``memplan.trace.emulate``), the analytic engine reads what the chosen kernel saves
(``memplan.formulas.activations``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.masks import sdpa_mask_built
from memplan.formulas.sdpa import SdpaCall, backend_usable, sdpa_backend, transformers_sdpa_call
from memplan.specs.hardware import CudaDevice
from memplan.specs.model import ModelSpec
from memplan.specs.training import Attention

__all__ = [
    "AttentionKernel",
    "attention_kernel",
    "cpu_attention_kernel",
    "generate_attention_kernel",
    "generate_kv_lengths",
]


@dataclass(frozen=True, slots=True)
class AttentionKernel:
    """What one decoder layer's attention runs, as transformers and PyTorch decide it."""

    backend: str
    """``eager``, ``flash``, ``cudnn``, ``mem-efficient`` or ``math``."""
    gqa: str = "none"
    """How grouped KV heads reach the kernel (:func:`memplan.formulas.sdpa.transformers_sdpa_call`):
    ``none``, ``enable_gqa``, ``repeat_kv`` or (one query token) ``pack_gqa``; eager always
    repeats them."""
    has_mask: bool = False
    """transformers passed a real mask tensor (:func:`memplan.formulas.masks.sdpa_mask_built`)."""


_KERNELS: dict[tuple[str, str, bool], AttentionKernel] = {}


def _kernel(backend: str, gqa: str, has_mask: bool) -> AttentionKernel:
    """The :class:`AttentionKernel` of these values, one object per distinct value (searches
    choose a kernel per (batch, seq); building a frozen one each time costs more)."""
    key = (backend, gqa, has_mask)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = AttentionKernel(backend, gqa, has_mask)
    return kernel


def _sdpa_call(
    spec: ModelSpec,
    dtype: str,
    batch: int,
    q_len: int,
    kv_len: int,
    *,
    mask: bool,
    dropout_p: float,
    requires_grad: bool,
) -> tuple[SdpaCall, str]:
    """The SDPA call ``sdpa_attention_forward`` makes for ``spec``'s attention (MLA: one key
    head per query head, its own q/k and v head sizes)."""
    mla = spec.mla
    return transformers_sdpa_call(
        dtype=dtype,
        batch=batch,
        q_heads=spec.n_heads,
        kv_heads=spec.n_heads if mla else spec.n_kv_heads,
        head_dim_qk=mla.qk_head_dim if mla else spec.head_dim,
        head_dim_v=mla.v_head_dim if mla else spec.head_dim,
        q_len=q_len,
        kv_len=kv_len,
        has_mask=mask,
        dropout_p=dropout_p,
        requires_grad=requires_grad,
    )


def attention_kernel(
    spec: ModelSpec,
    attention: Attention,
    device: CudaDevice,
    *,
    dtype: str,
    dropout: float,
    sliding: bool,
    batch: int,
    seq: int,
) -> AttentionKernel:
    """The kernel a training step's attention runs in a full (``sliding=False``) or
    sliding-window layer at (batch, seq), on ``device``.

    The mask follows ``masking_utils`` (:func:`memplan.formulas.masks.sdpa_mask_built`: eager
    always, a sliding layer once the sequence reaches the window); the call is the one
    ``sdpa_attention_forward`` makes (:func:`memplan.formulas.sdpa.transformers_sdpa_call`),
    and ``sdpa`` takes the kernel ``select_sdp_backend`` picks (:func:`memplan.formulas.sdpa.
    sdpa_backend`); ``flash``, ``mem-efficient``, ``cudnn`` force one and fail as PyTorch
    does when it cannot run the call.
    """
    local = spec.local_attention_size if sliding else None
    if (
        spec.sdpa_unsupported
        and attention is not Attention.SDPA
        and attention is not Attention.EAGER
    ):
        raise SetupError(
            f"{spec.name}: transformers has no sdpa attention for {spec.model_type}, so the "
            f"{attention.value} kernel cannot run; use --attention eager"
        )
    eager = attention is Attention.EAGER or spec.sdpa_unsupported
    mask = sdpa_mask_built(eager=eager, local_size=local, q_len=seq, kv_len=seq)
    gqa_heads = spec.mla is None and spec.n_kv_heads < spec.n_heads
    if eager:
        return _kernel("eager", "repeat_kv" if gqa_heads else "none", mask)
    if spec.attn_logit_softcapping is not None:
        raise SetupError(
            f"{spec.name}: sdpa cannot apply the attention logit soft-capping this model uses; "
            "choose --attention eager"
        )
    if spec.sdpa_own_call:
        mask = True
    call, gqa = _sdpa_call(
        spec, dtype, batch, seq, seq, mask=mask, dropout_p=dropout, requires_grad=True
    )
    if spec.sdpa_own_call:  # K/V heads as they are, no enable_gqa, the mask always
        call = dataclasses.replace(call, kv_heads=spec.n_kv_heads, enable_gqa=False)
        gqa = "none"
    if attention is Attention.SDPA:
        return _kernel(sdpa_backend(call, device), gqa, mask)
    backend = attention.value
    if not backend_usable(backend, call, device):
        raise SetupError(
            f"{spec.name}: the {backend} kernel cannot run this setup on {device.name} "
            f"(sdp_utils.cpp: head dims {call.head_dim_qk}/{call.head_dim_v}, {dtype}, "
            f"{call.q_heads}/{call.kv_heads} heads, {'a' if mask else 'no'} mask); "
            "use --attention sdpa"
        )
    return _kernel(backend, gqa, mask)


def cpu_attention_kernel(spec: ModelSpec, attention: Attention, *, half: bool) -> AttentionKernel:
    """``--target cpu``: the old rule of thumb (flash for half inputs without grouped heads,
    else math for grouped heads, else mem-efficient); CPU's own kernel choice
    (``sdp_utils_cpp.cpp``) is not modelled."""
    if attention is Attention.EAGER:
        return AttentionKernel("eager", has_mask=True)
    mla = spec.mla
    qk = mla.qk_head_dim if mla else spec.head_dim
    v = mla.v_head_dim if mla else spec.head_dim
    if half and qk == v and qk <= 256:
        return AttentionKernel("flash")
    gqa = spec.n_kv_heads < spec.n_heads and mla is None
    return AttentionKernel("math", "enable_gqa") if gqa else AttentionKernel("mem-efficient")


def generate_kv_lengths(
    spec: ModelSpec, *, sliding: bool, static_cache: bool, cache_len: int, past: int, q_len: int
) -> tuple[int, int]:
    """(key length the mask code sees, key length sdpa gets) in one forward of ``generate``
    with ``past`` tokens cached (transformers 5.23 ``cache_utils``, ``get_mask_sizes`` and
    ``update`` of each layer class).

    DynamicCache: ``past + q_len``; a sliding layer keeps its last ``window - 1`` tokens
    once full (``DynamicSlidingWindowLayer``). StaticCache: the full ``cache_len`` (sdpa crops
    it to q_len for a causal prefill); a static sliding layer: ``min(cache_len, window)``, or
    past + q_len while it overflows (``StaticSlidingWindowLayer``).
    """
    window = spec.local_attention_size if sliding else None
    if static_cache:
        if window is None:
            return cache_len, cache_len
        size = min(cache_len, window)
        if past >= size:
            length = size + q_len - 1
        elif past + q_len > size:
            length = past + q_len
        else:
            length = size
        return length, length
    full = window is not None and past >= window
    length = (window or 0) - 1 + q_len if full else past + q_len
    return length, length


def generate_attention_kernel(
    spec: ModelSpec,
    attention: str,
    device: CudaDevice,
    *,
    dtype: str,
    batch: int,
    q_len: int,
    past: int,
    sliding: bool,
    static_cache: bool = False,
    cache_len: int = 0,
) -> AttentionKernel:
    """The kernel one attention call of ``generate`` runs (prefill: ``past`` 0, ``q_len`` the
    prompt; decode: ``q_len`` 1), with no padding, under ``torch.no_grad``.

    The mask follows ``masking_utils`` (:func:`memplan.formulas.masks.sdpa_mask_built`: a
    sliding layer once its keys reach the window, a static cache's decode always), the call
    ``sdpa_attention_forward`` (grouped heads: ``enable_gqa`` without a mask, else ``pack_gqa``
    for one query token, else ``repeat_kv``), the kernel ``select_sdp_backend``.
    """
    mask_kv, sdpa_kv = generate_kv_lengths(
        spec, sliding=sliding, static_cache=static_cache, cache_len=cache_len, past=past,
        q_len=q_len,
    )  # fmt: skip
    mask = sdpa_mask_built(
        eager=attention == "eager",
        local_size=spec.local_attention_size if sliding else None,
        q_len=q_len,
        kv_len=mask_kv,
        q_offset=past,
        compileable_decode=static_cache and q_len == 1,
    )
    grouped = spec.mla is None and spec.n_kv_heads < spec.n_heads
    if attention == "eager":
        return AttentionKernel("eager", "repeat_kv" if grouped else "none", mask)
    call, gqa = _sdpa_call(
        spec, dtype, batch, q_len, sdpa_kv, mask=mask, dropout_p=0.0, requires_grad=False
    )
    if attention == "sdpa":
        return AttentionKernel(sdpa_backend(call, device), gqa, mask)
    if not backend_usable(attention, call, device):
        raise SetupError(
            f"{spec.name}: the {attention} kernel cannot run this call on {device.name} "
            "(sdp_utils.cpp); use --attention sdpa"
        )
    return AttentionKernel(attention, gqa, mask)
