"""Weight memory: plain dtypes, and quantization formats with their real overheads.

Plain dtypes (fp32, fp16, bf16, fp8, int8, int4) store every parameter at that width, with no
scales (for fp8/int8/int4 a lower bound). Quantization formats store the *linear layers'*
weight matrices in their packed layout; everything else (embeddings, lm_head, norms, routers,
the shared-expert gate, biases) stays in the 16-bit compute dtype, as the libraries leave them
by default:

- ``bnb-int8`` (bitsandbytes LLM.int8, ``Int8Params``): int8 weight (out, in) and ``SCB``, a
  float32 absmax per output row (``int8_vectorwise_quant``). Dettmers et al. 2022.
- ``bnb-nf4`` (``Params4bit``, ``quantize_4bit`` with ``compress_statistics=True``, block 64):
  packed uint8 ``ceil(n/2)``; ``absmax`` quantized to uint8, one per 64-block; a float32
  ``offset``; the nested state: float32 absmax per 256 absmax values and its 256-entry float32
  code; and the 16-entry float32 NF4 code per tensor. ``bnb-nf4-nodq``: float32 absmax per
  64-block instead of the nested state. Dettmers et al. 2023 (QLoRA), section 3.
- ``gptq-int4`` (AutoGPTQ/GPTQModel ``QuantLinear``, bits 4, group 128): ``qweight`` int32
  (in/8, out), ``qzeros`` int32 (ceil(in/128), out/8), ``scales`` fp16 (ceil(in/128), out),
  ``g_idx`` int32 (in,).
- ``awq-int4`` (AutoAWQ ``WQLinear_GEMM``, group 128): ``qweight`` int32 (in, out/8),
  ``qzeros`` int32 (in/128, out/8), ``scales`` fp16 (in/128, out); no g_idx.

- ``fp8-block`` (DeepSeek-V3's ``quant_method: fp8`` with ``weight_block_size [128, 128]``):
  fp8 weight (out, in) and ``weight_scale_inv``, one float32 per 128 x 128 block
  (transformers ``FP8Linear``; DeepSeek-V3 technical report, section 3.3).
- ``fp8-rowwise`` (``fbgemm_fp8``, Llama-3.1-405B-FP8): fp8 weight and ``weight_scale``, one
  float32 per output row, and the float32 ``input_scale_ub`` buffer, one per layer
  (transformers ``FbgemmFp8Linear``; Llama 3 paper, section 6.2).
- ``mxfp4`` (gpt-oss's ``quant_method: mxfp4``): the MoE experts' weights only, in OCP
  Microscaling blocks of 32 E2M1 values (16 bytes, ``*_blocks``) with one E8M0 scale byte each
  (``*_scales``), 4.25 bits a weight; attention, router, embeddings, lm_head and the experts'
  biases stay bf16, as the checkpoint stores them (``modules_to_not_convert``; OCP
  Microscaling Formats (MX) v1.0, section 5; OpenAI gpt-oss model card, section 2.1).

A quantized checkpoint's ``quantization_config.modules_to_not_convert`` keeps the linear layers
it names in the 16-bit dtype (Llama-3.1-405B-FP8: every ``self_attn`` and the first and last
layers); those are counted with the unquantized modules when the format asked for is the
checkpoint's own (:func:`kept_linear_count`, transformers' ``should_convert_module`` rule).

MoE experts (fused 3D tensors in transformers 5) are counted as ``n_experts`` linear layers
each, as GPTQ/AWQ checkpoints of MoE models store them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from math import ceil

from memplan.errors import SetupError
from memplan.formulas.dtypes import DTYPE_BYTES, canonical_dtype
from memplan.formulas.params import total_params
from memplan.report import Item
from memplan.specs.model import MlpKind, ModelSpec

__all__ = [
    "DTYPE_BYTES",
    "QUANT_FORMATS",
    "WEIGHT_FORMATS",
    "Linear",
    "kept_linear_count",
    "linear_layers",
    "normalize_format",
    "part_weights_bytes",
    "weights_bytes",
    "weights_total_bytes",
]

_ALIASES = {
    "nf4": "bnb-nf4", "bnb-4bit": "bnb-nf4", "llm.int8": "bnb-int8", "bnb-8bit": "bnb-int8",
    "gptq": "gptq-int4", "awq": "awq-int4",
}  # fmt: skip
"""Other spellings of the quantization formats (those of the dtypes: ``formulas.dtypes``)."""
_HALF = 2  # bytes of the fp16/bf16 compute dtype that unquantized modules keep
_GROUP = 128
_NF4_BLOCK = 64
_NESTED_BLOCK = 256
_MX_BLOCK = 32
_SRC_BNB = "bitsandbytes functional.py (int8_vectorwise_quant, quantize_4bit)"
_SRC_GPTQ = "GPTQModel/AutoGPTQ QuantLinear buffers (bits=4, group_size=128)"
_SRC_AWQ = "AutoAWQ WQLinear_GEMM buffers (w_bit=4, group_size=128)"


@dataclass(frozen=True, slots=True)
class Linear:
    """``count`` identical linear layers of shape (n_out, n_in) across the model."""

    key: str
    n_in: int
    n_out: int
    count: int


def _attention_linears(spec: ModelSpec, layers: range) -> Iterator[Linear]:
    h, mla = spec.hidden_size, spec.mla
    n = sum(1 for i in layers if not spec.is_linear_attention(i))
    lin = spec.linear_attention
    n_lin = len(layers) - n
    if lin is not None and n_lin:
        yield Linear("in_proj_qkvz", h, 2 * lin.key_dim + 2 * lin.value_dim, n_lin)
        yield Linear("in_proj_ba", h, 2 * lin.n_value_heads, n_lin)
        yield Linear("out_proj", lin.value_dim, h, n_lin)
    if mla is not None:
        heads = spec.n_heads
        if mla.q_lora_rank is None:
            yield Linear("q_proj", h, heads * mla.qk_head_dim, n)
        else:
            yield Linear("q_a_proj", h, mla.q_lora_rank, n)
            yield Linear("q_b_proj", mla.q_lora_rank, heads * mla.qk_head_dim, n)
        yield Linear("kv_a_proj_with_mqa", h, mla.kv_lora_rank + mla.qk_rope_head_dim, n)
        yield Linear(
            "kv_b_proj", mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim), n
        )
        yield Linear("o_proj", heads * mla.v_head_dim, h, n)
        return
    if spec.fused_qkv:
        yield Linear("qkv_proj", h, spec.q_dim + 2 * spec.kv_dim, n)
    else:
        yield Linear("q_proj", h, spec.q_proj_width, n)
        yield Linear("k_proj", h, spec.kv_dim, n)
        yield Linear("v_proj", h, spec.kv_dim, n)
    yield Linear("o_proj", spec.q_dim, h, n)


def _mlp_linears(spec: ModelSpec, prefix: str, width: int, count: int) -> Iterator[Linear]:
    h = spec.hidden_size
    if spec.mlp_kind is MlpKind.GATED:
        yield Linear(f"{prefix}gate_proj", h, width, count)
    yield Linear(f"{prefix}up_proj", h, width, count)
    yield Linear(f"{prefix}down_proj", width, h, count)


def linear_layers(spec: ModelSpec, layers: range | None = None) -> list[Linear]:
    """Every weight matrix a quantizer converts (decoder layers only; not embeddings/lm_head),
    in ``layers`` (default: all of them)."""
    layers = range(spec.n_layers) if layers is None else layers
    out = list(_attention_linears(spec, layers))
    n_moe = sum(1 for i in layers if spec.is_moe_layer(i))
    n_dense = len(layers) - n_moe
    if n_dense:
        out += _mlp_linears(spec, "", spec.intermediate_size, n_dense)
    if n_moe and spec.moe is not None:
        moe = spec.moe
        out += _mlp_linears(spec, "experts.", moe.expert_intermediate_size, n_moe * moe.n_experts)
        if moe.shared_intermediate_size:
            out += _mlp_linears(spec, "shared_experts.", moe.shared_intermediate_size, n_moe)
    return out


# Per-format bytes of one (n_out, n_in) matrix, as (part, bytes) pairs --------------------------
def _bnb_int8(lin: Linear) -> list[tuple[str, int]]:
    return [("weight_int8", lin.n_in * lin.n_out), ("SCB_fp32", 4 * lin.n_out)]


def _bnb_nf4(lin: Linear, double_quant: bool = True) -> list[tuple[str, int]]:
    n = lin.n_in * lin.n_out
    blocks = ceil(n / _NF4_BLOCK)
    parts = [("weight_packed_uint8", ceil(n / 2)), ("nf4_code_fp32", 16 * 4)]
    if not double_quant:
        return [*parts, ("absmax_fp32", 4 * blocks)]
    nested = ceil(blocks / _NESTED_BLOCK)
    return [
        *parts,
        ("absmax_uint8", blocks),
        ("offset_fp32", 4),
        ("nested_absmax_fp32", 4 * nested),
        ("nested_code_fp32", 256 * 4),
    ]


def _gptq(lin: Linear) -> list[tuple[str, int]]:
    groups = ceil(lin.n_in / _GROUP)
    return [
        ("qweight_int32", 4 * ceil(lin.n_in / 8) * lin.n_out),
        ("qzeros_int32", 4 * groups * ceil(lin.n_out / 8)),
        ("scales_fp16", 2 * groups * lin.n_out),
        ("g_idx_int32", 4 * lin.n_in),
    ]


def _awq(lin: Linear) -> list[tuple[str, int]]:
    groups = ceil(lin.n_in / _GROUP)
    return [
        ("qweight_int32", 4 * lin.n_in * ceil(lin.n_out / 8)),
        ("qzeros_int32", 4 * groups * ceil(lin.n_out / 8)),
        ("scales_fp16", 2 * groups * lin.n_out),
    ]


def _fp8_block(lin: Linear) -> list[tuple[str, int]]:
    blocks = ceil(lin.n_out / _GROUP) * ceil(lin.n_in / _GROUP)
    return [("weight_fp8", lin.n_in * lin.n_out), ("weight_scale_inv_fp32", 4 * blocks)]


def _fp8_rowwise(lin: Linear) -> list[tuple[str, int]]:
    return [
        ("weight_fp8", lin.n_in * lin.n_out),
        ("weight_scale_fp32", 4 * lin.n_out),
        ("input_scale_ub_fp32", 4),
    ]


def _mxfp4(lin: Linear) -> list[tuple[str, int]]:
    blocks = lin.n_out * ceil(lin.n_in / _MX_BLOCK)
    return [("blocks_fp4", blocks * _MX_BLOCK // 2), ("scales_e8m0", blocks)]


QUANT_FORMATS: dict[str, tuple[Callable[[Linear], list[tuple[str, int]]], str]] = {
    "fp8-block": (_fp8_block, "transformers FP8Linear (block 128 x 128 float32 scale_inv)"),
    "fp8-rowwise": (_fp8_rowwise, "transformers FbgemmFp8Linear (float32 scale per row)"),
    "bnb-int8": (_bnb_int8, _SRC_BNB),
    "bnb-nf4": (_bnb_nf4, _SRC_BNB),
    "bnb-nf4-nodq": (lambda lin: _bnb_nf4(lin, double_quant=False), _SRC_BNB),
    "gptq-int4": (_gptq, _SRC_GPTQ),
    "awq-int4": (_awq, _SRC_AWQ),
    "mxfp4": (_mxfp4, "OCP MX v1.0 (32-value E2M1 blocks, E8M0 scale); gpt-oss *_blocks/*_scales"),
}
_EXPERTS_ONLY = frozenset({"mxfp4"})
"""Formats whose checkpoints quantize the MoE experts only (gpt-oss)."""
WEIGHT_FORMATS: tuple[str, ...] = (*DTYPE_BYTES, *QUANT_FORMATS)


_CHECKPOINT_METHODS = {"fp8-rowwise": "fbgemm_fp8", "fp8-block": "fp8"}
"""The ``quant_method`` whose checkpoints store each format (their modules_to_not_convert
apply when that format is asked for)."""
_MLP_KEYS = ("gate_proj", "up_proj", "down_proj")


def _kept_patterns(spec: ModelSpec, fmt: str) -> tuple[str, ...]:
    """The checkpoint's ``modules_to_not_convert`` when ``fmt`` is the format it stores."""
    quant = (spec.hf_config or {}).get("quantization_config")
    if not isinstance(quant, dict) or _CHECKPOINT_METHODS.get(fmt) != quant.get("quant_method"):
        return ()
    return tuple(str(p) for p in quant.get("modules_to_not_convert") or ())


@cache
def _kept_rule(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """transformers ``should_convert_module`` (quantizers_utils.py, 5.x), negated: a pattern
    matching from the start up to a module boundary (as a regex), or as a suffix."""
    prefix = re.compile("|".join(rf"(?:{p})(?:\.|$)" for p in patterns))
    return lambda module: bool(prefix.match(module)) or module.endswith(patterns)


def _module_layers(spec: ModelSpec, lin: Linear, layers: range) -> tuple[str, list[int]]:
    """The module path template of ``lin`` and the layers of ``layers`` it occurs in."""
    prefix, _, name = lin.key.rpartition(".")
    if name not in _MLP_KEYS:
        return f"self_attn.{lin.key}", list(layers)
    moe = prefix in ("experts", "shared_experts")
    return f"mlp.{lin.key}", [i for i in layers if spec.is_moe_layer(i) == moe]


def kept_linear_count(spec: ModelSpec, fmt: str, lin: Linear, layers: range | None = None) -> int:
    """How many of ``lin``'s ``count`` layers (those of decoder ``layers``, default all, as
    :func:`linear_layers` gave it) the checkpoint keeps unquantized in ``fmt``: its
    ``modules_to_not_convert``; 0 for a format asked of a checkpoint that is not in it.
    Module paths are transformers' (``model.layers.{i}.self_attn.q_proj``, ``...mlp.up_proj``);
    a fused expert tensor is kept with its layer or its ``mlp``."""
    patterns = _kept_patterns(spec, normalize_format(fmt))
    if not patterns:
        return 0
    path, where = _module_layers(spec, lin, range(spec.n_layers) if layers is None else layers)
    is_kept = _kept_rule(patterns)
    kept = [i for i in where if is_kept(f"model.layers.{i}.{path}")]
    return len(kept) * (lin.count // max(len(where), 1))


def normalize_format(fmt: str) -> str:
    """``"bfloat16"`` -> ``"bf16"``, ``"nf4"`` -> ``"bnb-nf4"``; SetupError when unknown."""
    key = canonical_dtype(fmt.strip().lower().replace("torch.", ""))
    key = _ALIASES.get(key, key)
    if key not in DTYPE_BYTES and key not in QUANT_FORMATS:
        raise SetupError(
            f"unknown weight format {fmt!r}; choose one of: {', '.join(WEIGHT_FORMATS)}"
        )
    return key


def weights_bytes(spec: ModelSpec, fmt: str) -> Item:
    """Weight memory of ``spec`` stored as ``fmt`` (unit ``bytes``), by part."""
    fmt = normalize_format(fmt)
    n_total = total_params(spec)
    root = Item(f"weights_{fmt}")
    if fmt in DTYPE_BYTES:
        width = DTYPE_BYTES[fmt]
        root.leaf("parameters", n_total * width, f"{n_total:,} x {width} B", "element width")
        return root
    per_linear, src = QUANT_FORMATS[fmt]
    quantized = root.add(Item("quantized_linears"))
    n_quantized = 0
    n_kept = 0
    for lin in linear_layers(spec):
        if fmt in _EXPERTS_ONLY and not lin.key.startswith("experts."):
            continue
        kept = kept_linear_count(spec, fmt, lin)
        n_kept += kept
        count = lin.count - kept
        if not count:
            continue
        node = quantized.add(Item(lin.key, note=f"{count} x ({lin.n_out}, {lin.n_in})"))
        for part, size in per_linear(lin):
            node.leaf(part, count * size, f"{count} x {size:,} B", src)
        n_quantized += count * lin.n_in * lin.n_out
    rest = n_total - n_quantized
    kept_note = (
        f"; {n_kept:,} linear layers the checkpoint's modules_to_not_convert names"
        if n_kept
        else ""
    )
    root.leaf(
        "unquantized_16bit",
        rest * _HALF,
        f"{rest:,} x {_HALF} B",
        "modules kept in the compute dtype: embeddings, lm_head, norms, routers, biases"
        + (", the vision tower" if spec.vision is not None else "")
        + (", attention" if fmt in _EXPERTS_ONLY else "")
        + kept_note,
    )
    return root


def part_weights_bytes(spec: ModelSpec, fmt: str, numel: int, layers: range) -> int:
    """Bytes of a part of the model (a pipeline stage) holding ``numel`` parameters, among
    them the quantizable linears of decoder layers ``layers``: as :func:`weights_bytes` counts
    them (quantized linears in their packed layout, every other parameter in 16 bits)."""
    fmt = normalize_format(fmt)
    if fmt in DTYPE_BYTES:
        return int(numel * DTYPE_BYTES[fmt])
    per_linear, _ = QUANT_FORMATS[fmt]
    packed = n_quantized = 0
    for lin in linear_layers(spec, layers):
        count = lin.count - kept_linear_count(spec, fmt, lin, layers)
        packed += count * sum(size for _, size in per_linear(lin))
        n_quantized += count * lin.n_in * lin.n_out
    return int(packed + (numel - n_quantized) * _HALF)


def weights_total_bytes(spec: ModelSpec, fmt: str) -> int:
    """Total weight bytes of ``spec`` in ``fmt``."""
    return round(weights_bytes(spec, fmt).total)
