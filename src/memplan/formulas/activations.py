"""Tensors saved for backward, op by op, as transformers 5.23 + torch 2.13 save them on CUDA.

Each op of a decoder layer contributes the tensors its autograd node keeps (derivatives.yaml
plus the modeling code of transformers), in the dtype they really have:

- **Norms.** ``LlamaRMSNorm``: ``x.to(float32)`` (a copy when the stream is half), then ``pow``
  and ``x * rsqrt`` save the fp32 input and the (B, S, 1) fp32 ``rsqrt``; ``weight * h`` saves
  ``h`` (fp32 under AMP, the half copy in pure half). Gemma's RMSNorm saves the fp32 normalised
  tensor and the tiny fp32 ``1 + weight``. ``LayerNorm`` (``native_layer_norm``) saves its input
  and fp32 mean and rstd (B, S, 1).
- **Linear layers** save their input when the weight needs a gradient, and their weight when
  the input does (a parameter: no extra memory; under AMP the cached half copy, counted under
  ``autocast_cache``). Under AMP a fp32 input is cast to half separately for each consumer
  (autocast casts activations per call and caches only leaf weights), so q, k and v each save
  their own half copy of the norm output.
- **Rotary**: ``q * cos`` saves ``cos`` only (it needs no gradient); cos and sin (1, 1, S, D)
  are computed once per forward and shared by all layers.
- **Attention core** (``--attention``): flash and cuDNN save q, k, v, the output and a fp32
  logsumexp (B, H, S); memory-efficient pads the logsumexp to a multiple of 32 positions
  (``_meta_registrations.py``); their RNG seed/offset live on the host. flash takes grouped KV
  heads natively (``enable_gqa``); the memory-efficient kernel does not, so PyTorch falls back to
  the math path for GQA without a mask (``sdp_utils.cpp``), which saves scaled q, k, the fp32
  softmax (B, H, S, S) and v. ``eager`` keeps q, the repeated k and v, the softmax (fp32) and,
  under half precision, its half copy.
- **MLP**: gated: gate, act(gate), up and their product; GPT-2's ``gelu_new`` is six Python ops
  (``pow`` runs in fp32 under autocast), saving four tensors of the MLP width.
- **Dropout** on CUDA saves a bool mask (one byte per element); on CPU a tensor in the input
  dtype. Probability 0 is a no-op (``at::native::dropout``).
- **Head and loss**: the final norm, the lm_head input, then ``ForCausalLMLoss``: ``logits.float()``
  (a fp32 copy under half precision) and ``log_softmax``, which saves its fp32 (B*S, V) output,
  ``nll_loss`` the shifted labels (int64).

Sizes are in elements per token (times B*S), per score (times B*S*S), per row of the logsumexp
(times B*S rounded), per position (times S) or fixed. Every saved tensor is one allocation,
rounded up by the allocator (``memplan.formulas.training.alloc_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.formulas.attention import AttentionKernel, attention_kernel, cpu_attention_kernel
from memplan.specs.model import MlpKind, ModelSpec, NormKind, PositionKind, QkNorm
from memplan.specs.training import Attention, Checkpointing

__all__ = [
    "ActivationContext",
    "AttentionKernel",
    "Saved",
    "attention_kernel",
    "cpu_attention_kernel",
    "head_saved",
    "layer_saved",
    "model_saved",
]

SOURCE = "transformers 5.23 modeling code + torch 2.13 derivatives.yaml (saved tensors)"


@dataclass(frozen=True, slots=True)
class Saved:
    """One saved tensor: ``numel = B*S*per_token + B*S*S''*per_score + B*S'*per_row +
    S*per_position + fixed`` with ``S'`` = S rounded up to ``align``, ``S''`` to
    ``score_align``."""

    key: str
    elem_bytes: int
    per_token: int = 0
    per_score: int = 0
    per_row: int = 0
    align: int = 1
    per_position: int = 0
    fixed: int = 0
    category: str = "activations"
    """``activations`` or ``autocast_cache`` (half weight copies held by the graph)."""
    whole_buffer_at_batch_1: bool = False
    """A view that keeps its (B, S+1) parent alive when B == 1: ``labels[..., 1:].contiguous()``
    is already contiguous for one row, so no copy is made and the padded labels are saved."""
    score_align: int = 1
    """The last dim of a per-score tensor is padded to this multiple (a mask the memory-efficient
    kernel pads)."""

    def nbytes(self, batch: int, seq: int) -> int:
        rows = -(-seq // self.align) * self.align if self.align > 1 else seq
        keys = -(-seq // self.score_align) * self.score_align
        tokens_seq = seq + 1 if self.whole_buffer_at_batch_1 and batch == 1 else seq
        numel = (
            batch * tokens_seq * self.per_token
            + batch * seq * keys * self.per_score
            + batch * rows * self.per_row
            + seq * self.per_position
            + self.fixed
        )
        return numel * self.elem_bytes


@dataclass(frozen=True, slots=True)
class ActivationContext:
    """Everything about a setup that decides what is saved, except batch and sequence."""

    compute_bytes: int
    """Width of matmul outputs (2 under AMP or pure half, 4 in fp32)."""
    stream_bytes: int
    """Width of the residual stream (4 under AMP: fp32 embeddings + half deltas)."""
    autocast: bool
    attention: Attention
    checkpointing: Checkpointing
    attention_dropout: float
    hidden_dropout: float
    embedding_dropout: float
    mask_bytes: int
    """Bytes per element of a dropout mask: 1 (CUDA bool), else the input width (CPU)."""
    kv_cache_copies: bool = True
    """``use_cache`` is on (transformers' default without checkpointing): ``DynamicCache.update``
    concatenates k and v into fresh tensors, which attention then saves."""
    kernels: tuple[AttentionKernel, AttentionKernel] | None = None
    """The attention kernel of full-attention and of sliding-window layers
    (:func:`attention_kernel`); None: flash in both."""

    def kernel(self, sliding: bool) -> AttentionKernel:
        if self.kernels is None:
            return AttentionKernel("flash")
        return self.kernels[1 if sliding else 0]


# Ops ---------------------------------------------------------------------------------------------
def _norm(
    spec: ModelSpec,
    ctx: ActivationContext,
    width: int,
    in_bytes: int,
    x_grad: bool,
    w_train: bool,
    *,
    rows: int = 1,
) -> list[Saved]:
    """A norm over ``width`` fed a tensor of ``in_bytes`` per element, normalising ``rows``
    groups per token (the heads of a per-head QK-norm; 1 otherwise).

    RMSNorm always keeps a fp32 input: the input itself when it is fp32, else the copy made by
    ``.to(float32)`` / ``.float()``. LayerNorm keeps its input (cast to fp32 under autocast).
    OLMo-2's RMSNorm multiplies by the weight before casting back, so the weight's gradient
    reads a fp32 normed tensor (modeling_olmo2.py, Olmo2RMSNorm.forward).
    """
    out: list[Saved] = []
    if spec.norm_kind is NormKind.RMSNORM:
        gemma = spec.norm_one_plus_weight
        if x_grad:
            out.append(Saved("input_fp32", 4, per_token=width))
            out.append(Saved("rsqrt_fp32", 4, per_token=rows))
        if gemma:
            if w_train:
                out.append(Saved("normed_fp32", 4, per_token=width))
            if x_grad:
                # one weight per row: RMSNorm(head_dim) shared by the heads of a QK-norm
                out.append(Saved("one_plus_weight_fp32", 4, fixed=width // rows))
        elif w_train:
            normed_bytes = 4 if spec.norm_weight_fp32 else in_bytes
            out.append(Saved("normed", normed_bytes, per_token=width))
        return out
    ln_in = 4 if ctx.autocast else in_bytes
    if x_grad or w_train:
        out.append(Saved("input", ln_in, per_token=width))
        out.append(Saved("mean_fp32", 4, per_token=1))
        out.append(Saved("rstd_fp32", 4, per_token=1))
    return out


def _qk_norms(
    spec: ModelSpec, ctx: ActivationContext, trainable: bool, index: int = 0
) -> list[Saved]:
    """Norms on the query and key projections' outputs (Qwen3, Gemma 3: RMSNorm(head_dim) per
    head; OLMo 2: RMSNorm over all heads), applied before rotary; Llama 4's L2 norm after
    rotary, on its rotary layers (``x.float()`` saved by ``pow``, the per-head fp32 ``rsqrt``;
    no weight)."""
    if spec.qk_norm is QkNorm.NONE or spec.mla is not None:
        return []
    c, d = ctx.compute_bytes, spec.head_dim
    if spec.qk_norm is QkNorm.L2:
        if not spec.uses_rotary(index):
            return []
        return [
            Saved(f"{name}/{part}", 4, per_token=heads * (d if part == "input_fp32" else 1))
            for name, heads in (("q_norm", spec.n_heads), ("k_norm", spec.n_kv_heads))
            for part in ("input_fp32", "rsqrt_fp32")
        ]
    per_head = spec.qk_norm is QkNorm.PER_HEAD
    out: list[Saved] = []
    for name, heads in (("q_norm", spec.n_heads), ("k_norm", spec.n_kv_heads)):
        rows = heads if per_head else 1
        out += _group(name, _norm(spec, ctx, heads * d, c, True, trainable, rows=rows))
    return out


def _norm_out_bytes(spec: ModelSpec, ctx: ActivationContext, in_bytes: int) -> int:
    """Width of a norm's output: the stream dtype (Gemma casts back to the input dtype)."""
    if spec.norm_kind is NormKind.RMSNORM:
        return in_bytes
    return 4 if ctx.autocast else in_bytes


def _linear_inputs(
    ctx: ActivationContext, key: str, width: int, in_bytes: int, trainable: list[bool]
) -> list[Saved]:
    """Inputs saved by the linear layers that read one tensor (one per consumer under AMP)."""
    c = ctx.compute_bytes
    n = sum(trainable)
    if n == 0:
        return []
    if ctx.autocast and in_bytes != c:
        return [Saved(f"{key}/input_half_{k}", c, per_token=width) for k in range(n)]
    return [Saved(f"{key}/input", in_bytes, per_token=width)]


def _dropout(ctx: ActivationContext, key: str, p: float, width: int, in_bytes: int) -> list[Saved]:
    if p <= 0:
        return []
    mask = ctx.mask_bytes if ctx.mask_bytes else in_bytes
    return [Saved(f"{key}/mask", mask, per_token=width)]


def _attention_core(
    spec: ModelSpec, ctx: ActivationContext, kernel: AttentionKernel, o_trains: bool = True
) -> list[Saved]:
    """What the attention kernel (or the eager ops) saves; q/k/v already rotated.

    ``o_trains``: o_proj's weight trains, so o_proj saves its input (the attention output);
    a fused kernel saves its output anyway, the eager and math paths do not (a frozen o_proj
    keeps its weight only; LoRA on o_proj saves the input as its own)."""
    if kernel.backend in ("flash", "cudnn", "mem-efficient"):
        out = _fused_kernel_saved(spec, ctx, kernel)
    else:
        out = _math_kernel_saved(spec, ctx) if kernel.backend == "math" else _eager_saved(spec, ctx)
        if not o_trains:
            out = [s for s in out if s.key != "attention/out"]
    if ctx.checkpointing is Checkpointing.SELECTIVE:
        # recomputing the core needs q, k, v (kept); the output is o_proj's input anyway
        drop = ("logsumexp_fp32", "rng_seed", "rng_offset", "mask_bias")
        out = [s for s in out if not s.per_score and not s.key.endswith(drop)]
    return out


def _fused_kernel_saved(
    spec: ModelSpec, ctx: ActivationContext, kernel: AttentionKernel
) -> list[Saved]:
    """flash, cuDNN and memory-efficient: q, k, v, the output, a fp32 logsumexp and the RNG
    state (TRACE-NOTES.md); with a mask, the additive mask in the query dtype.

    With ``repeat_kv`` the kernel saves transformers' full-head copies of k and v, except for
    one KV head, where ``expand(...).reshape(...)`` is a view (stride 0 over the heads) and the
    kernel keeps the cache's one-head tensors. The
    memory-efficient kernel pads its logsumexp to 32 positions (``_meta_registrations.py``) and
    the mask's last dim to a multiple of 8 (attention.cpp ``preprocess_mask``: ``pad_bias<8>``);
    cuDNN saves the mask as converted. Flash keeps a (2,) uint64 seed and an unused offset,
    the others two int64 scalars. The output copies q's layout for flash and cuDNN
    (``empty_like`` / ``alloc_with_matching_layout``); partial-rotary families build q with
    ``torch.cat``, (B, H, S, D) contiguous, so ``transpose(1, 2).contiguous()`` copies the output
    for o_proj. The memory-efficient output is (B, S, H, D) already.
    """
    c, h, backend = ctx.compute_bytes, spec.n_heads, kernel.backend
    mla = spec.mla
    d_qk = mla.qk_head_dim if mla else spec.head_dim
    d_v = mla.v_head_dim if mla else spec.head_dim
    storages = _qkv_storages(spec, ctx, spec.n_kv_heads, d_qk, d_v)
    if kernel.gqa == "repeat_kv" and spec.n_kv_heads > 1:
        k = Saved("attention/k", c, per_token=h * d_qk)
        storages = [storages[0], k, Saved("attention/v", c, per_token=h * d_v)]
    out = [*storages, Saved("attention/out", c, per_token=h * d_v)]
    if spec.rotary_concat and backend != "mem-efficient":
        out.append(Saved("o_proj/input", c, per_token=h * d_v))
    align = 32 if backend == "mem-efficient" else 1
    out.append(Saved("attention/logsumexp_fp32", 4, per_row=h, align=align))
    out.append(Saved("attention/rng_seed", 8, fixed=2 if backend == "flash" else 1))
    out.append(Saved("attention/rng_offset", 8, fixed=1))
    if kernel.has_mask and backend != "flash":
        pad = 8 if backend == "mem-efficient" else 1
        out.append(Saved("attention/mask_bias", c, per_score=1, score_align=pad))
    return out


def _math_kernel_saved(spec: ModelSpec, ctx: ActivationContext) -> list[Saved]:
    """``_scaled_dot_product_attention_math`` (attention.cpp): k and v repeated for GQA,
    everything in fp32 for half inputs; q*sqrt(scale) and k*sqrt(scale), the softmax and v are
    saved, and the output's transposed copy feeds o_proj. With dropout, CUDA's fused dropout
    keeps its bool mask and the second matmul the dropped probabilities."""
    c, h = ctx.compute_bytes, spec.n_heads
    mla = spec.mla
    d_qk = mla.qk_head_dim if mla else spec.head_dim
    d_v = mla.v_head_dim if mla else spec.head_dim
    out = [
        Saved("attention/q_scaled", 4, per_token=h * d_qk),
        Saved("attention/k_scaled", 4, per_token=h * d_qk),
        Saved("attention/softmax", 4, per_score=h),
    ]
    if ctx.attention_dropout > 0:
        out.append(Saved("attention/dropout_mask", ctx.mask_bytes or 4, per_score=h))
        out.append(Saved("attention/probs", 4, per_score=h))
    out.append(Saved("attention/v", 4, per_token=h * d_v))
    out.append(Saved("attention/out", c, per_token=h * d_v))
    return out


def _eager_saved(spec: ModelSpec, ctx: ActivationContext) -> list[Saved]:
    """``eager_attention_forward``: softmax(dtype=float32) then ``.to(q.dtype)`` (GPT-2 keeps
    the input dtype unless autocast upcasts it), dropout, matmul with v."""
    c, h = ctx.compute_bytes, spec.n_heads
    mla = spec.mla
    d_qk = mla.qk_head_dim if mla else spec.head_dim
    d_v = mla.v_head_dim if mla else spec.head_dim
    out = [Saved("attention/q", c, per_token=h * d_qk), Saved("attention/k", c, per_token=h * d_qk)]
    if spec.attn_logit_softcapping is not None:
        out.append(Saved("attention/softcap_tanh", c, per_score=h))
    soft = 4 if ctx.autocast or not spec.softmax_in_input_dtype else c
    if spec.attention_sinks:
        # gpt-oss: cat([scores, sinks]) promotes to the sinks' fp32 under autocast; the max
        # subtracted first saves its int64 indices; the softmax has one more column
        soft = 4 if ctx.autocast else c
        out.append(Saved("attention/max_indices", 8, per_token=h))
        out.append(Saved("attention/softmax", soft, per_score=h, per_token=h))
    else:
        out.append(Saved("attention/softmax", soft, per_score=h))
    p = ctx.attention_dropout
    if soft != c or p > 0:
        # (with sinks in the same dtype, bmm takes the (S, S) slice of the (S, S + 1) softmax
        # as a strided view: no copy)
        out.append(Saved("attention/probs", c, per_score=h))
    if p > 0:
        mask = ctx.mask_bytes if ctx.mask_bytes else c
        out.append(Saved("attention/dropout_mask", mask, per_score=h))
    out.append(Saved("attention/v", c, per_token=h * d_v))
    out.append(Saved("attention/out", c, per_token=h * d_v))
    return out


def _qkv_storages(
    spec: ModelSpec, ctx: ActivationContext, kv_heads: int, d_qk: int, d_v: int
) -> list[Saved]:
    """The storages behind the q, k, v a fused kernel saves.

    q is a rotary output (its own tensor) or, without rotary and with fused QKV (GPT-2), a view
    of the projection's output, which keeps that whole buffer alive. k and v are the cache's
    concatenated copies under ``use_cache``; otherwise the rotary output for k, and for v a view
    of its projection (of the fused buffer when there is one).
    """
    c, h = ctx.compute_bytes, spec.n_heads
    q = Saved("attention/q", c, per_token=h * d_qk)
    k = Saved("attention/k", c, per_token=kv_heads * d_qk)
    v = Saved("attention/v", c, per_token=kv_heads * d_v)
    if spec.mla is not None:
        # MLA: q and k are concatenations (nope + rope); v a view of kv_b's output.
        kv_b = spec.n_heads * (spec.mla.qk_nope_head_dim + spec.mla.v_head_dim)
        return [q, k, Saved("attention/kv_b_out", c, per_token=kv_b)]
    if not spec.fused_qkv:
        return [q, k, v]
    buffer = Saved("attention/qkv_out", c, per_token=spec.q_dim + 2 * spec.kv_dim)
    rotary = spec.position is PositionKind.ROTARY
    if ctx.kv_cache_copies:
        return [q, k, v] if rotary else [buffer, k, v]
    return [q, k, buffer] if rotary else [buffer]


def _projections(
    spec: ModelSpec, ctx: ActivationContext, in_bytes: int, train: dict[str, bool], x_grad: bool
) -> list[Saved]:
    """q/k/v projections (inputs) and what rotary adds; fused QKV keeps its whole output."""
    c, hdim = ctx.compute_bytes, spec.hidden_size
    mla = spec.mla
    if mla is not None:
        out = _linear_inputs(ctx, "q_kv_a", hdim, in_bytes, [True, True])
        if mla.q_lora_rank is not None:
            out += _group("q_a_layernorm", _norm(spec, ctx, mla.q_lora_rank, c, True, True))
            out += _linear_inputs(ctx, "q_b", mla.q_lora_rank, c, [True])
        out += _group("kv_a_layernorm", _norm(spec, ctx, mla.kv_lora_rank, c, True, True))
        out += _linear_inputs(ctx, "kv_b", mla.kv_lora_rank, c, [True])
        return out
    if spec.fused_qkv:
        return _linear_inputs(ctx, "qkv_proj", hdim, in_bytes, [train["qkv"]])
    return _linear_inputs(ctx, "qkv_proj", hdim, in_bytes, [train["q"], train["k"], train["v"]])


def _mlp(
    spec: ModelSpec, ctx: ActivationContext, in_bytes: int, width: int, train: dict[str, bool]
) -> list[Saved]:
    c, hdim = ctx.compute_bytes, spec.hidden_size
    if spec.mlp_kind is MlpKind.GATED:
        if spec.fused_gate_up:
            out = _linear_inputs(ctx, "gate_up_proj", hdim, in_bytes, [train["gate_up"]])
            out.append(Saved("mlp/gate_up_out", c, per_token=2 * width))
        else:
            out = _linear_inputs(ctx, "gate_up_proj", hdim, in_bytes, [train["gate"], train["up"]])
            out.append(Saved("mlp/gate_out", c, per_token=width))
            out.append(Saved("mlp/up_out", c, per_token=width))
        out.append(Saved("mlp/act_out", c, per_token=width))
        if train["down"]:
            out.append(Saved("mlp/down_input", c, per_token=width))
        return out
    out = _linear_inputs(ctx, "up_proj", hdim, in_bytes, [train["up"]])
    if spec.activation == "gelu_new":
        # 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*pow(x,3)))): pow saves x (fp32 under autocast),
        # tanh its result, the last mul both factors.
        wide = 4 if ctx.autocast else c
        out += [
            Saved("mlp/gelu_pow_input", wide, per_token=width),
            Saved("mlp/gelu_tanh", wide, per_token=width),
            Saved("mlp/gelu_half_x", c, per_token=width),
            Saved("mlp/gelu_one_plus_tanh", wide, per_token=width),
        ]
        gelu_out = wide
    else:
        out.append(Saved("mlp/act_input", c, per_token=width))
        gelu_out = c
    if train["down"]:
        down_in = c if ctx.autocast or gelu_out == c else gelu_out
        out.append(Saved("mlp/down_input", down_in, per_token=width))
    return out


def _moe(
    spec: ModelSpec, ctx: ActivationContext, in_bytes: int, param_bytes: int, trainable: bool
) -> list[Saved]:
    """A routed MoE block as transformers 5.23 runs it (``integrations/moe.py``, grouped_mm).

    The router (a linear, softmax in fp32, top-k, weights divided by their sum), then the
    tokens sorted by expert (int64 index tensors), ``grouped_mm`` over the stacked experts in
    the weights' dtype (its autograd saves its input; the gate_up output is kept whole by the
    gate view), the gated product, the down projection's input and output, and the routing
    weights it is scaled by. Tokens are spread evenly over experts (top-k of E), so the sizes are
    per token times k.
    """
    moe = spec.moe
    if moe is None:
        return []
    x, hdim, w = param_bytes, spec.hidden_size, moe.expert_intermediate_size
    k, e = moe.top_k, moe.n_experts
    out = _linear_inputs(ctx, "router", hdim, in_bytes, [trainable])
    out.append(Saved("moe/router_softmax_fp32", 4, per_token=e))
    out.append(Saved("moe/topk_indices", 8, per_token=k))
    out.append(Saved("moe/topk_weights_fp32", 4, per_token=k))
    out.append(Saved("moe/topk_sum_fp32", 4, per_token=1))
    out.append(Saved("moe/sort_indices", 8, per_token=3 * k))
    # torch's grouped_mm (bf16 weights) saves its input only for the weight's gradient; the
    # fp32 fallback custom op saves it always.
    saves_input = trainable or x != 2
    if saves_input:
        out.append(Saved("moe/expert_inputs", x, per_token=k * hdim))
    out.append(Saved("moe/expert_gate_up", x, per_token=k * 2 * w))
    out.append(Saved("moe/expert_act", x, per_token=k * w))
    if saves_input:
        out.append(Saved("moe/expert_down_input", x, per_token=k * w))
    out.append(Saved("moe/expert_down_out", x, per_token=k * hdim))
    out.append(Saved("moe/routing_weights", 4, per_token=k))
    out.append(Saved("moe/offsets", 8, fixed=1))
    if moe.n_shared_experts and moe.shared_intermediate_size:
        shared = {"gate": True, "up": True, "down": True, "gate_up": True}
        out += [
            Saved(f"shared_{s.key}", s.elem_bytes, per_token=s.per_token)
            for s in _mlp(spec, ctx, in_bytes, moe.shared_intermediate_size, shared)
        ]
    if moe.shared_expert_gate:
        # sigmoid(shared_expert_gate(x)) * shared_output: the gate's input, its sigmoid, and
        # the shared expert's output (Qwen2-MoE, Qwen3-Next)
        c = ctx.compute_bytes
        out += _linear_inputs(ctx, "shared_expert_gate", hdim, in_bytes, [trainable])
        out.append(Saved("moe/shared_gate_sigmoid", c, per_token=1))
        out.append(Saved("moe/shared_out", c, per_token=hdim))
    return out


# Layers -------------------------------------------------------------------------------------------
def layer_saved(
    spec: ModelSpec,
    ctx: ActivationContext,
    index: int,
    *,
    input_grad: bool = True,
    trainable: bool = True,
    lora_modules: frozenset[str] = frozenset(),
    lora_rank: int = 0,
) -> tuple[Saved, ...]:
    """Tensors one decoder layer saves (the layer input included, as its first norm's input).

    ``input_grad``: the layer input needs a gradient; ``trainable``: the layer's own weights do;
    ``lora_modules``: module names that carry LoRA adapters (frozen base, fp32 adapters).
    """
    if ctx.checkpointing is Checkpointing.FULL:
        kept = [Saved("checkpoint/layer_input", ctx.stream_bytes, per_token=spec.hidden_size)]
        fallback = ctx.autocast or ctx.compute_bytes == 4  # fp32 experts: the fallback op
        moe = spec.moe
        grouped = moe is not None and not moe.all_experts_per_token
        if moe is not None and grouped and spec.is_moe_layer(index) and fallback:
            # transformers' grouped_mm fallback keeps its int32 offsets as a ctx attribute,
            # which checkpointing does not drop (integrations/moe.py)
            kept.append(Saved("checkpoint/moe_offsets", 4, fixed=moe.n_experts))
        return tuple(kept)
    return tuple(_layer_full(spec, ctx, index, input_grad, trainable, lora_modules, lora_rank))


def _layer_full(
    spec: ModelSpec,
    ctx: ActivationContext,
    index: int,
    input_grad: bool,
    trainable: bool,
    lora_modules: frozenset[str],
    lora_rank: int = 0,
) -> list[Saved]:
    r, c, hdim = ctx.stream_bytes, ctx.compute_bytes, spec.hidden_size
    names = ("q", "k", "v", "qkv", "gate", "up", "gate_up", "down")
    train = dict.fromkeys(names, trainable)
    any_grad = input_grad or trainable or bool(lora_modules)
    if not any_grad:
        return []  # a frozen layer whose input needs no gradient saves nothing
    out: list[Saved] = []
    out += _group("input_layernorm", _norm(spec, ctx, hdim, r, input_grad, trainable))
    norm_out = _norm_out_bytes(spec, ctx, r)
    kernel = ctx.kernel(spec.slides(index))
    attn = _projections(spec, ctx, norm_out, train, input_grad)
    attn += _qk_norms(spec, ctx, trainable, index)
    if spec.attn_temperature_tuning and not spec.uses_rotary(index):
        # Llama 4's NoPE layers: q * attn_scales (1, S, 1, 1) fp32 saves the scales
        attn.append(Saved("attn_scales_fp32", 4, per_position=1))
    if any_grad:
        # in fp32, LoRA on o_proj saves the attention output itself (the lora block below
        # counts it as that output)
        fp32_lora_o = "o_proj" in lora_modules and c == 4 and not ctx.autocast
        attn += _attention_core(spec, ctx, kernel, o_trains=trainable or fp32_lora_o)
        if spec.attention_output_gate:
            # Qwen3-Next: attn * sigmoid(gate) saves the sigmoid and the attention output;
            # o_proj saves the product
            attn.append(Saved("attention/gate_sigmoid", c, per_token=spec.q_dim))
            attn.append(Saved("attention/gated_out", c, per_token=spec.q_dim))
        attn += _dropout(ctx, "resid_dropout", ctx.hidden_dropout, hdim, c)
    out += _group("self_attn", attn)
    if spec.n_layer_norms >= 4:  # Gemma 2/3: a norm on the half attention output
        out += _group("post_attention_layernorm", _norm(spec, ctx, hdim, c, True, trainable))
    mid = "post_attention_layernorm" if spec.n_layer_norms < 4 else "pre_feedforward_layernorm"
    if not spec.parallel_residual:
        out += _group(mid, _norm(spec, ctx, hdim, r, True, trainable))
    mlp_in = _norm_out_bytes(spec, ctx, r)
    if spec.is_moe_layer(index) and spec.moe is not None and spec.moe.all_experts_per_token:
        from memplan.formulas.activations_2025 import llama4_moe_saved

        mlp = llama4_moe_saved(spec, ctx, mlp_in, trainable)
    elif spec.is_moe_layer(index) and spec.moe is not None and spec.moe.expert_bias:
        from memplan.formulas.activations_2025 import gpt_oss_moe_saved

        x = 4 if ctx.autocast else ctx.compute_bytes
        mlp = gpt_oss_moe_saved(spec, ctx, mlp_in, x, trainable)
    elif spec.is_moe_layer(index):
        mlp = _moe(spec, ctx, mlp_in, 4 if ctx.autocast else ctx.compute_bytes, trainable)
    else:
        mlp = _mlp(spec, ctx, mlp_in, spec.intermediate_size, train)
    mlp += _dropout(ctx, "resid_dropout", ctx.hidden_dropout, hdim, c)
    out += _group("mlp", mlp)
    if spec.n_layer_norms >= 4:
        out += _group("post_feedforward_layernorm", _norm(spec, ctx, hdim, c, True, trainable))
    # peft (fp32 adapters): lora_A saves its input, lora_B lora_A's output; under autocast both
    # in half (autocast casts x back down), otherwise in fp32 (peft casts x to the adapter dtype).
    # In fp32 there is no cast: lora_A saves x itself, shared by the adapters that read the same
    # tensor (q/k/v; gate/up), and o_proj's input is the attention output saved already.
    width = c if ctx.autocast else 4
    shared: set[str] = set()
    for module in sorted(lora_modules):
        if c == 4 and not ctx.autocast:
            source = _LORA_SOURCES.get(module, module)
            if source in shared or source == "attention_out":
                source = "skip"
            shared.add(source)
        else:
            source = module
        if source != "skip":
            out.append(
                Saved(f"lora/{module}_A_input", width, per_token=_lora_in_width(spec, module))
            )
        out.append(Saved(f"lora/{module}_B_input", width, per_token=lora_rank))
    return out


def _group(prefix: str, items: list[Saved]) -> list[Saved]:
    """``items`` with their keys under ``prefix/`` (one level: ``mlp/gate_out`` stays)."""
    return [_prefixed(prefix, s) for s in items]


def _prefixed(prefix: str, item: Saved) -> Saved:
    # positional: dataclasses.replace costs seconds over a 2048-layer model's tensors
    return Saved(
        f"{prefix}/{item.key.split('/')[-1]}", item.elem_bytes, item.per_token, item.per_score,
        item.per_row, item.align, item.per_position, item.fixed, item.category,
        item.whole_buffer_at_batch_1, item.score_align,
    )  # fmt: skip


_LORA_SOURCES = {
    "q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
    "c_attn": "attn_in", "o_proj": "attention_out", "gate_proj": "mlp_in", "up_proj": "mlp_in",
    "gate_up_proj": "mlp_in", "c_fc": "mlp_in",
}  # fmt: skip


def _lora_in_width(spec: ModelSpec, module: str) -> int:
    if module in ("down_proj",):
        return spec.intermediate_size
    if module in ("o_proj",):
        return spec.q_dim
    return spec.hidden_size


# Model level --------------------------------------------------------------------------------------
def model_saved(spec: ModelSpec, ctx: ActivationContext, *, embed_grad: bool) -> tuple[Saved, ...]:
    """Saved outside the layers before them: rotary cos/sin, embedding dropout, position ids."""
    out: list[Saved] = []
    if spec.position is PositionKind.ROTARY:
        d = spec.rotary_dim or (spec.mla.qk_rope_head_dim if spec.mla else spec.head_dim)
        d = d // 2 if spec.rotary_table_halved else d
        cos_bytes = ctx.stream_bytes
        if spec.rotary_complex:  # Llama 4: one complex64 freqs_cis (S, head_dim / 2)
            out.append(Saved("rotary/freqs_cis", 8, per_position=d // 2))
        for table in range(0 if spec.rotary_complex else spec.n_rotary_tables):
            suffix = f"_{table}" if table else ""
            out.append(Saved(f"rotary/cos{suffix}", cos_bytes, per_position=d))
            out.append(Saved(f"rotary/sin{suffix}", cos_bytes, per_position=d))
    if ctx.checkpointing is Checkpointing.FULL and spec.position is PositionKind.ROTARY:
        # non-reentrant checkpointing keeps every layer call's inputs: position_ids too
        out.append(Saved("checkpoint/position_ids", 8, per_position=1))
    if ctx.checkpointing is Checkpointing.FULL:
        out += _checkpointed_eager_masks(spec, ctx)
    if spec.position is PositionKind.LEARNED and embed_grad:
        out.append(Saved("embeddings/position_ids", 8, per_position=1))
    out += _dropout(
        ctx, "embeddings/dropout", ctx.embedding_dropout, spec.hidden_size, ctx.stream_bytes
    )
    return tuple(out)


def _checkpointed_eager_masks(spec: ModelSpec, ctx: ActivationContext) -> list[Saved]:
    """The additive (B, 1, S, S) masks eager attention gets (``masking_utils.eager_mask``, in
    the embeddings' dtype), one per mask kind the layers use (full, sliding): layer inputs
    that non-reentrant checkpointing keeps until the backward."""
    out = []
    kinds = {spec.slides(i) for i in range(spec.n_layers)}
    for sliding in sorted(kinds):
        if ctx.kernel(sliding).backend == "eager":
            key = "checkpoint/attention_mask" + ("_sliding" if sliding else "")
            out.append(Saved(key, ctx.stream_bytes, per_score=1))
    return out


def head_saved(
    spec: ModelSpec, ctx: ActivationContext, *, head_trainable: bool
) -> tuple[Saved, ...]:
    """Final norm, lm_head input, the loss's fp32 log-softmax and its int64 targets."""
    r, c, hdim, v = ctx.stream_bytes, ctx.compute_bytes, spec.hidden_size, spec.vocab_size
    out: list[Saved] = []
    if spec.final_norm:
        out += _group("final_norm", _norm(spec, ctx, hdim, r, True, head_trainable))
    norm_out = _norm_out_bytes(spec, ctx, r) if spec.final_norm else r
    if head_trainable:
        out += _group("lm_head", _linear_inputs(ctx, "lm_head", hdim, norm_out, [True]))
    elif ctx.autocast:
        # frozen fp32 head: its half copy is not cached but saved for the input gradient
        out.append(Saved("lm_head/weight_half_copy", c, fixed=v * hdim))
    if spec.final_logit_softcapping is not None:
        out.append(Saved("loss/softcap_tanh", c, per_token=v))
    out.append(Saved("loss/log_softmax_fp32", 4, per_token=v))
    out.append(Saved("loss/shift_labels", 8, per_token=1, whole_buffer_at_batch_1=True))
    out.append(Saved("loss/total_weight", 4, fixed=1))
    return tuple(out)
