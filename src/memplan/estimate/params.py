"""``params_report(spec) -> Report``: exact parameter counts, weight memory and buffers.

The report the CLI (``memplan params``) and the Python API (``memplan.api.params``) return.
Scalars: ``total_params``, ``trainable_params``, ``embedding_params``,
``non_embedding_params``, ``active_params_per_token``, ``tied``, ``params_per_layer``,
``weight_bytes`` (bytes per format), ``buffer_bytes``; with a textbook ``method``:
``method_params``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.formulas.buffers import buffer_breakdown
from memplan.formulas.dtypes import canonical_dtype
from memplan.formulas.methods_params import method_params
from memplan.formulas.params import param_breakdown, param_totals
from memplan.formulas.weights import WEIGHT_FORMATS, normalize_format, weights_bytes
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.units import bytes_mark

__all__ = [
    "checkpoint_quantization",
    "default_weight_format",
    "params_report",
    "stored_in_fp32",
    "weight_format_note",
]


def checkpoint_quantization(config: dict[str, Any]) -> str | None:
    """The weight format a config's ``quantization_config`` stores, or None (plain dtype).

    ``fp8`` with ``weight_block_size`` -> ``fp8-block`` (DeepSeek-V3), ``fbgemm_fp8`` ->
    ``fp8-rowwise`` (Llama-3.1-405B-FP8), ``mxfp4`` -> ``mxfp4`` (gpt-oss's experts), ``gptq``/``awq`` 4-bit -> ``gptq-int4``/``awq-int4``,
    ``bitsandbytes`` -> ``bnb-nf4`` (``bnb-nf4-nodq`` without double quantization) or
    ``bnb-int8``; anything else -> None (memplan does not model it)."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8" and quant.get("weight_block_size"):
        return "fp8-block"
    if method == "fp8":
        return "fp8"
    if method == "fbgemm_fp8":
        return "fp8-rowwise"
    if method == "mxfp4":
        return "mxfp4"
    if method in ("gptq", "awq") and int(quant.get("bits", 4)) == 4:
        return f"{method}-int4"
    if method == "bitsandbytes" or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
        if quant.get("load_in_8bit"):
            return "bnb-int8"
        return "bnb-nf4" if quant.get("bnb_4bit_use_double_quant", True) else "bnb-nf4-nodq"
    return None


def default_weight_format(spec: ModelSpec) -> str:
    """The format the checkpoint stores its weights in: its ``quantization_config`` if memplan
    models it, else its ``torch_dtype`` (bf16 when that is not a plain float)."""
    quantized = checkpoint_quantization(spec.hf_config or {})
    if quantized is not None:
        return quantized
    fmt = canonical_dtype(spec.dtype)
    return fmt if fmt in ("fp32", "fp16", "bf16") else "bf16"


def stored_in_fp32(spec: ModelSpec) -> bool:
    """The model's config says its checkpoint is float32 (Gemma-2's are); a manual model or a
    config without a dtype says nothing."""
    config = spec.hf_config or {}
    return (config.get("torch_dtype") or config.get("dtype")) == "float32"


def weight_format_note(spec: ModelSpec, fmt: str) -> str | None:
    """One line saying where the default weight format came from, when it needs saying (an fp32
    checkpoint: only when its config says so, not a manual model's or a missing dtype's fp32)."""
    quant = (spec.hf_config or {}).get("quantization_config")
    if isinstance(quant, dict) and fmt == checkpoint_quantization(spec.hf_config or {}):
        return (
            f"weights: {fmt}, as the checkpoint stores them (quantization_config "
            f"quant_method {quant.get('quant_method')!r}); --weights bf16 for the unquantized model"
        )
    if isinstance(quant, dict) and checkpoint_quantization(spec.hf_config or {}) is None:
        return (
            f"the checkpoint's quantization_config ({quant.get('quant_method')!r}) is not "
            f"modelled: weights counted as {fmt}"
        )
    if fmt == "fp32" and stored_in_fp32(spec):
        half = weights_bytes(spec, "bf16").total
        return (
            f"the checkpoint is stored in fp32, but nearly everyone loads it in bf16 "
            f"(--weights bf16: {bytes_mark(half)} of weights)"
        )
    return None


def _notes(spec: ModelSpec, active: int, total: int) -> list[str]:
    notes = []
    if spec.tie_word_embeddings:
        notes.append(
            "tied: the lm_head shares the token embedding matrix; counted once "
            f"({spec.vocab_size:,} x {spec.hidden_size:,})"
        )
    if spec.moe is not None:
        moe = spec.moe
        notes.append(
            f"MoE: {moe.top_k} of {moe.n_experts} routed experts per token"
            + (f" plus {moe.n_shared_experts} shared" if moe.n_shared_experts else "")
            + f": {active:,} of {total:,} parameters active per token"
        )
    return notes


def _checkpoint_note(spec: ModelSpec, total: int) -> str | None:
    folder = Path(spec.source)
    if spec.source in ("catalog", "hub", "manual", "config") or not folder.is_dir():
        return None
    from memplan.catalog.local import checkpoint_note, summarize_checkpoint

    summary = summarize_checkpoint(folder)
    return checkpoint_note(summary, total) if summary is not None else None


def params_report(spec: ModelSpec, method: str = "exact", weights: str | None = None) -> Report:
    """Exact parameter counts of ``spec``, its weight memory per format and its buffers.

    ``method`` adds a textbook formula's count (``dense-ffn-4e``, ``matrices-only``, ...) beside the exact
    one; ``weights`` picks the format whose byte breakdown is shown (default: stored dtype).
    """
    totals = param_totals(spec)
    fmt = normalize_format(weights) if weights else default_weight_format(spec)
    scalars: dict[str, Any] = {
        "total_params": totals.total,
        "trainable_params": totals.total,
        "embedding_params": totals.embedding,
        "non_embedding_params": totals.non_embedding,
        "active_params_per_token": totals.active_per_token,
        "tied": spec.tie_word_embeddings,
        "params_per_layer": list(totals.per_layer),
        "weight_bytes": {f: round(weights_bytes(spec, f).total) for f in WEIGHT_FORMATS},
    }
    buffers = buffer_breakdown(spec)
    scalars["buffer_bytes"] = int(buffers.total)
    notes = _notes(spec, totals.active_per_token, totals.total)
    if method != "exact":
        result = method_params(spec, method)
        diff = result.total - totals.total
        scalars["method_params"] = {
            "method": result.method,
            "total": result.total,
            "difference": diff,
            "formula": result.formula,
            "source": result.source,
            "why": result.why,
        }
        notes.append(
            f"{result.method}: {result.total:,} ({diff:+,} vs exact {totals.total:,}); "
            f"{result.formula} [{result.source}]: {result.why}"
        )
    checkpoint = _checkpoint_note(spec, totals.total)
    if checkpoint:
        notes.append(checkpoint)
    stored = weight_format_note(spec, fmt) if not weights else None
    if stored:
        notes.append(stored)
    sections = {f"weights ({fmt})": weights_bytes(spec, fmt)}
    if buffers.children:
        sections["buffers"] = buffers
    setup = {"model_type": spec.model_type, "source": spec.source, "dtype": spec.dtype}
    if method != "exact":
        setup["method"] = scalars["method_params"]["method"]
    return Report(
        kind="params",
        model=spec.name,
        breakdown=param_breakdown(spec),
        setup=setup,
        scalars=scalars,
        notes=notes,
        sections=sections,
    )
