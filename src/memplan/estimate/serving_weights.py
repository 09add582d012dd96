"""The weights one vLLM worker loads: its pipeline stage's tensors in the checkpoint's format,
sharded by tensor parallelism, with vLLM's vocab padding, the caching allocator's rounding of
its large tensors and the rotary cos/sin cache (``vllm_weights_item``)."""

from __future__ import annotations

from memplan.formulas import serving as vllm
from memplan.formulas.allocator import cuda_block_bytes
from memplan.formulas.training import param_tensors
from memplan.formulas.weights import part_weights_bytes, weights_bytes
from memplan.report import Item
from memplan.specs.model import MlpKind, ModelSpec, NormKind

__all__ = ["stage_holds", "stage_weights_bytes", "vllm_weights_item"]

_VOCAB_PADDING = 64
"""``vllm/model_executor/layers/vocab_parallel_embedding.py``: DEFAULT_VOCAB_PADDING_SIZE."""


def _whole(spec: ModelSpec) -> vllm.PipelineStage:
    return vllm.PipelineStage(0, 0, spec.n_layers, True, True)


def _norm_bytes(spec: ModelSpec, act_bytes: int, stage: vllm.PipelineStage) -> int:
    """Norm weights of a stage (replicated on every tensor-parallel rank)."""
    width = 2 if spec.norm_kind is NormKind.LAYERNORM and spec.norm_bias else 1
    n_norms = len(stage.layers) * spec.n_layer_norms + int(spec.final_norm and stage.last)
    return n_norms * width * spec.hidden_size * act_bytes


def stage_holds(
    spec: ModelSpec, stage: vllm.PipelineStage, layer: int, role: str, name: str
) -> bool:
    """Whether a parameter tensor lives on ``stage``: its decoder layers; the embedding on the
    first (and, tied, the last); the final norm and lm_head on the last."""
    if layer >= 0:
        return stage.start <= layer < stage.stop
    if role == "embedding":
        return stage.first or (
            stage.last and spec.tie_word_embeddings and name == "embed_tokens.weight"
        )
    return stage.last


def stage_weights_bytes(spec: ModelSpec, fmt: str, stage: vllm.PipelineStage) -> int:
    """The checkpoint bytes a stage loads (before tensor-parallel sharding): the whole model
    for a single stage; else its tensors (:func:`stage_holds`) in ``fmt``."""
    if stage.first and stage.last:
        return int(weights_bytes(spec, fmt).total)
    numel = sum(
        t.numel for t in param_tensors(spec) if stage_holds(spec, stage, t.layer, t.role, t.name)
    )
    return part_weights_bytes(spec, fmt, numel, stage.layers)


def _vocab_tables(spec: ModelSpec, stage: vllm.PipelineStage) -> int:
    """Vocabulary-sized tables on a stage: the embedding (first; tied: also the last, where
    lm_head shares it) and an untied lm_head (last)."""
    embedding = stage.first or (stage.last and spec.tie_word_embeddings)
    return int(embedding) + int(stage.last and not spec.tie_word_embeddings)


def vllm_weights_item(
    spec: ModelSpec,
    fmt: str,
    tp_degree: int,
    act_bytes: int,
    stage: vllm.PipelineStage | None = None,
) -> Item:
    """Weights one rank loads ("Model loading took X GiB"): the checkpoint's tensors (those of
    its pipeline ``stage``, sharded by TP, norms replicated), vocab padding to a multiple of
    64, the rotary cos/sin cache (every stage's attention layers build one)."""
    stage = stage or _whole(spec)
    root = Item("weights", unit="bytes")
    total = stage_weights_bytes(spec, fmt, stage)
    norms = _norm_bytes(spec, act_bytes, stage)
    sharded = total - norms
    root.leaf(
        "model_weights",
        -(sharded // -tp_degree) + norms,
        f"{fmt}: {total:,} B"
        + ("" if stage.first and stage.last else f" on {stage.label}")
        + (f", sharded over tp={tp_degree} (norms replicated)" if tp_degree > 1 else ""),
        "memplan.formulas.weights",
    )
    padded = -(spec.vocab_size // -_VOCAB_PADDING) * _VOCAB_PADDING
    tables = _vocab_tables(spec, stage)
    extra_rows = padded - spec.vocab_size
    if extra_rows and tables:
        root.leaf(
            "vocab_padding",
            tables * extra_rows * spec.hidden_size * act_bytes // tp_degree,
            f"vocab {spec.vocab_size} padded to {padded}",
            "vllm vocab_parallel_embedding.py pad_vocab_size",
        )
    rounding = _allocator_rounding_bytes(spec, fmt, tp_degree, act_bytes, padded, stage)
    if rounding:
        root.leaf(
            "allocator_rounding",
            rounding,
            "large tensors not a multiple of 2 MiB count their whole segment",
            "c10/cuda/CUDACachingAllocator.cpp (memplan.formulas.allocator.cuda_block_bytes)",
        )
    rotary = _rotary_dim(spec)
    if rotary:
        root.leaf(
            "rotary_cos_sin_cache",
            spec.max_position_embeddings * rotary * act_bytes,
            f"{spec.max_position_embeddings} positions x {rotary} (cos, sin) x {act_bytes} B",
            "vllm rotary_embedding.py RotaryEmbedding.cos_sin_cache",
        )
    return root


def _vllm_tensors(
    spec: ModelSpec, tp: int, width: int, padded_vocab: int, stage: vllm.PipelineStage
) -> list[tuple[int, int]]:
    """(count, bytes) of vLLM's large weight tensors on one rank (fused qkv_proj and
    gate_up_proj, FusedMoE's w13/w2), for plain-dtype, non-MLA models."""
    h = spec.hidden_size
    kv_rank = max(1, spec.n_kv_heads // tp) * spec.head_dim
    q_rank = spec.q_dim // tp
    out = [(_vocab_tables(spec, stage), -(padded_vocab // -tp) * h * width)]
    n = len(stage.layers)
    out += [(n, (q_rank + 2 * kv_rank) * h * width), (n, q_rank * h * width)]
    gated = 2 if spec.mlp_kind is MlpKind.GATED else 1
    n_moe = sum(1 for i in stage.layers if spec.is_moe_layer(i))
    if n - n_moe:
        inner = spec.intermediate_size // tp
        out += [(n - n_moe, gated * inner * h * width), (n - n_moe, inner * h * width)]
    if n_moe and spec.moe is not None:
        moe = spec.moe
        inner = moe.expert_intermediate_size // tp
        out += [
            (n_moe, moe.n_experts * gated * inner * h * width),
            (n_moe, moe.n_experts * inner * h * width),
        ]
    return out


def _allocator_rounding_bytes(
    spec: ModelSpec, fmt: str, tp: int, width: int, padded_vocab: int, stage: vllm.PipelineStage
) -> int:
    """What the caching allocator adds to the large weight tensors (plain dtypes, no MLA)."""
    if spec.mla is not None or fmt not in ("bf16", "fp16", "fp32"):
        return 0
    return sum(
        count * (cuda_block_bytes(size) - size)
        for count, size in _vllm_tensors(spec, tp, width, padded_vocab, stage)
    )


def _rotary_dim(spec: ModelSpec) -> int:
    if spec.position.value != "rotary":
        return 0
    if spec.mla is not None:
        return spec.mla.qk_rope_head_dim
    return spec.rotary_dim or spec.head_dim
