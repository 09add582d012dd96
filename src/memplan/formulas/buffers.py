"""Registered buffers that take memory besides the parameters (transformers 5.23).

Per family, what ``model.named_buffers()`` holds on a freshly built model:

- rotary models: ``rotary_emb.inv_freq`` and ``rotary_emb.original_inv_freq``, float32 of
  ``ceil(rotary_dim / 2)`` each (``modeling_rope_utils.py``, default rope); Gemma 3 keeps one
  pair per attention type present (sliding, full); Falcon builds it even with ALiBi.
- Gemma 1/2/3: ``embed_tokens.embed_scale``, a float32 scalar.
- GPT-BigCode: ``transformer.bias``, a bool (n_positions, n_positions) causal mask.
- DeepSeek-V3: ``gate.e_score_correction_bias``, float32 (n_experts,) per MoE layer
  (a persistent buffer: it is in the checkpoint, but not a parameter).
- multimodal checkpoints: the vision tower's (``memplan.formulas.vision``).

The bytes are as built (float32, bool for the mask); ``model.to(dtype)`` casts floating
buffers along with the parameters.
"""

from __future__ import annotations

from memplan.formulas.vision import vision_buffer_items
from memplan.report import Item
from memplan.specs.model import ModelSpec, PositionKind

__all__ = ["buffer_breakdown", "buffer_bytes", "rotary_dim"]

_FP32 = 4
_SRC = "transformers 5.23 named_buffers() of modeling_{}.py"


def rotary_dim(spec: ModelSpec) -> int:
    """Dimensions rotated per head: the rope part of MLA, a partial factor, or head_dim."""
    if spec.mla is not None:
        return spec.mla.qk_rope_head_dim
    return spec.rotary_dim if spec.rotary_dim is not None else spec.head_dim


def _rotary_tables(spec: ModelSpec) -> int:
    """How many (inv_freq, original_inv_freq) pairs the model registers."""
    if spec.position is PositionKind.LEARNED:
        return 0
    return spec.n_rotary_tables


def buffer_breakdown(spec: ModelSpec) -> Item:
    """Buffer bytes as built (unit ``bytes``); an empty node when there are none."""
    root = Item("buffers")
    src = _SRC.format(spec.model_type)
    tables = _rotary_tables(spec)
    if tables:
        half = (rotary_dim(spec) + 1) // 2
        formula = f"{tables} x 2 x ceil({rotary_dim(spec)}/2) x 4 B"
        root.leaf("rotary_inv_freq", tables * 2 * half * _FP32, formula, src)
    if spec.embedding_multiplier is not None:  # Gemma registers its sqrt(hidden) scale
        root.leaf("embed_scale", _FP32, "float32 scalar", src)
    if spec.causal_mask_buffer:
        p = spec.max_position_embeddings
        root.leaf("causal_mask", p * p, f"bool ({p}, {p})", src)
    if spec.moe is not None and spec.moe.router_bias:
        n_moe = sum(1 for i in range(spec.n_layers) if spec.is_moe_layer(i))
        root.leaf(
            "e_score_correction_bias",
            n_moe * spec.moe.n_experts * _FP32,
            f"{n_moe} x {spec.moe.n_experts} x 4 B",
            src,
            "persistent: stored in the checkpoint",
        )
    for key, size, formula in vision_buffer_items(spec):
        root.leaf(key, size, formula, src)
    return root


def buffer_bytes(spec: ModelSpec) -> int:
    """Total bytes of registered buffers as built."""
    return int(buffer_breakdown(spec).total)
