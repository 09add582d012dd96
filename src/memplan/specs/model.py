"""``ModelSpec``: the structure of a decoder-only transformer, enough to count it exactly.

A spec is parsed from a Hugging Face ``config.json`` (``memplan.specs.hf``) or given by hand.
Every field is what the modeling code in transformers builds; where a family deviates from the
common Llama layout, a field says how (fused QKV, parallel residual, extra norms, MoE, MLA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from memplan.errors import ConfigError
from memplan.specs.vision import VisionSpec

__all__ = [
    "MAX_LAYERS",
    "MAX_SIZE",
    "AttentionType",
    "LinearAttentionSpec",
    "MlaSpec",
    "MlpKind",
    "ModelSpec",
    "MoeSpec",
    "NormKind",
    "PositionKind",
    "QkNorm",
]


MAX_SIZE = 2**40
"""Largest width, vocabulary or position count memplan accepts (about 1.1e12). Real models stay
below 2**20 for widths and 2**24 for vocabularies; anything beyond is a typo, and would
overflow float arithmetic long before it meant anything."""
MAX_LAYERS = 2048
"""Most decoder layers memplan accepts. The deepest catalog model has 126 (Llama 3.1 405B); the
per-layer breakdowns stay under a second up to this depth."""


def check_size(owner: str, name: str, value: Any, *, minimum: int = 1) -> None:
    """Raise ConfigError unless ``value`` is an int in [minimum, MAX_SIZE] (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        low = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{owner}: {name} must be {low}, got {value!r}")
    if value > MAX_SIZE:
        shown = f"{value:,}" if value < 10**30 else f"a {len(str(value))}-digit number"
        raise ConfigError(
            f"{owner}: {name} = {shown} is beyond any real model (at most 2**40); check it"
        )


def check_probability(owner: str, name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite probability in [0, 1)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")


class MlpKind(StrEnum):
    PLAIN = "plain"  # up -> act -> down (GPT-2, NeoX, Falcon, StarCoder2): 2 matrices
    GATED = "gated"  # act(gate) * up -> down (SwiGLU, GeGLU): 3 matrices


class NormKind(StrEnum):
    RMSNORM = "rmsnorm"  # weight only
    LAYERNORM = "layernorm"  # weight, and bias where ``norm_bias``
    LAYERNORM_NO_AFFINE = "layernorm_no_affine"  # OLMo (v1): no parameters at all


class PositionKind(StrEnum):
    ROTARY = "rotary"
    LEARNED = "learned"  # a (max_positions, hidden) embedding table: GPT-2, StarCoder (bigcode)
    ALIBI = "alibi"  # Falcon-RW style, no parameters
    NONE = "none"


class QkNorm(StrEnum):
    NONE = "none"
    PER_HEAD = "per_head"  # RMSNorm(head_dim) shared across heads: Qwen3, Gemma 3
    FULL = "full"  # RMSNorm(n_heads * head_dim) and RMSNorm(n_kv_heads * head_dim): OLMo 2
    L2 = "l2"  # x * rsqrt(mean(x^2) + eps), no weight, on the rotary layers only: Llama 4


class AttentionType(StrEnum):
    FULL = "full_attention"
    SLIDING = "sliding_attention"
    CHUNKED = "chunked_attention"
    """Llama 4: attention within fixed chunks of ``attention_chunk_size`` tokens (its rotary
    layers; ``create_chunked_causal_mask``)."""
    LINEAR = "linear_attention"
    """Qwen3-Next: a Gated DeltaNet layer instead of softmax attention (no KV cache; a
    recurrent state of fixed size)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MoeSpec:
    """Mixture of experts, as Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek build it."""

    n_experts: int
    """Routed experts per MoE layer."""
    top_k: int
    """Routed experts each token goes through."""
    expert_intermediate_size: int
    """MLP width of one routed expert."""
    n_shared_experts: int = 0
    """DeepSeek: shared experts, fused into one MLP of width n_shared * expert width."""
    shared_intermediate_size: int = 0
    """Width of the (fused) shared-expert MLP; 0 when there is none."""
    shared_expert_gate: bool = False
    """Qwen2-MoE: a Linear(hidden, 1) that gates the shared expert."""
    router_bias: bool = False
    """The router has a per-expert bias (DeepSeek-V3's e_score_correction_bias)."""
    router_bias_param: bool = False
    """The router Linear has a bias parameter (gpt-oss ``GptOssTopKRouter.bias``)."""
    expert_bias: bool = False
    """Every expert's projections have biases (gpt-oss ``gate_up_proj_bias``, ``down_proj_bias``)."""
    all_experts_per_token: bool = False
    """Every token goes through every expert, scaled by its (sigmoid) router score, zero for
    the experts it was not routed to (Llama 4 in transformers 5.23, ``Llama4TextMoe``: a dense
    ``bmm`` over all experts): the compute and the activations of ``n_experts``, not ``top_k``."""
    first_dense_layers: int = 0
    """DeepSeek ``first_k_dense_replace``: the first k layers use the dense MLP."""
    layer_freq: int = 1
    """Every ``layer_freq``-th layer is MoE (Qwen2-MoE ``decoder_sparse_step``)."""
    dense_layers: tuple[int, ...] = ()
    """Explicit dense layers (Qwen ``mlp_only_layers``)."""

    def __post_init__(self) -> None:
        check_size("MoE", "the number of experts", self.n_experts)
        check_size("MoE", "the expert width", self.expert_intermediate_size)
        check_size("MoE", "num_experts_per_tok", self.top_k)
        if self.top_k > self.n_experts:
            raise ConfigError(
                f"MoE: num_experts_per_tok ({self.top_k}) exceeds the number of experts "
                f"({self.n_experts}); a token cannot go through more experts than there are"
            )
        for name in ("n_shared_experts", "shared_intermediate_size", "first_dense_layers"):
            check_size("MoE", name, getattr(self, name), minimum=0)
        check_size("MoE", "layer_freq (decoder_sparse_step)", self.layer_freq)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.dense_layers):
            raise ConfigError(
                f"MoE: mlp_only_layers must be a list of layer indices, got {self.dense_layers!r}"
            )

    def is_moe_layer(self, index: int) -> bool:
        if index < self.first_dense_layers or index in self.dense_layers:
            return False
        return (index + 1) % self.layer_freq == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearAttentionSpec:
    """Gated DeltaNet linear attention (Yang, Kautz and Hatamizadeh 2024, "Gated Delta
    Networks"), as transformers builds it for Qwen3-Next (``Qwen3NextGatedDeltaNet``)."""

    n_key_heads: int
    n_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int
    """Width of the causal depthwise convolution over q, k and v."""

    def __post_init__(self) -> None:
        for name in ("n_key_heads", "n_value_heads", "key_head_dim", "value_head_dim"):
            check_size("linear attention", name, getattr(self, name))
        check_size("linear attention", "conv_kernel", self.conv_kernel)
        if self.n_value_heads % self.n_key_heads:
            raise ConfigError(
                f"linear attention: linear_num_key_heads ({self.n_key_heads}) must divide "
                f"linear_num_value_heads ({self.n_value_heads})"
            )

    @property
    def key_dim(self) -> int:
        return self.n_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.n_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: q, k and v side by side."""
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True, slots=True, kw_only=True)
class MlaSpec:
    """DeepSeek multi-head latent attention (DeepSeek-V2 paper, section 2.1)."""

    q_lora_rank: int | None
    """Rank of the query down-projection; None: a plain q_proj (DeepSeek-V2-Lite)."""
    kv_lora_rank: int
    """Width of the compressed KV latent (what the MLA cache stores per token)."""
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer LM, as its Hugging Face modeling code builds it."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    """Per-head width of q and k (and v unless MLA says otherwise)."""
    intermediate_size: int
    """Dense MLP width (the hidden width of the non-MoE MLP)."""
    mlp_kind: MlpKind = MlpKind.GATED
    activation: str = "silu"
    norm_kind: NormKind = NormKind.RMSNORM
    norm_bias: bool = False
    n_layer_norms: int = 2
    """Norms per decoder layer over the hidden size (Gemma 2/3: 4; Falcon-7B: 1)."""
    qk_norm: QkNorm = QkNorm.NONE
    final_norm: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    fused_qkv: bool = False
    """One projection makes q, k and v (GPT-2 c_attn, NeoX, Falcon, Phi-3)."""
    fused_gate_up: bool = False
    """One projection makes gate and up (Phi-3 gate_up_proj)."""
    parallel_residual: bool = False
    """Attention and MLP read the same input (NeoX, Falcon, GPT-J)."""
    tie_word_embeddings: bool = False
    position: PositionKind = PositionKind.ROTARY
    max_position_embeddings: int = 2048
    rotary_dim: int | None = None
    """Dimensions rotated per head (NeoX partial rotary); None: all of head_dim."""
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    layer_types: tuple[AttentionType, ...] = ()
    """Attention type of each layer, where the config gives them. Empty: the config names no
    layer types; then a model-wide ``sliding_window`` is read differently by implementations
    (transformers slides every layer, vLLM none: see formulas/kv_cache.py and serving.py), and
    ``attention_type`` answers FULL."""
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    embedding_multiplier: float | None = None
    """Gemma scales embeddings by sqrt(hidden)."""
    rotary_per_layer_type: bool = False
    """One rotary table (inv_freq buffers, cos/sin) per distinct layer type (Gemma 3: local
    and global bases)."""
    rotary_concat: bool = False
    """The rotary embedding concatenates the rotated and the passed-through parts
    (``torch.cat``), so q comes out (B, H, S, D) contiguous (Phi-3, GPT-NeoX)."""
    sdpa_own_call: bool = False
    """The family calls ``F.scaled_dot_product_attention`` itself, with a mask it always
    materialises (``create_causal_mask(allow_is_causal_skip=False)``) and its K/V heads as they
    are: no ``enable_gqa``, no ``repeat_kv`` (Falcon, ``modeling_falcon.py``)."""
    conv1d_names: bool = False
    """GPT-2's Conv1D module names: ``c_attn``, ``c_proj``, ``c_fc`` (LoRA targets, tensor
    names)."""
    causal_mask_buffer: bool = False
    """A registered bool (P, P) causal-mask buffer (GPT-BigCode)."""
    softmax_in_input_dtype: bool = False
    """Eager attention calls softmax without ``dtype=torch.float32`` (GPT-2)."""
    norm_one_plus_weight: bool = False
    """RMSNorm scales by ``1 + weight`` in fp32 and saves the fp32 normalised tensor (Gemma)."""
    norm_weight_fp32: bool = False
    """RMSNorm multiplies by the weight before casting back, so the weight's gradient reads a
    fp32 normed tensor (OLMo 2, ``Olmo2RMSNorm.forward``)."""
    sdpa_unsupported: bool = False
    """transformers gives the family no sdpa attention (``_supports_sdpa = False``: gpt-oss,
    whose sinks sdpa cannot take): ``--attention sdpa`` runs eager attention."""
    loss_after_text_model: bool = False
    """Llama 4's multimodal model computes the loss after its text model has returned, so the
    final norm's output is freed by then (``Llama4ForConditionalGeneration.forward``)."""
    rotary_complex: bool = False
    """Llama 4: the rotary table is one complex64 tensor of head_dim / 2 frequencies
    (``freqs_cis``), and q, k are rotated as complex numbers."""
    rotary_table_halved: bool = False
    """The rotary cos/sin tables hold head_dim / 2 frequencies, not duplicated (gpt-oss's
    ``_apply_rotary_emb`` rotates the two halves with the same table)."""
    attention_sinks: bool = False
    """A learned sink logit per head joins every softmax (gpt-oss ``sinks``, (n_heads,) per
    layer): the probabilities of the real keys sum to less than one."""
    attention_output_gate: bool = False
    """q_proj also makes a per-channel gate, ``o_proj(attn * sigmoid(gate))`` (Qwen3-Next):
    q_proj is twice as wide."""
    attention_chunk_size: int | None = None
    """Llama 4: the ``chunked_attention`` layers attend within chunks of this many tokens."""
    nope_layers: tuple[int, ...] = ()
    """Layers without rotary position embedding (Llama 4's every fourth layer); with
    ``attn_temperature_tuning`` their queries are scaled by a per-position factor."""
    attn_temperature_tuning: bool = False
    """Llama 4: scale the NoPE layers' queries by log1p(floor((pos + 1) / floor_scale)) *
    attn_scale + 1 (Nakanishi 2025, arXiv:2501.19399)."""
    linear_attention: LinearAttentionSpec | None = None
    """Qwen3-Next: the dimensions of the ``linear_attention`` layers (Gated DeltaNet)."""
    vision: VisionSpec | None = None
    """A multimodal checkpoint's vision tower and projector (counted in the parameters; text
    inputs do not run them)."""
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    """Residual dropout (GPT-2 resid_pdrop, NeoX hidden_dropout)."""
    embedding_dropout: float = 0.0
    moe: MoeSpec | None = None
    mla: MlaSpec | None = None
    dtype: str = "float32"
    """The dtype the checkpoint is stored in (config ``torch_dtype``/``dtype``)."""
    source: str = "manual"
    """Where the spec came from: ``catalog``, a path, ``hub``, ``manual``."""
    hf_config: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    """The raw config.json the spec was parsed from (the trace engine builds from it)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim"):
            check_size(self.name, name, getattr(self, name))
        check_size(self.name, "intermediate_size", self.intermediate_size, minimum=0)
        check_size(self.name, "max_position_embeddings", self.max_position_embeddings)
        if self.n_layers > MAX_LAYERS:
            raise ConfigError(
                f"{self.name}: {self.n_layers:,} layers is beyond any real model (memplan "
                f"accepts at most {MAX_LAYERS:,}); check num_hidden_layers"
            )
        if self.sliding_window is not None:
            check_size(self.name, "sliding_window", self.sliding_window)
        if self.rotary_dim is not None:
            check_size(self.name, "rotary_dim", self.rotary_dim, minimum=0)
        for name in ("attention_dropout", "hidden_dropout", "embedding_dropout"):
            check_probability(self.name, name, getattr(self, name))
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{self.name}: the number of KV heads ({self.n_kv_heads}) must divide the number "
                f"of attention heads ({self.n_heads})"
            )
        if self.attention_chunk_size is not None:
            check_size(self.name, "attention_chunk_size", self.attention_chunk_size)
        if any(not 0 <= i < self.n_layers for i in self.nope_layers):
            raise ConfigError(f"{self.name}: no_rope_layers names a layer beyond {self.n_layers}")
        if self.layer_types and len(self.layer_types) != self.n_layers:
            raise ConfigError(
                f"{self.name}: layer_types has {len(self.layer_types)} entries for "
                f"{self.n_layers} layers"
            )

    # Derived sizes --------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of all query heads together."""
        if self.mla is not None:
            return self.n_heads * self.mla.qk_head_dim
        return self.n_heads * self.head_dim

    @property
    def q_proj_width(self) -> int:
        """Output width of q_proj: the queries, and as many gate channels where the attention
        output is gated (Qwen3-Next)."""
        return self.q_dim * (2 if self.attention_output_gate else 1)

    @property
    def n_attention_layers(self) -> int:
        """Layers with softmax attention (all but the linear-attention layers)."""
        return sum(1 for i in range(self.n_layers) if not self.is_linear_attention(i))

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together (not MLA)."""
        return self.n_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def is_moe_layer(self, index: int) -> bool:
        return self.moe is not None and self.moe.is_moe_layer(index)

    def uses_rotary(self, index: int) -> bool:
        """Layer ``index`` rotates q and k (not a Llama 4 NoPE layer, not linear attention)."""
        if self.position is not PositionKind.ROTARY or index in self.nope_layers:
            return False
        return self.attention_type(index) is not AttentionType.LINEAR

    def is_linear_attention(self, index: int) -> bool:
        return self.attention_type(index) is AttentionType.LINEAR

    def attention_type(self, index: int) -> AttentionType:
        if not self.layer_types:
            return AttentionType.FULL
        return self.layer_types[index]

    @property
    def n_rotary_tables(self) -> int:
        """Rotary embeddings the model computes per forward (one per layer type for Gemma 3)."""
        if self.rotary_per_layer_type and self.layer_types:
            return len(set(self.layer_types))
        return 1

    @property
    def local_attention_size(self) -> int | None:
        """The window of the layers with a local mask: ``sliding_window``, or Llama 4's
        ``attention_chunk_size`` (its chunked layers: transformers masks them with
        ``local_size=attention_chunk_size`` and caches them in a
        ``DynamicSlidingWindowLayer`` of that size, ``cache_utils.py``)."""
        if self.sliding_window is not None:
            return self.sliding_window
        if AttentionType.CHUNKED in self.layer_types:
            return self.attention_chunk_size
        return None

    def slides(self, index: int) -> bool:
        """transformers gives layer ``index`` a local mask of ``local_attention_size``: its
        ``sliding_attention`` (or Llama 4's ``chunked_attention``) layers, or every layer of a
        family without ``layer_types`` whose ``sliding_window`` is set (Mistral, Mixtral,
        Phi-3, Starcoder2: ``create_sliding_window_causal_mask``)."""
        if self.local_attention_size is None:
            return False
        if self.layer_types:
            return self.layer_types[index] in (AttentionType.SLIDING, AttentionType.CHUNKED)
        return True
