"""The attention block of an inference forward, replayed (:mod:`memplan.formulas.forward_memory`):
projections, rotary, the KV cache update, the kernel (flash, memory-efficient, cuDNN, math),
DeepSeek's multi-head latent attention."""

from __future__ import annotations

from memplan.formulas.kv_cache import layer_window, linear_state_bytes
from memplan.formulas.replay_ops import (
    FP32_BYTES,
    INT64_BYTES,
    ForwardShape,
    Replay,
    heads_per_rank,
    kv_row_bytes,
    rms_norm,
)
from memplan.specs.model import ModelSpec

__all__ = ["attention", "cache_growth", "linear_states"]


def attention(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """q/k/v projections, rotary, the cache update, the kernel, o_proj (``LlamaAttention``)."""
    if spec.mla is not None:
        _mla_attention(spec, shape, r, index)
        return
    if spec.is_linear_attention(index):
        # Gated DeltaNet (Qwen3-Next): its ops are not replayed one by one yet (a strict xfail
        # in tests/test_inference_exact.py); the states it caches and its output are
        linear_states(spec, shape, r, index)
        r.new("attn_out", shape.tokens * spec.hidden_size * shape.act)
        return
    t, act, d = shape.tokens, shape.act, spec.head_dim
    heads, kv_heads = heads_per_rank(spec, shape)
    r.new("q_proj", t * heads * d * act)
    r.new("k_proj", t * kv_heads * d * act)
    r.new("v_proj", t * kv_heads * d * act)
    _apply_rotary(shape, r, "q", heads * d)
    _apply_rotary(shape, r, "k", kv_heads * d)
    r.free("q_proj", "k_proj")
    keys = _cache_update(spec, shape, r, index, "k", "v_proj")
    _attention_kernel(spec, shape, r, index, keys, kv_heads, d, d)
    r.new("attn_out", t * spec.hidden_size * act)
    r.free("attn_core", "q")


def _apply_rotary(shape: ForwardShape, r: Replay, out: str, width: int) -> None:
    """``out = x * cos + rotate_half(x) * sin`` on a projection of ``width`` columns;
    ``rotate_half`` is ``cat(-x2, x1)`` (``apply_rotary_pos_emb``)."""
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


def _mla_attention(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """``DeepseekV2Attention``: q (through the low-rank q_a/q_b where given), the compressed
    latent and its norm, complex rotary on fp32 copies, the cache update (latent and roped
    key), then ``expand_kv``: ``kv_b_proj`` over every cached token and a new key tensor."""
    mla = spec.mla
    assert mla is not None
    t, act = shape.tokens, shape.act
    heads, _ = heads_per_rank(spec, shape)
    q_width = t * heads * mla.qk_head_dim * act
    if mla.q_lora_rank is None:
        r.new("q_proj", q_width)
    else:
        r.new("q_a", t * mla.q_lora_rank * act)
        rms_norm(spec, shape, r, "q_a", "q_a_norm", mla.q_lora_rank)
        r.free("q_a")
        r.new("q_proj", q_width)
        r.free("q_a_norm")
    rank, rope = mla.kv_lora_rank, mla.qk_rope_head_dim
    r.new("compressed_kv", t * (rank + rope) * act)
    rms_norm(spec, shape, r, "compressed_kv", "k_latent", rank)
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
    _attention_kernel(spec, shape, r, index, keys, heads, mla.qk_head_dim, mla.v_head_dim)
    r.new("attn_out", t * spec.hidden_size * act)
    r.free("attn_core", "q_proj", "q", "compressed_kv", "query_states", "key_states", "kv_b")


def _complex_rotary(shape: ForwardShape, r: Replay, out: str, width: int) -> None:
    """``apply_rotary_emb``: ``x.float()`` (a copy in half precision), times ``freqs_cis``
    as complex numbers, back to the input dtype (no copy in fp32)."""
    full32 = shape.tokens * width * FP32_BYTES
    if shape.act != FP32_BYTES:
        r.new(f"{out}/fp32", full32)
        r.new(f"{out}/complex", full32)
        r.new(out, shape.tokens * width * shape.act)
        r.free(f"{out}/complex")
    else:
        r.new(out, full32)


def _cache_update(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, k_new: str, v_new: str
) -> int:
    """Store this forward's keys and values (then free ``k_new`` and ``v_new``); returns how
    many keys the attention then sees (:func:`cache_growth`)."""
    keys = cache_growth(spec, shape, r, index)
    if shape.cache == "static":
        r.new("static/arange", shape.q_len * INT64_BYTES)
        r.new("static/positions", shape.q_len * INT64_BYTES)
        r.free("static/arange", "static/positions")
    r.free(k_new, v_new)
    return keys


def linear_states(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, count: int = 1
) -> None:
    """The conv and recurrent states of linear-attention layer ``index`` (and the ``count - 1``
    after it): created (zeros) at the prefill, updated in place by every decode step
    (``LinearAttentionLayer`` in ``cache_utils.py``)."""
    conv, recurrent = linear_state_bytes(spec, shape.batch, shape.act)
    if f"state/{index}/conv" not in r.live:
        r.new(f"state/{index}/conv", conv, "kv_cache", count)
        r.new(f"state/{index}/recurrent", recurrent, "kv_cache", count)


def cache_growth(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, count: int = 1
) -> int:
    """The cache tensors of layer ``index`` (and the ``count - 1`` layers of the same kind
    after it, held as one entry) after this forward; returns the keys a layer holds.

    ``DynamicLayer.update``: ``keys = cat([keys, k])`` then ``values = cat([values, v])``, each
    old tensor freed once its successor exists; a sliding layer (``DynamicSlidingWindowLayer``)
    concatenates to the ``window - 1`` tokens it kept and replaces both tensors only after both
    concatenations. ``StaticLayer``: full-length zeros at the first update, then ``index_copy_``
    at ``arange(q) + cumulative_length``, in place."""
    k_row, v_row = kv_row_bytes(spec, shape)
    key, value = f"kv/{index}/k", f"kv/{index}/v"
    if shape.cache == "static":
        if key not in r.live:
            r.new(key, k_row * shape.max_cache_len, "kv_cache", count)
            r.new(value, v_row * shape.max_cache_len, "kv_cache", count)
        return shape.max_cache_len
    window = layer_window(spec, index)
    kept = shape.past if window is None else min(shape.past, window - 1)
    tokens = kept + shape.q_len
    pairs = ((key, k_row), (value, v_row))
    grown = count > 1 and key in r.live
    if grown:
        _grow_all_but_last(r, pairs, tokens, count)
    for name, row in pairs:
        r.new(f"{name}/new", row * tokens, "kv_cache", 1 if grown else count)
        if window is None and name in r.live:
            r.free(name)
    for name, _ in pairs:
        if window is not None and name in r.live:
            r.free(name)
        r.rename(f"{name}/new", name)
    if grown:
        for name, row in pairs:  # the run's layers as one entry again
            r.free(name, f"{name}/grown")
            r.new(name, row * tokens, "kv_cache", count)
    return tokens


def _grow_all_but_last(
    r: Replay, pairs: tuple[tuple[str, int], ...], tokens: int, count: int
) -> None:
    """A run of ``count`` layers updates its caches one layer after the other, so that only
    the last one holds its old and new tensors together: the first ``count - 1`` layers end
    with their grown tensors (``<name>/grown``) and the last keeps its old ones (``<name>``)
    for the update that follows. Their old tensors go first: the level only falls here."""
    for name, row in pairs:
        each = r.live[name][0] // count
        r.free(name)
        r.new(name, each, "kv_cache")
        r.new(f"{name}/grown", row * tokens, "kv_cache", count - 1)


def _attention_kernel(
    spec: ModelSpec,
    shape: ForwardShape,
    r: Replay,
    index: int,
    keys: int,
    kv_heads: int,
    d_qk: int,
    d_v: int,
) -> None:
    """The attention over ``keys`` keys with the kernel of layer ``index``'s type; leaves
    ``attn_core`` (B, q, H, d_v). ``repeat_kv`` (transformers' copies of K and V to every
    query head, made when a mask rules ``enable_gqa`` out) lives until the call returns."""
    kernel = shape.kernels[0 if layer_window(spec, index) is None else 1]
    heads, _ = heads_per_rank(spec, shape)
    repeated = kernel.gqa == "repeat_kv" and heads != kv_heads
    if repeated:
        r.new("sdpa/k_repeated", shape.batch * heads * keys * d_qk * shape.act)
        r.new("sdpa/v_repeated", shape.batch * heads * keys * d_v * shape.act)
        kv_heads = heads
    if kernel.backend == "math":
        _math_kernel(spec, shape, r, keys, kv_heads, d_qk, d_v)
    else:
        _fused_kernel(spec, shape, r, kernel.backend, d_v)
    if repeated:
        r.free("sdpa/k_repeated", "sdpa/v_repeated")


def _fused_kernel(spec: ModelSpec, shape: ForwardShape, r: Replay, backend: str, d_v: int) -> None:
    """A fused CUDA kernel's outputs (the attention output stays; the rest is freed at once),
    as their meta functions allocate them (torch 2.13 ``_meta_registrations.py``):

    * flash: the output, a fp32 logsumexp (B, H, q), the RNG state (two uint64) and seed;
    * memory-efficient: the output, an empty logsumexp (no gradient), seed and offset (int64
      scalars);
    * cuDNN: the output and its fp32 statistics (B, H, q, 1), seed and offset.
    """
    b, q, act = shape.batch, shape.q_len, shape.act
    heads, _ = heads_per_rank(spec, shape)
    r.new("attn_core", b * q * heads * d_v * act)
    extra = {
        "flash": {
            "lse": b * heads * q * FP32_BYTES,
            "rng_state": 2 * INT64_BYTES,
            "rng_seed": INT64_BYTES,
        },
        "mem-efficient": {"seed": INT64_BYTES, "offset": INT64_BYTES},
        "cudnn": {"stats": b * heads * q * FP32_BYTES, "seed": INT64_BYTES, "offset": INT64_BYTES},
    }.get(backend, {})
    for name, size in extra.items():
        r.new(f"kernel/{name}", size)
    r.free(*(f"kernel/{name}" for name in extra))


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
    heads, _ = heads_per_rank(spec, shape)
    rows = b * heads * q
    causal = q > 1
    r.new("math/q_scaled", rows * d_qk * act)
    if causal:
        r.new("math/ones", q * keys)
        r.new("math/tril", q * keys)
        r.free("math/ones")
        r.new("math/zero", FP32_BYTES)
        r.new("math/neg_inf", FP32_BYTES)
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
