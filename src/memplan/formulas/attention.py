"""The attention kernel a decoder layer runs in training: transformers' mask and GQA handling,
then PyTorch's kernel choice (:mod:`memplan.formulas.masks`, :mod:`memplan.formulas.sdpa`).

Both engines share it: the trace emulates the same choice op by op
(``memplan.trace.emulate``), the analytic engine reads what the chosen kernel saves
(``memplan.formulas.activations``).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.masks import sdpa_mask_built
from memplan.formulas.sdpa import backend_usable, sdpa_backend, transformers_sdpa_call
from memplan.specs.hardware import CudaDevice
from memplan.specs.model import ModelSpec
from memplan.specs.training import Attention

__all__ = ["AttentionKernel", "attention_kernel", "cpu_attention_kernel"]


@dataclass(frozen=True, slots=True)
class AttentionKernel:
    """What one decoder layer's attention runs, as transformers and PyTorch decide it."""

    backend: str
    """``eager``, ``flash``, ``cudnn``, ``mem-efficient`` or ``math``."""
    gqa: str = "none"
    """How grouped KV heads reach the kernel (:func:`memplan.formulas.sdpa.transformers_sdpa_call`):
    ``none``, ``enable_gqa`` or ``repeat_kv``; eager always repeats them."""
    has_mask: bool = False
    """transformers passed a real mask tensor (:func:`memplan.formulas.masks.sdpa_mask_built`)."""


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
    local = spec.sliding_window if sliding else None
    eager = attention is Attention.EAGER
    mask = sdpa_mask_built(eager=eager, local_size=local, q_len=seq, kv_len=seq)
    gqa_heads = spec.mla is None and spec.n_kv_heads < spec.n_heads
    if eager:
        return AttentionKernel("eager", "repeat_kv" if gqa_heads else "none", mask)
    if spec.attn_logit_softcapping is not None:
        raise SetupError(
            f"{spec.name}: sdpa cannot apply the attention logit soft-capping this model uses; "
            "choose --attention eager"
        )
    mla = spec.mla
    call, gqa = transformers_sdpa_call(
        dtype=dtype,
        batch=batch,
        q_heads=spec.n_heads,
        kv_heads=spec.n_heads if mla else spec.n_kv_heads,
        head_dim_qk=mla.qk_head_dim if mla else spec.head_dim,
        head_dim_v=mla.v_head_dim if mla else spec.head_dim,
        q_len=seq,
        kv_len=seq,
        has_mask=mask,
        dropout_p=dropout,
        requires_grad=True,
    )
    if attention is Attention.SDPA:
        return AttentionKernel(sdpa_backend(call, device), gqa, mask)
    backend = attention.value
    if not backend_usable(backend, call, device):
        raise SetupError(
            f"{spec.name}: the {backend} kernel cannot run this setup on {device.name} "
            f"(sdp_utils.cpp: head dims {call.head_dim_qk}/{call.head_dim_v}, {dtype}, "
            f"{call.q_heads}/{call.kv_heads} heads, {'a' if mask else 'no'} mask); "
            "use --attention sdpa"
        )
    return AttentionKernel(backend, gqa, mask)


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
