"""KV cache bytes: what transformers' caches and vLLM's paged cache hold, per layer type.

Per token and layer a cache stores K and V: ``2 x n_kv_heads x head_dim`` elements (MHA:
n_kv_heads = n_heads; GQA: fewer; MQA: one). DeepSeek's multi-head latent attention (MLA)
stores the compressed latent instead: ``kv_lora_rank + qk_rope_head_dim`` elements
(DeepSeek-V2 paper, section 2.1.2), in transformers 5.23 (``modeling_deepseek_v2.py``:
``past_key_values.update(k_nope, k_pe)`` with the normed latent and the roped key, each as a
single-head 4-D tensor) as in vLLM (``MLAAttentionSpec``, one head of size 576 for V2/V3).

Sliding-window layers keep only the window, and how much depends on the implementation
(transformers 5.23 ``cache_utils.py``):

* ``DynamicSlidingWindowLayer.update`` concatenates the new states to the kept ones and keeps a
  view of the last ``window - 1`` tokens. The view holds the storage of the whole
  concatenation, so right after a prefill the layer holds all ``prompt`` tokens; after one
  decode step at most ``window`` tokens (``window - 1`` kept + 1 new). Views count
  ``min(n, window - 1)`` tokens.
* ``StaticLayer`` allocates ``(batch, kv_heads, max_cache_len, head_dim)`` zeros up front;
  ``StaticSlidingWindowLayer`` caps ``max_cache_len`` at the window.
* vLLM allocates blocks of ``block_size`` tokens (``vllm/v1/kv_cache_interface.py``); see
  :mod:`memplan.formulas.serving`.

Linear-attention layers (Qwen3-Next's Gated DeltaNet) cache no keys or values: each keeps two
fixed-size states (``LinearAttentionLayer`` in ``cache_utils.py``, ``Qwen3NextGatedDeltaNet``):
the convolution state ``(batch, conv_dim, conv_kernel)`` in the activation dtype and the
recurrent state ``(batch, value_heads, key_head_dim, value_head_dim)`` in fp32 (the chunked and
recurrent delta rules compute in fp32 and the cache copies their final state).

Counters: each ``DynamicSlidingWindowLayer`` keeps ``_sliding_window_tensor`` (an int64 scalar)
and each ``StaticLayer`` its ``cumulative_length`` (an int64 scalar): 8 bytes each.
"""

from __future__ import annotations

from memplan.errors import SetupError
from memplan.formulas.allocator import alloc_bytes
from memplan.formulas.dtypes import DTYPE_BYTES, canonical_dtype
from memplan.report import Item
from memplan.specs.model import ModelSpec

__all__ = [
    "KV_DTYPES",
    "cache_counter_bytes",
    "cached_tokens",
    "kv_cache_bytes",
    "kv_cache_item",
    "kv_dtype_bytes",
    "kv_elements_per_token_per_layer",
    "layer_window",
    "linear_state_bytes",
]

KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")
"""Cache dtypes (fp8 caches: vLLM ``--kv-cache-dtype fp8``); widths in ``formulas.dtypes``."""

_SRC = "transformers 5.23 cache_utils.py"


def kv_dtype_bytes(kv_dtype: str, activation_dtype: str = "bf16") -> int:
    """Bytes per cached element; ``auto`` means the activation (model) dtype, as in vLLM."""
    key = canonical_dtype(activation_dtype if kv_dtype == "auto" else kv_dtype)
    if key not in KV_DTYPES:
        raise SetupError(
            f"unknown KV cache dtype {kv_dtype!r}: choose auto, fp32, fp16, bf16 or fp8"
        )
    return int(DTYPE_BYTES[key])


def kv_elements_per_token_per_layer(spec: ModelSpec, kv_heads: int | None = None) -> int:
    """Elements one token adds to one layer's cache: ``2 x kv_heads x head_dim``, or MLA's
    ``kv_lora_rank + qk_rope_head_dim`` (the latent, the same on every tensor-parallel rank)."""
    if spec.mla is not None:
        return spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim
    heads = spec.n_kv_heads if kv_heads is None else kv_heads
    return 2 * heads * spec.head_dim


def layer_window(spec: ModelSpec, index: int) -> int | None:
    """The sliding window of layer ``index``, or None for full attention.

    ``layer_types`` decides where given (Gemma-2 alternates); without it a model-wide
    ``sliding_window`` makes every layer sliding, as transformers' ``get_layer_types_and_kwargs``
    infers it (Mistral). Llama 4's chunked layers keep ``attention_chunk_size`` tokens the
    same way (``DynamicSlidingWindowLayer``)."""
    if spec.local_attention_size is None:
        return None
    return spec.local_attention_size if spec.slides(index) else None


def cached_tokens(
    n_tokens: int,
    window: int | None,
    *,
    cache: str = "dynamic",
    decoded: bool = True,
    views: bool = False,
    max_cache_len: int | None = None,
) -> int:
    """Tokens one layer's cache holds after ``n_tokens`` have been processed.

    ``cache``: ``dynamic`` (DynamicCache), ``static`` (StaticCache, sized ``max_cache_len``).
    ``decoded``: at least one decode step has run since the prefill (dynamic sliding layers
    hold the whole prompt until then). ``views``: count the kept views' tokens instead of the
    storages they hold (``min(n, window - 1)``)."""
    if cache == "static":
        length = n_tokens if max_cache_len is None else max_cache_len
        return length if window is None else min(window, length)
    if cache != "dynamic":
        raise SetupError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if window is None:
        return n_tokens
    if views:
        return min(n_tokens, window - 1)
    return min(n_tokens, window) if decoded else n_tokens


def linear_state_bytes(
    spec: ModelSpec, batch: int, act_bytes: int, round_to: int = 1
) -> tuple[int, int]:
    """(conv, recurrent) state bytes of one linear-attention layer (see the module docstring),
    each rounded up to ``round_to``; (0, 0) for a model without linear attention."""
    lin = spec.linear_attention
    if lin is None:
        return 0, 0
    conv = batch * lin.conv_dim * lin.conv_kernel * act_bytes
    recurrent = batch * lin.n_value_heads * lin.key_head_dim * lin.value_head_dim * 4
    return alloc_bytes(conv, round_to), alloc_bytes(recurrent, round_to)


def _n_linear_layers(spec: ModelSpec) -> int:
    return spec.n_layers - spec.n_attention_layers


def _layer_groups(spec: ModelSpec) -> dict[int | None, int]:
    """Number of softmax-attention layers per window (None: full attention); linear-attention
    layers hold states instead (:func:`linear_state_bytes`)."""
    groups: dict[int | None, int] = {}
    for index in range(spec.n_layers):
        if spec.is_linear_attention(index):
            continue
        window = layer_window(spec, index)
        groups[window] = groups.get(window, 0) + 1
    return groups


def cache_counter_bytes(spec: ModelSpec, cache: str = "dynamic") -> int:
    """The int64 scalars the cache layers keep (see the module docstring)."""
    if cache == "static":
        return 8 * spec.n_layers
    return 8 * sum(n for window, n in _layer_groups(spec).items() if window is not None)


def _kv_widths(spec: ModelSpec, kv_heads: int | None) -> tuple[int, int]:
    """Elements per token of one layer's K tensor and V tensor (MLA: latent and rope key)."""
    if spec.mla is not None:
        return spec.mla.kv_lora_rank, spec.mla.qk_rope_head_dim
    heads = spec.n_kv_heads if kv_heads is None else kv_heads
    return heads * spec.head_dim, heads * spec.head_dim


def kv_cache_item(
    spec: ModelSpec,
    *,
    batch: int,
    n_tokens: int,
    dtype_bytes: int,
    cache: str = "dynamic",
    decoded: bool = True,
    views: bool = False,
    max_cache_len: int | None = None,
    kv_heads: int | None = None,
    round_to: int = 1,
    act_bytes: int | None = None,
    linear_states: bool = True,
) -> Item:
    """The cache as a tree: one leaf per layer type (full / each window), the counters, and
    the linear-attention layers' states (``linear_states``; their convolution state in
    ``act_bytes``, default ``dtype_bytes``).

    ``round_to``: round each K and V tensor up to this many bytes (512: the CUDA caching
    allocator's block rounding, ``c10/cuda/CUDACachingAllocator.cpp`` ``kMinBlockSize``)."""
    root = Item("kv_cache", unit="bytes")
    k_width, v_width = _kv_widths(spec, kv_heads)
    per_token = (k_width + v_width) * dtype_bytes
    what = "latent (kv_lora_rank + rope)" if spec.mla is not None else "2*kv_heads*head_dim"
    for window, n_layers in sorted(_layer_groups(spec).items(), key=lambda kv: kv[0] or 0):
        tokens = cached_tokens(
            n_tokens,
            window,
            cache=cache,
            decoded=decoded,
            views=views,
            max_cache_len=max_cache_len,
        )
        rows = batch * tokens * dtype_bytes
        per_layer = alloc_bytes(rows * k_width, round_to) + alloc_bytes(rows * v_width, round_to)
        key = "full_attention_layers" if window is None else f"sliding_{window}_layers"
        rounding = f", each tensor rounded up to {round_to} B" if round_to > 1 else ""
        root.leaf(
            key,
            n_layers * per_layer,
            f"{n_layers} layers x batch {batch} x {tokens} tokens x {per_token} B "
            f"({what} x {dtype_bytes} B){rounding}",
            _SRC,
        )
    n_linear = _n_linear_layers(spec)
    if linear_states and n_linear:
        act = dtype_bytes if act_bytes is None else act_bytes
        conv, recurrent = linear_state_bytes(spec, batch, act, round_to)
        root.leaf(
            "linear_attention_states",
            n_linear * (conv + recurrent),
            f"{n_linear} linear-attention layers x (conv state {conv:,} B, {act} B per "
            f"element + fp32 recurrent state {recurrent:,} B), batch {batch}, any length",
            _SRC,
        )
    if not views:
        counters = cache_counter_bytes(spec, cache)
        if counters:
            root.leaf(
                "cache_counters",
                counters * (alloc_bytes(8, round_to) // 8),
                "int64 scalars kept by the cache layers",
                _SRC,
            )
    return root


def kv_cache_bytes(
    spec: ModelSpec,
    *,
    batch: int,
    n_tokens: int,
    dtype_bytes: int,
    cache: str = "dynamic",
    decoded: bool = True,
    max_cache_len: int | None = None,
) -> int:
    """Total bytes the cache holds (storages, counters included)."""
    item = kv_cache_item(
        spec,
        batch=batch,
        n_tokens=n_tokens,
        dtype_bytes=dtype_bytes,
        cache=cache,
        decoded=decoded,
        max_cache_len=max_cache_len,
    )
    return int(item.total)
