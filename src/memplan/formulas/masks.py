"""When transformers 5.23 builds a real attention-mask tensor instead of passing None, and its bytes.

With sdpa, ``masking_utils`` returns None whenever ``F.scaled_dot_product_attention``'s own
``is_causal`` flag can stand in for the mask, so that the fused kernels (flash needs it) can run.
A real (B, 1, S_q, S_kv) boolean mask is built instead when (``masking_utils.py``):

- **eager attention**: always (``eager_mask`` calls ``sdpa_mask`` with
  ``allow_is_causal_skip=False``, lines 567-633), as an additive mask in the model dtype;
- **sliding window or chunked layers** whose key length reaches the window or chunk:
  ``_ignore_causal_mask_sdpa`` refuses to skip when ``kv_length >= local_attention_size``
  (lines 301-302); ``create_sliding_window_causal_mask`` passes ``local_size=sliding_window``
  (line 1256), ``create_chunked_causal_mask`` ``local_size=attention_chunk_size`` (line 1490). Families
  without ``layer_types`` (Mistral, Mixtral, Phi-3, Starcoder2) slide every layer when
  ``sliding_window`` is set (``mask_function = create_sliding_window_causal_mask``); Gemma 2/3
  and Qwen2 with ``use_sliding_window`` only their ``sliding_attention`` layers;
- **padding** (an ``attention_mask`` with zeros): the skip needs an all-ones padding mask
  (lines 307-317), except a prefill whose padding is only the static cache's empty tail;
- **packed sequences**: position ids that restart within a row, with no ``attention_mask`` and
  no cache (``_preprocess_mask_arguments``, line 876), turn the skip off
  (``packed_sequence_mask``, lines 1003-1008);
- **a compileable cache while decoding** (``StaticCache``, q_len == 1, lines 986-988, 1218-1220);
- a query longer than one token against a longer key that does not start at 0
  (``q_offset != 0``: chunked prefill into a cache).

What follows a mask (``integrations/sdpa_attention.py``, :mod:`memplan.formulas.sdpa`): grouped
KV heads are repeated (``repeat_kv``) or, for one query token, packed; flash is excluded; the
kernel converts a boolean mask to an additive one in the query dtype and the memory-efficient and
cuDNN kernels save it for the backward.
"""

from __future__ import annotations

__all__ = ["sdpa_mask_built", "sdpa_mask_storage_bytes"]


def sdpa_mask_built(
    *,
    eager: bool = False,
    local_size: int | None = None,
    q_len: int,
    kv_len: int,
    q_offset: int = 0,
    padded: bool = False,
    packed: bool = False,
    compileable_decode: bool = False,
) -> bool:
    """Whether the layer gets a real mask tensor (True) or None (``is_causal`` instead).

    ``local_size``: the layer's sliding window or attention chunk (None: full attention);
    ``padded``: the batch's ``attention_mask`` has zeros; ``packed``: several sequences share a
    row (position ids restart); ``compileable_decode``: a static cache, one query token.
    """
    if eager or packed or compileable_decode:
        return True
    if local_size is not None and kv_len >= local_size:
        return True
    if (q_len == 1 or kv_len == q_len) and not padded:
        return False
    return not (q_offset == 0 and not padded)


def sdpa_mask_storage_bytes(*, batch: int, q_len: int, kv_len: int, padded: bool) -> int:
    """Bytes of the boolean mask ``sdpa_mask`` materialises (before the kernel converts it).

    The mask function broadcasts (B, 1, 1, 1) x (1, 1, S_q, 1) x (1, 1, 1, S_kv) index
    tensors and ``expand``\\s the result to (B, 1, S_q, S_kv) (lines 541-554): without padding
    no batch index takes part, so one (1, 1, S_q, S_kv) storage serves every row.
    """
    rows = batch if padded else 1
    return rows * q_len * kv_len
