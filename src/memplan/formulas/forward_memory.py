"""Live memory of one inference forward, op by op, as transformers 5.23 + torch 2.13 run it on CUDA.

A forward of ``generate`` (the prefill over the prompt, or one decode step) is replayed as the
sequence of tensors its ops allocate and free, in program order, under ``torch.no_grad``: each
op's output is a new storage (views are free), and a storage is freed when the last Python
reference to it goes (an op's inputs, a reassigned variable, a returned frame's locals). The
replay's highest level is the forward's peak and the live set there is its breakdown:
``temporaries`` by tensor, ``kv_cache`` (the cache layers' tensors at that moment) and
``inputs`` (the prompt's token ids). The trace engine records the same forward from the real
model (``memplan trace --infer``); tests hold the two equal.

What a forward keeps alive besides the op in flight, and why (``modeling_llama.py``):

* ``inputs_embeds``, the rotary ``cos`` and ``sin`` (batch x q x rotary width, in the
  activation dtype): locals of the model's forward until it returns;
* the decoder layer's input: the model's ``hidden_states`` until the layer returns (the
  first layer's input is ``inputs_embeds`` itself);
* the residual after attention, the norm output feeding the MLP, the MLP's intermediates;
* the KV cache: a ``DynamicCache`` grows each layer by ``torch.cat`` (the prefill copies the
  new keys and values; a decode step holds a layer's old and new tensors for a moment); a
  ``StaticCache`` allocates each layer's full-length tensors at its first update.

The attention kernel is the one :func:`memplan.formulas.activations.attention_backend` picks
(PyTorch's ``select_sdp_backend``), passed in as ``kernel``; each kernel's outputs follow its
meta function in torch 2.13 (``_meta_registrations.py``). Sizes are rounded per allocation
(``round_to``: 512 B, the CUDA caching allocator's block, or 1 for CPU semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.formulas.kv_cache import layer_window
from memplan.specs.model import MlpKind, ModelSpec, NormKind

__all__ = ["ForwardShape", "Replay", "forward_replay", "kv_row_bytes"]

_INT64 = 8
_FP32 = 4


@dataclass(slots=True)
class Replay:
    """The allocator's live set, replayed: ``new`` and ``free`` in program order.

    ``peak`` is the highest level reached; :meth:`at_peak` rebuilds what was live then from the
    event log (name -> (bytes, category)), so that the replay itself stays linear in the
    number of ops."""

    round_to: int = 512
    level: int = 0
    peak: int = 0
    live: dict[str, tuple[int, str]] = field(default_factory=dict)
    log: list[tuple[str, str, int, str]] = field(default_factory=list)
    """(op, name, bytes, category) with op ``new``, ``free`` or ``rename`` (bytes: 0; category:
    the new name)."""
    peak_index: int = 0
    """Events in the log when the peak was reached."""

    def new(self, name: str, n_bytes: int, category: str = "temporaries") -> None:
        """Allocate ``name`` (``n_bytes`` rounded up to the allocator's block; 0 allocates
        nothing)."""
        if name in self.live:
            raise ValueError(f"{name} is already live")
        size = -(-n_bytes // self.round_to) * self.round_to if n_bytes > 0 else 0
        self.live[name] = (size, category)
        self.log.append(("new", name, size, category))
        self.level += size
        if self.level > self.peak:
            self.peak = self.level
            self.peak_index = len(self.log)

    def free(self, *names: str) -> None:
        for name in names:
            self.level -= self.live.pop(name)[0]
            self.log.append(("free", name, 0, ""))

    def rename(self, old: str, new: str) -> None:
        """The same storage under another name (a variable handed on)."""
        self.live[new] = self.live.pop(old)
        self.log.append(("rename", old, 0, new))

    def at_peak(self) -> dict[str, tuple[int, str]]:
        """What was live at the peak: name -> (bytes, category)."""
        live: dict[str, tuple[int, str]] = {}
        for op, name, size, extra in self.log[: self.peak_index]:
            if op == "new":
                live[name] = (size, extra)
            elif op == "free":
                del live[name]
            else:
                live[extra] = live.pop(name)
        return live

    def by_category(self) -> dict[str, int]:
        """Bytes live at the peak per category."""
        totals: dict[str, int] = {}
        for size, category in self.at_peak().values():
            totals[category] = totals.get(category, 0) + size
        return totals

    def reset_peak(self) -> None:
        """Start measuring the peak from the current level (after pre-filling the cache)."""
        self.peak, self.peak_index = self.level, len(self.log)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardShape:
    """One forward of ``generate``: the prefill (``past == 0``) or a decode step."""

    batch: int
    q_len: int
    """New tokens in this forward (the prompt, or 1)."""
    past: int
    """Tokens already in the cache before this forward."""
    act: int
    """Bytes of an activation element (the compute dtype)."""
    kv_bytes: int
    """Bytes of a cached element."""
    kernel: str
    """Attention kernel: ``flash``, ``mem-efficient``, ``cudnn``, ``math`` or ``eager``."""
    cache: str = "dynamic"
    max_cache_len: int = 0
    """StaticCache length (``cache == "static"``)."""
    logits_all: bool = False
    """The lm_head over every position (``--logits all`` in the prefill), else the last."""
    tp_degree: int = 1
    kv_heads: int | None = None
    """KV heads per rank (None: the model's)."""

    @property
    def tokens(self) -> int:
        return self.batch * self.q_len


def forward_replay(spec: ModelSpec, shape: ForwardShape, replay: Replay) -> Replay:
    """Replay one forward on ``replay`` (which holds the cache of ``shape.past`` tokens as
    ``kv/<layer>/k`` and ``kv/<layer>/v`` when ``past > 0``); returns it.

    Layers of one kind (dense or MoE, full or sliding attention) run the same ops on the same
    shapes, and each leaves only its cache's growth behind, so the level a layer starts from
    never falls from one layer to the next: the highest point of a kind is in its last layer.
    Layer 0 (whose input is ``inputs_embeds`` itself) and the last layer of each kind are
    replayed op by op; the others only grow their cache."""
    _prologue(spec, shape, replay)
    replayed = {0} | set(_last_layer_of_each_kind(spec).values())
    stream = "inputs_embeds"
    for index in range(spec.n_layers):
        output = f"layer_output/{index}"
        if index in replayed:
            _decoder_layer(spec, shape, replay, index, stream, output)
            if stream != "inputs_embeds":
                replay.free(stream)
        else:
            _cache_growth(spec, shape, replay, index)
            replay.rename(stream, output)
        stream = output
    _epilogue(spec, shape, replay, stream)
    return replay


def _last_layer_of_each_kind(spec: ModelSpec) -> dict[tuple[bool, int | None], int]:
    kinds: dict[tuple[bool, int | None], int] = {}
    for index in range(spec.n_layers):
        kinds[(spec.is_moe_layer(index), layer_window(spec, index))] = index
    return kinds


# Prologue and epilogue -------------------------------------------------------------------------
def _prologue(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Token ids, ``cache_position``, the embeddings and the rotary tables (model forward)."""
    t = shape.tokens
    r.new("input_ids", t * _INT64, "inputs" if shape.past == 0 else "temporaries")
    r.new("cache_position", shape.q_len * _INT64)
    r.new("inputs_embeds", t * spec.hidden_size * shape.act)
    if _builds_sliding_mask(spec):
        _sliding_mask(shape, r)
    if spec.mla is not None:
        _complex_rotary_table(spec, shape, r)
    else:
        _rotary_tables(spec, shape, r)


def _builds_sliding_mask(spec: ModelSpec) -> bool:
    """``Qwen2MoeModel`` builds a sliding-window mask in every forward, used by no layer when
    ``use_sliding_window`` is false: its config then sets ``sliding_window = 0``, which no
    key count is below, so ``masking_utils`` cannot skip it (transformers 5.23)."""
    config = spec.hf_config or {}
    return spec.model_type == "qwen2_moe" and not config.get("use_sliding_window", False)


def _sliding_mask(shape: ForwardShape, r: Replay) -> None:
    """``create_sliding_window_causal_mask`` -> ``sdpa_mask``: index vectors over the batch,
    the heads, the queries and the keys, then the (1, 1, q, keys) bool mask composed in steps
    (causal and sliding-window conditions); the last one stays until the forward returns."""
    q, keys = shape.q_len, shape.past + shape.q_len
    cells = q * keys
    r.new("mask/batch_index", shape.batch * _INT64)
    r.new("mask/head_index", _INT64)
    r.new("mask/q_arange", q * _INT64)
    r.new("mask/q_index", q * _INT64)
    r.free("mask/q_arange")
    r.new("mask/kv_arange", keys * _INT64)
    r.new("mask/kv_index", keys * _INT64)
    r.free("mask/kv_arange")
    r.new("mask/flag", 1)
    r.new("mask/q_column", q * _INT64)
    r.new("mask/step1", cells)
    r.free("mask/q_column")
    r.new("mask/step2", cells)
    r.free("mask/step1", "mask/flag")
    r.new("mask/step3", cells)
    r.new("sliding_mask", cells)
    r.free("mask/step3", "mask/step2")
    r.free("mask/batch_index", "mask/head_index", "mask/q_index", "mask/kv_index")


def _rotary_tables(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``LlamaRotaryEmbedding.forward``: fp32 position x inv_freq, cat, cos and sin (times
    ``attention_scaling``), cast to the activation dtype (no copy in fp32)."""
    rot = spec.rotary_dim or spec.head_dim
    t = shape.tokens
    r.new("rope/positions_fp32", t * _FP32)
    r.new("rope/freqs", t * (rot // 2) * _FP32)
    r.free("rope/positions_fp32")
    r.new("rope/emb", t * rot * _FP32)
    for name in ("cos", "sin"):
        r.new(f"rope/{name}_raw", t * rot * _FP32)
        r.new(f"rope/{name}_fp32", t * rot * _FP32)
        r.free(f"rope/{name}_raw")
    if shape.act == _FP32:
        r.rename("rope/cos_fp32", "cos")
        r.rename("rope/sin_fp32", "sin")
        r.free("rope/freqs", "rope/emb")
        return
    r.new("cos", t * rot * shape.act)
    r.new("sin", t * rot * shape.act)
    r.free("rope/freqs", "rope/emb", "rope/cos_fp32", "rope/sin_fp32")


def _complex_rotary_table(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``DeepseekV2RotaryEmbedding.forward``: ``freqs_cis = polar(ones, freqs) x scaling``, a
    complex64 (B, q, rope / 2) table shared by all layers."""
    assert spec.mla is not None
    half = shape.tokens * (spec.mla.qk_rope_head_dim // 2)
    r.new("rope/positions_fp32", shape.tokens * _FP32)
    r.new("rope/freqs", half * _FP32)
    r.free("rope/positions_fp32")
    r.new("rope/ones", half * _FP32)
    r.new("rope/polar", half * 2 * _FP32)
    r.free("rope/ones")
    r.new("freqs_cis", half * 2 * _FP32)
    r.free("rope/polar", "rope/freqs")


def _epilogue(spec: ModelSpec, shape: ForwardShape, r: Replay, stream: str) -> None:
    """Final norm, the model forward's return (its locals freed), lm_head, generate's fp32
    copy of the last logits row, the argmax."""
    b, v = shape.batch, spec.vocab_size
    _norm(spec, shape, r, stream, "final_norm")
    if stream != "inputs_embeds":
        r.free(stream)
    tables = ("cos", "sin", "freqs_cis", "sliding_mask")
    r.free("inputs_embeds", *(name for name in tables if name in r.live))
    rows = shape.tokens if shape.logits_all else b
    r.new("logits", rows * v * shape.act)
    r.free("final_norm")
    r.new("next_token_logits_fp32", b * v * _FP32)
    r.free("logits")
    r.new("next_token", b * _INT64)
    r.free("cache_position", "next_token_logits_fp32", "input_ids")


# Norms -----------------------------------------------------------------------------------------
def _rms_norm(
    spec: ModelSpec, shape: ForwardShape, r: Replay, source: str, out: str, width: int
) -> None:
    """``LlamaRMSNorm``: ``x.to(fp32)`` (a copy in half precision), ``pow``, ``mean``,
    ``+ eps``, ``rsqrt``, ``x * rsqrt``, ``.to(dtype)``, ``weight * x``."""
    t, act = shape.tokens, shape.act
    full, row = t * width * _FP32, t * _FP32
    half = act != _FP32
    x32 = f"{out}/x_fp32" if half else source
    if half:
        r.new(x32, full)
    r.new(f"{out}/pow", full)
    r.new(f"{out}/variance", row)
    r.free(f"{out}/pow")
    r.new(f"{out}/plus_eps", row)
    r.new(f"{out}/rsqrt", row)
    r.free(f"{out}/plus_eps")
    r.new(f"{out}/normed", full)
    r.free(f"{out}/rsqrt")
    if half:
        r.free(x32)
        r.new(f"{out}/cast", t * width * act)
        r.new(out, t * width * act)
        r.free(f"{out}/cast")
    else:
        r.new(out, full)
    r.free(f"{out}/normed", f"{out}/variance")


def _norm(spec: ModelSpec, shape: ForwardShape, r: Replay, source: str, out: str) -> None:
    if spec.norm_kind is NormKind.RMSNORM:
        _rms_norm(spec, shape, r, source, out, spec.hidden_size)
    else:
        _layer_norm(spec, shape, r, out)


def _layer_norm(spec: ModelSpec, shape: ForwardShape, r: Replay, out: str) -> None:
    """``native_layer_norm``: the output plus fp32 mean and rstd (B, S, 1), freed at once."""
    t, act = shape.tokens, shape.act
    r.new(out, t * spec.hidden_size * act)
    r.new(f"{out}/mean", t * _FP32)
    r.new(f"{out}/rstd", t * _FP32)
    r.free(f"{out}/mean", f"{out}/rstd")


# Decoder layer ---------------------------------------------------------------------------------
def _decoder_layer(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, source: str, output: str
) -> None:
    """Pre-norm residual layer: ``h + attn(norm(h))``, then ``+ mlp(norm(.))``."""
    _norm(spec, shape, r, source, "attn_in")
    _attention(spec, shape, r, index)
    r.free("attn_in")
    width = spec.hidden_size * shape.act
    r.new("residual", shape.tokens * width)
    r.free("attn_out")
    _norm(spec, shape, r, "residual", "mlp_in")
    _mlp(spec, shape, r, index)
    r.free("mlp_in")
    r.new(output, shape.tokens * width)
    r.free("mlp_out", "residual")


# Attention -------------------------------------------------------------------------------------
def _heads(spec: ModelSpec, shape: ForwardShape) -> tuple[int, int]:
    """(query heads, KV heads) per rank."""
    kv = shape.kv_heads if shape.kv_heads is not None else spec.n_kv_heads
    return spec.n_heads // shape.tp_degree, kv


def _attention(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """q/k/v projections, rotary, the cache update, the kernel, o_proj (``LlamaAttention``)."""
    if spec.mla is not None:
        _mla_attention(spec, shape, r, index)
        return
    t, act, d = shape.tokens, shape.act, spec.head_dim
    heads, kv_heads = _heads(spec, shape)
    r.new("q_proj", t * heads * d * act)
    r.new("k_proj", t * kv_heads * d * act)
    r.new("v_proj", t * kv_heads * d * act)
    _apply_rotary(shape, r, "q_proj", "q", heads * d, spec.rotary_dim or d)
    _apply_rotary(shape, r, "k_proj", "k", kv_heads * d, spec.rotary_dim or d)
    r.free("q_proj", "k_proj")
    keys = _cache_update(spec, shape, r, index, "k", "v_proj")
    _attention_kernel(spec, shape, r, keys, kv_heads, d, d)
    r.new("attn_out", t * spec.hidden_size * act)
    r.free("attn_core", "q")


def _apply_rotary(
    shape: ForwardShape, r: Replay, source: str, out: str, width: int, rot: int
) -> None:
    """``q * cos + rotate_half(q) * sin``; ``rotate_half`` is ``cat(-x2, x1)``."""
    t, act = shape.tokens, shape.act
    full = t * width * act
    r.new(f"{out}/times_cos", full)
    r.new(f"{out}/neg_half", full // 2)
    r.new(f"{out}/rotated", full)
    r.free(f"{out}/neg_half")
    r.new(f"{out}/times_sin", full)
    r.free(f"{out}/rotated")
    r.new(out, full)
    r.free(f"{out}/times_cos", f"{out}/times_sin")
    del rot


def _mla_attention(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """``DeepseekV2Attention``: q (through the low-rank q_a/q_b where given), the compressed
    latent and its norm, complex rotary on fp32 copies, the cache update (latent and roped
    key), then ``expand_kv``: ``kv_b_proj`` over every cached token and a new key tensor."""
    mla = spec.mla
    assert mla is not None
    t, act = shape.tokens, shape.act
    heads, _ = _heads(spec, shape)
    q_width = t * heads * mla.qk_head_dim * act
    if mla.q_lora_rank is None:
        r.new("q_proj", q_width)
    else:
        r.new("q_a", t * mla.q_lora_rank * act)
        _rms_norm(spec, shape, r, "q_a", "q_a_norm", mla.q_lora_rank)
        r.free("q_a")
        r.new("q_proj", q_width)
        r.free("q_a_norm")
    rank, rope = mla.kv_lora_rank, mla.qk_rope_head_dim
    r.new("compressed_kv", t * (rank + rope) * act)
    _rms_norm(spec, shape, r, "compressed_kv", "k_latent", rank)
    _complex_rotary(shape, r, "q", heads * rope)
    _complex_rotary(shape, r, "k_rope", rope)
    for name in ("q", "k_rope"):
        if f"{name}/fp32" in r.live:
            r.free(f"{name}/fp32")
    keys = _cache_update(spec, shape, r, index, "k_latent", "k_rope")
    r.new("query_states", q_width)
    ctx_rows = shape.batch * keys
    r.new("kv_b", ctx_rows * heads * (mla.qk_nope_head_dim + mla.v_head_dim) * act)
    r.new("key_states", ctx_rows * heads * mla.qk_head_dim * act)
    _attention_kernel(spec, shape, r, keys, heads, mla.qk_head_dim, mla.v_head_dim)
    r.new("attn_out", t * spec.hidden_size * act)
    r.free("attn_core", "q_proj", "q", "compressed_kv", "query_states", "key_states", "kv_b")


def _complex_rotary(shape: ForwardShape, r: Replay, out: str, width: int) -> None:
    """``apply_rotary_emb``: ``x.float()`` (a copy in half precision), times ``freqs_cis``
    as complex numbers, back to the input dtype (no copy in fp32)."""
    full32 = shape.tokens * width * _FP32
    if shape.act != _FP32:
        r.new(f"{out}/fp32", full32)
        r.new(f"{out}/complex", full32)
        r.new(out, shape.tokens * width * shape.act)
        r.free(f"{out}/complex")
    else:
        r.new(out, full32)


def kv_row_bytes(spec: ModelSpec, shape: ForwardShape) -> tuple[int, int]:
    """Bytes one token adds to one layer's K and V tensors, over the batch (MLA: the latent
    and the roped key, single-headed)."""
    b, width = shape.batch, shape.kv_bytes
    if spec.mla is not None:
        return b * spec.mla.kv_lora_rank * width, b * spec.mla.qk_rope_head_dim * width
    _, kv_heads = _heads(spec, shape)
    return (b * kv_heads * spec.head_dim * width,) * 2


def _cache_update(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, k_new: str, v_new: str
) -> int:
    """Store this forward's keys and values (then free ``k_new`` and ``v_new``); returns how
    many keys the attention then sees (:func:`_cache_growth`)."""
    keys = _cache_growth(spec, shape, r, index)
    if shape.cache == "static":
        r.new("static/arange", shape.q_len * _INT64)
        r.new("static/positions", shape.q_len * _INT64)
        r.free("static/arange", "static/positions")
    r.free(k_new, v_new)
    return keys


def _cache_growth(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> int:
    """The cache tensors of layer ``index`` after this forward; returns the keys it holds.

    ``DynamicLayer.update``: ``keys = cat([keys, k])`` then ``values = cat([values, v])``, each
    old tensor freed once its successor exists; a sliding layer (``DynamicSlidingWindowLayer``)
    concatenates to the ``window - 1`` tokens it kept and replaces both tensors only after both
    concatenations. ``StaticLayer``: full-length zeros at the first update, then ``index_copy_``
    at ``arange(q) + cumulative_length``, in place."""
    k_row, v_row = kv_row_bytes(spec, shape)
    key, value = f"kv/{index}/k", f"kv/{index}/v"
    if shape.cache == "static":
        if key not in r.live:
            r.new(key, k_row * shape.max_cache_len, "kv_cache")
            r.new(value, v_row * shape.max_cache_len, "kv_cache")
        return shape.max_cache_len
    window = layer_window(spec, index)
    kept = shape.past if window is None else min(shape.past, window - 1)
    tokens = kept + shape.q_len
    pairs = ((key, k_row), (value, v_row))
    for name, row in pairs:
        r.new(f"{name}/new", row * tokens, "kv_cache")
        if window is None and name in r.live:
            r.free(name)
    for name, _ in pairs:
        if window is not None and name in r.live:
            r.free(name)
        r.rename(f"{name}/new", name)
    return tokens


def _attention_kernel(
    spec: ModelSpec, shape: ForwardShape, r: Replay, keys: int, kv_heads: int, d_qk: int, d_v: int
) -> None:
    """The attention over ``keys`` keys, by kernel; leaves ``attn_core`` (B, q, H, d_v)."""
    if shape.kernel == "math":
        _math_kernel(spec, shape, r, keys, kv_heads, d_qk, d_v)
    else:
        _fused_kernel(spec, shape, r, keys, kv_heads, d_qk, d_v)


def _fused_kernel(
    spec: ModelSpec, shape: ForwardShape, r: Replay, keys: int, kv_heads: int, d_qk: int, d_v: int
) -> None:
    """A fused CUDA kernel's outputs (the attention output stays; the rest is freed at once).

    * flash: the output, a fp32 logsumexp (B, H, q), the RNG state (two uint64) and seed;
    * memory-efficient: the output, an empty logsumexp (no gradient), seed and offset (int64
      scalars); with grouped KV heads the trace's emulation first copies K and V to every
      query head (``memplan.trace.emulate``), two (B, H, keys, d) tensors;
    * cuDNN: the output and its fp32 statistics (B, H, q, 1), seed and offset.
    """
    b, q, act = shape.batch, shape.q_len, shape.act
    heads, _ = _heads(spec, shape)
    expanded = shape.kernel == "mem-efficient" and heads != kv_heads
    if expanded:
        r.new("kernel/k_expanded", b * heads * keys * d_qk * act)
        r.new("kernel/v_expanded", b * heads * keys * d_v * act)
    r.new("attn_core", b * q * heads * d_v * act)
    extra = {
        "flash": {"lse": b * heads * q * _FP32, "rng_state": 2 * _INT64, "rng_seed": _INT64},
        "mem-efficient": {"seed": _INT64, "offset": _INT64},
        "cudnn": {"stats": b * heads * q * _FP32, "seed": _INT64, "offset": _INT64},
    }.get(shape.kernel, {})
    for name, size in extra.items():
        r.new(f"kernel/{name}", size)
    r.free(*(f"kernel/{name}" for name in extra))
    if expanded:
        r.free("kernel/k_expanded", "kernel/v_expanded")


def _math_kernel(
    spec: ModelSpec, shape: ForwardShape, r: Replay, keys: int, kv_heads: int, d_qk: int, d_v: int
) -> None:
    """``_scaled_dot_product_attention_math`` (``attention.cpp``), in fp32 inputs' dtype:
    ``q x sqrt(scale)``; for a causal prefill a (q, keys) mask built from ``ones``, ``tril``
    and ``where`` (two scalar tensors); grouped K and V repeated to every head
    (``enable_gqa``); ``k^T x sqrt(scale)``; the scores, the masked scores, the softmax, ``P V``.
    With q > 1 the roped query is not contiguous (its storage is (B, q, H, d)), so the matmul
    copies it, and the output's ``transpose(1, 2).contiguous()`` copies too."""
    b, q, act = shape.batch, shape.q_len, shape.act
    heads, _ = _heads(spec, shape)
    rows = b * heads * q
    causal = q > 1
    r.new("math/q_scaled", rows * d_qk * act)
    if causal:
        r.new("math/ones", q * keys)
        r.new("math/tril", q * keys)
        r.free("math/ones")
        r.new("math/zero", _FP32)
        r.new("math/neg_inf", _FP32)
        r.new("math/mask", q * keys * act)
        r.free("math/neg_inf", "math/zero", "math/tril")
    grouped = heads != kv_heads
    if grouped:
        r.new("math/k_repeated", b * heads * keys * d_qk * act)
        r.new("math/v_repeated", b * heads * keys * d_v * act)
    r.new("math/k_t_scaled", b * heads * keys * d_qk * act)
    if causal:
        r.new("math/q_contiguous", rows * d_qk * act)
    r.new("math/scores", rows * keys * act)
    r.free("math/k_t_scaled", *(["math/q_contiguous"] if causal else []))
    if causal:
        r.new("math/masked", rows * keys * act)
        r.free("math/scores")
        r.rename("math/masked", "math/scores")
    r.new("math/softmax", rows * keys * act)
    r.free("math/scores")
    r.new("math/pv", rows * d_v * act)
    if grouped:
        r.free("math/k_repeated", "math/v_repeated")
    r.free("math/q_scaled", "math/softmax", *(["math/mask"] if causal else []))
    if causal:
        r.new("attn_core", rows * d_v * act)
        r.free("math/pv")
    else:
        r.rename("math/pv", "attn_core")


# MLP and MoE ---------------------------------------------------------------------------------
def _mlp(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """The layer's feed-forward block: dense MLP or MoE, read from ``mlp_in`` into ``mlp_out``."""
    if spec.is_moe_layer(index) and spec.moe is not None:
        _moe_block(spec, shape, r)
    else:
        _dense_mlp(spec, shape, r, "mlp", spec.intermediate_size, "mlp_out")


def _dense_mlp(
    spec: ModelSpec, shape: ForwardShape, r: Replay, prefix: str, width: int, out: str
) -> None:
    """``down(act(gate(x)) * up(x))`` (gated) or ``down(act(up(x)))``."""
    t, act = shape.tokens, shape.act
    inner = t * width * act // shape.tp_degree
    if spec.mlp_kind is MlpKind.GATED:
        r.new(f"{prefix}/gate", inner)
        r.new(f"{prefix}/act", inner)
        r.free(f"{prefix}/gate")
        r.new(f"{prefix}/up", inner)
        r.new(f"{prefix}/product", inner)
        r.free(f"{prefix}/act", f"{prefix}/up")
        last = f"{prefix}/product"
    else:
        r.new(f"{prefix}/up", inner)
        r.new(f"{prefix}/act", inner)
        r.free(f"{prefix}/up")
        last = f"{prefix}/act"
    r.new(out, t * spec.hidden_size * act)
    r.free(last)


_ROUTING_WEIGHTS_IN_ACT = frozenset({"qwen2_moe", "qwen3_moe"})
"""Routers that cast the top-k weights to the logits' dtype (``.to(router_logits.dtype)``);
the others (Mixtral, DeepSeek) hand fp32 weights to the experts, which promotes the weighted
expert outputs to fp32."""
_SHARED_EXPERT_FIRST = frozenset({"qwen2_moe"})
"""``Qwen2MoeSparseMoeBlock`` runs the shared expert before the router (DeepSeek after)."""


def _routing_width(spec: ModelSpec, act: int) -> int:
    return act if spec.model_type in _ROUTING_WEIGHTS_IN_ACT else _FP32


def _moe_block(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Router, routed experts (``grouped_mm_experts_forward``), shared experts, their sum."""
    moe = spec.moe
    assert moe is not None
    t, act, h = shape.tokens, shape.act, spec.hidden_size
    shared = moe.shared_intermediate_size
    if shared and spec.model_type in _SHARED_EXPERT_FIRST:
        _dense_mlp(spec, shape, r, "shared_expert", shared, "moe/shared_out")
    _router(spec, shape, r)
    _experts(spec, shape, r)
    if shared and spec.model_type in _SHARED_EXPERT_FIRST:
        if moe.shared_expert_gate:
            r.new("moe/shared_gate", t * act)
            r.new("moe/shared_gate_sigmoid", t * act)
            r.free("moe/shared_gate")
            r.new("moe/shared_gated", t * h * act)
            r.free("moe/shared_gate_sigmoid", "moe/shared_out")
            r.rename("moe/shared_gated", "moe/shared_out")
        r.new("mlp_out", t * h * act)
        r.free("moe/experts_out", "moe/shared_out")
    elif shared:
        _dense_mlp(spec, shape, r, "shared_expert", shared, "moe/shared_out")
        r.new("mlp_out", t * h * act)
        r.free("moe/shared_out", "moe/experts_out")
    else:
        r.rename("moe/experts_out", "mlp_out")
    r.free("router/logits", "router/weights", "router/indices")


def _router(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Top-k routing: logits, fp32 softmax, top-k weights and indices (kept for the experts)."""
    moe = spec.moe
    assert moe is not None
    t, act, e, k = shape.tokens, shape.act, moe.n_experts, moe.top_k
    half = act != _FP32
    if spec.model_type.startswith("deepseek"):  # the linear in fp32 on fp32 copies
        if half:
            r.new("router/input_fp32", t * spec.hidden_size * _FP32)
            r.new("router/weight_fp32", e * spec.hidden_size * _FP32)
        r.new("router/logits", t * e * _FP32)
        if half:
            r.free("router/input_fp32", "router/weight_fp32")
        r.new("router/probs", t * e * _FP32)
    else:
        r.new("router/logits", t * e * act)
        if half:  # logits.float() (Mixtral) or softmax(dtype=float) (Qwen): an fp32 copy
            r.new("router/logits_fp32", t * e * _FP32)
        r.new("router/probs", t * e * _FP32)
        if half:
            r.free("router/logits_fp32")
    r.new("router/top_values", t * k * _FP32)
    r.new("router/indices", t * k * _INT64)
    _route_weights(spec, shape, r)


def _route_weights(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """What the router makes of its top-k values: normalised (Mixtral; Qwen's
    ``norm_topk_prob``), scaled (DeepSeek) or cast to the activation dtype (Qwen)."""
    t, act, k = shape.tokens, shape.act, spec.moe.top_k if spec.moe else 0
    config = spec.hf_config or {}
    normalise = spec.model_type == "mixtral" or bool(config.get("norm_topk_prob", False))
    if spec.model_type.startswith("deepseek"):  # top-k values x routed_scaling_factor
        r.new("router/weights", t * k * _FP32)
        r.free("router/top_values", "router/probs")
        return
    if normalise:
        r.new("router/top_sum", t * _FP32)
        r.free("router/top_sum")
    if spec.model_type in _ROUTING_WEIGHTS_IN_ACT and act != _FP32:
        r.new("router/weights", t * k * act)
        r.free("router/top_values", "router/probs")
        return
    r.free("router/probs")
    r.rename("router/top_values", "router/weights")


def _experts(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``grouped_mm_experts_forward`` (transformers ``integrations/moe.py``): tokens sorted by
    expert, two grouped matmuls, the routing weights applied, the order restored, summed.
    Every token goes to ``top_k`` experts: ``S = tokens x top_k`` rows."""
    moe = spec.moe
    assert moe is not None
    t, act, h = shape.tokens, shape.act, spec.hidden_size
    rows, width = t * moe.top_k, moe.expert_intermediate_size // shape.tp_degree
    weight = _routing_width(spec, act)
    wide = max(weight, act)
    r.new("experts/ids_sorted", rows * _INT64)
    r.new("experts/perm", rows * _INT64)
    r.new("experts/token_index", rows * _INT64)
    r.new("experts/inputs", rows * h * act)
    r.free("experts/token_index")
    r.new("experts/sample_weights", rows * weight)
    r.new("experts/histc_input", rows * _FP32)
    r.new("experts/tokens_per_expert", moe.n_experts * _FP32)
    r.new("experts/offsets", moe.n_experts * 4)
    gated = spec.mlp_kind is MlpKind.GATED
    r.new("experts/gate_up", rows * (2 if gated else 1) * width * act)
    r.new("experts/act", rows * width * act)
    if gated:
        r.new("experts/product", rows * width * act)
        r.free("experts/act")
        r.rename("experts/product", "experts/act")
    r.free("experts/gate_up")
    r.new("experts/down", rows * h * act)
    r.free("experts/act")
    r.new("experts/weighted", rows * h * wide)
    r.new("experts/inv_perm", rows * _INT64)
    r.new("experts/arange", rows * _INT64)
    r.free("experts/arange")
    r.new("experts/unsorted", rows * h * wide)
    r.free("experts/weighted")
    r.new("experts/summed", t * h * wide)
    if wide != act:
        r.new("moe/experts_out", t * h * act)
    else:
        r.rename("experts/summed", "moe/experts_out")
    for name in ("ids_sorted", "perm", "inputs", "sample_weights", "histc_input"):
        r.free(f"experts/{name}")
    r.free("experts/tokens_per_expert", "experts/offsets", "experts/down", "experts/unsorted")
    r.free("experts/inv_perm")
    if wide != act:
        r.free("experts/summed")
