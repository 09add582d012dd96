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

__all__ = ["default_weight_format", "params_report"]


def default_weight_format(spec: ModelSpec) -> str:
    """The checkpoint's own dtype as a weight format (bf16 when it is not a plain float)."""
    fmt = canonical_dtype(spec.dtype)
    return fmt if fmt in ("fp32", "fp16", "bf16") else "bf16"


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

    ``method`` adds a textbook formula's count (``seed000``, ``seed001``, ...) beside the exact
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
    sections = {f"weights ({fmt})": weights_bytes(spec, fmt)}
    if buffers.children:
        sections["buffers"] = buffers
    setup = {"model_type": spec.model_type, "source": spec.source, "dtype": spec.dtype}
    if method != "exact":
        setup["method"] = method
    return Report(
        kind="params",
        model=spec.name,
        breakdown=param_breakdown(spec),
        setup=setup,
        scalars=scalars,
        notes=notes,
        sections=sections,
    )
