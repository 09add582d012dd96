"""Accuracy of the analytic training engine against the trace engine, at full size.

``section() -> str`` returns the markdown section for ``docs/accuracy.md`` (``scripts/accuracy.py``
assembles the sections); run this file directly to print it. Each row traces one real training
step (two iterations, fake tensors, no weights) and sets the analytic estimate beside it: the
error of the peak and the largest error over the categories at the peak and the phases.
It needs the trace extra (torch, transformers, peft) and takes a few minutes on 2 cores.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memplan.catalog import resolve
from memplan.estimate.training import estimate_training
from memplan.specs.training import (
    Attention,
    Checkpointing,
    Optimizer,
    Precision,
    TrainingSetup,
)
from memplan.units import GIB

__all__ = ["CASES", "FAMILY_MODELS", "family_cases", "run_case", "section", "table"]

_LLAMA2 = "meta-llama/Llama-2-7b-hf"
_LLAMA3 = "meta-llama/Meta-Llama-3-8B"
_QWEN = "Qwen/Qwen2.5-7B"
_MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
_GEMMA = "google/gemma-2-9b"
_LORA = dict(lora_rank=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))


def _s(**kw: object) -> TrainingSetup:
    return TrainingSetup(**kw)  # type: ignore[arg-type]


CASES: list[tuple[str, TrainingSetup]] = [
    (_LLAMA2, _s(batch=1, seq=2048)),
    (_LLAMA2, _s(batch=4, seq=512, precision=Precision.BF16)),
    (_LLAMA2, _s(batch=2, seq=4096, precision=Precision.BF16, checkpointing=Checkpointing.FULL)),
    (_LLAMA2, _s(batch=1, seq=4096, precision=Precision.BF16, **_LORA)),
    (_LLAMA3, _s(batch=1, seq=2048)),
    (_LLAMA3, _s(batch=2, seq=4096, precision=Precision.BF16)),
    (_LLAMA3, _s(batch=4, seq=1024, precision=Precision.BF16, checkpointing=Checkpointing.FULL)),
    (_LLAMA3, _s(batch=2, seq=2048, **_LORA)),
    (_QWEN, _s(batch=1, seq=4096)),
    (_QWEN, _s(batch=2, seq=1024, precision=Precision.BF16)),
    (_QWEN, _s(batch=1, seq=2048, precision=Precision.BF16, **_LORA)),
    (_GEMMA, _s(batch=1, seq=2048, attention=Attention.EAGER)),
    (_GEMMA, _s(batch=2, seq=512, precision=Precision.BF16, attention=Attention.EAGER)),
    (_MIXTRAL, _s(batch=1, seq=1024, precision=Precision.BF16)),
    (_MIXTRAL, _s(batch=1, seq=512, precision=Precision.BF16, **_LORA)),
    # fused AdamW (no step temporaries): the peak moves into the forward or the backward
    (_LLAMA2, _s(batch=4, seq=2048, optimizer=Optimizer.ADAMW_FUSED)),
    (_LLAMA3, _s(batch=2, seq=4096, precision=Precision.BF16, optimizer=Optimizer.ADAMW_FUSED)),
    (
        _QWEN,
        _s(
            batch=4,
            seq=2048,
            precision=Precision.BF16,
            optimizer=Optimizer.ADAMW_FUSED,
            checkpointing=Checkpointing.FULL,
        ),
    ),
    (
        _GEMMA,
        _s(
            batch=1,
            seq=4096,
            precision=Precision.BF16,
            attention=Attention.EAGER,
            optimizer=Optimizer.ADAMW_FUSED,
        ),
    ),
    (
        _LLAMA3,
        _s(batch=2, seq=2048, optimizer=Optimizer.ADAMW_FUSED, checkpointing=Checkpointing.FULL),
    ),
    (_LLAMA2, _s(batch=4, seq=2048, checkpointing=Checkpointing.FULL, **_LORA)),
    (_MIXTRAL, _s(batch=2, seq=2048, precision=Precision.BF16, optimizer=Optimizer.ADAMW_FUSED)),
    # fp32 with grouped KV heads: no fused kernel takes it in torch 2.13, the math kernel runs
    ("meta-llama/Llama-3.2-1B", _s(batch=2, seq=2048, precision=Precision.FP32)),
    # masks transformers builds: Phi-3-mini's sliding window (2047) is shorter than the
    # sequence, so every layer gets a mask (cuDNN saves it); Gemma 3's sliding layers (512)
    # get one too, with K/V repeated to the query heads
    ("microsoft/Phi-3-mini-4k-instruct", _s(batch=1, seq=2048, precision=Precision.BF16)),
    # Mistral-7B-v0.1: a sequence as long as its window (4096) already gets the mask
    ("mistralai/Mistral-7B-v0.1", _s(batch=1, seq=4096, precision=Precision.BF16)),
    ("google/gemma-3-1b-pt", _s(batch=2, seq=1024, precision=Precision.BF16)),
]


@dataclass(frozen=True)
class Row:
    model: str
    setup: str
    trace_peak: int
    analytic_peak: int
    worst_line: str
    worst_error: float
    seconds: float

    @property
    def peak_error(self) -> float:
        return (self.analytic_peak - self.trace_peak) / self.trace_peak


FAMILY_MODELS = (
    "meta-llama/Llama-2-7b-hf",
    "mistralai/Mistral-7B-v0.1",
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen1.5-MoE-A2.7B",
    "Qwen/Qwen3-0.6B",
    "Qwen/Qwen3-30B-A3B",
    "google/gemma-2b",
    "google/gemma-2-2b",
    "google/gemma-3-1b-pt",
    "microsoft/Phi-3-mini-4k-instruct",
    "openai-community/gpt2",
    "EleutherAI/pythia-70m",
    "bigcode/starcoderbase-1b",
    "tiiuae/falcon-7b",
    "allenai/OLMo-1B-hf",
    "allenai/OLMo-2-1124-7B",
    "bigcode/starcoder2-3b",
    "deepseek-ai/DeepSeek-V2-Lite",
    "deepseek-ai/DeepSeek-V3",
)
"""One catalog model of each of the 20 supported model types, traced at full size."""

_EAGER_ONLY = ("gemma-2", "gemma-3")  # transformers' gemma2/gemma3 default to eager attention


def family_cases(models: tuple[str, ...] = FAMILY_MODELS) -> list[tuple[str, TrainingSetup]]:
    """Every family at full size: batch 1, seq 512, pure bf16, AdamW (foreach)."""
    cases = []
    for name in models:
        eager = any(tag in name for tag in _EAGER_ONLY)
        attention = Attention.EAGER if eager else Attention.SDPA
        cases.append((name, _s(batch=1, seq=512, precision=Precision.BF16, attention=attention)))
    return cases


def _describe(setup: TrainingSetup) -> str:
    parts = [f"b{setup.batch} s{setup.seq}", setup.precision.value]
    if setup.optimizer is not Optimizer.ADAMW:
        parts.append(setup.optimizer.value)
    if setup.attention is not Attention.SDPA:
        parts.append(setup.attention.value)
    if setup.checkpointing is not Checkpointing.NONE:
        parts.append(f"ckpt {setup.checkpointing.value}")
    parts.append(f"LoRA r{setup.lora_rank}" if setup.is_lora else "full FT")
    return ", ".join(parts)


def _lines(report: object) -> dict[str, int]:
    out = {}
    for child in report.breakdown.children:  # type: ignore[attr-defined]
        out[f"peak/{child.key}"] = int(child.total)
    for phase in report.phases:  # type: ignore[attr-defined]
        if "/" not in phase.name:
            out[f"phase/{phase.name}"] = phase.bytes
    return out


def run_case(name: str, setup: TrainingSetup) -> Row:
    from memplan.trace.training import trace_training

    spec = resolve(name)
    start = time.perf_counter()
    trace = trace_training(spec, setup)
    seconds = time.perf_counter() - start
    analytic = estimate_training(spec, setup)
    t_lines, a_lines = _lines(trace), _lines(analytic)
    worst, worst_error = "-", 0.0
    for key in sorted(set(t_lines) | set(a_lines)):
        t, a = t_lines.get(key, 0), a_lines.get(key, 0)
        # relative to the peak for small lines, so a 512-byte line does not read as 100 %
        error = (a - t) / max(t, int(trace.scalars["peak_bytes"]) // 100, 1)
        if abs(error) > abs(worst_error):
            worst, worst_error = key, error
    return Row(
        spec.name,
        _describe(setup),
        int(trace.scalars["peak_bytes"]),
        int(analytic.scalars["peak_bytes"]),
        worst,
        worst_error,
        seconds,
    )


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | setup | trace peak (GiB) | analytic peak (GiB) | peak error | worst line | "
        "its error | trace s |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.setup} | {r.trace_peak / GIB:.3f} | {r.analytic_peak / GIB:.3f} | "
            f"{100 * r.peak_error:+.3f} % | {r.worst_line} | {100 * r.worst_error:+.3f} % | "
            f"{r.seconds:.1f} |"
        )
    exact = sum(1 for r in rows if r.trace_peak == r.analytic_peak)
    within = sum(1 for r in rows if abs(r.peak_error) <= 0.01)
    lines += [
        "",
        f"{exact} of {len(rows)} peaks identical to the byte; {within} of {len(rows)} within 1 %.",
    ]
    return lines


def section(cases: list[tuple[str, TrainingSetup]] | None = None) -> str:
    """The markdown section: one row per (model, setup), then one model per family."""
    rows = [run_case(name, setup) for name, setup in (cases or CASES)]
    family_rows = [run_case(name, setup) for name, setup in family_cases()]
    lines = [
        "## Training: analytic engine vs trace engine (full size)",
        "",
        "Per-GPU steady-state peak (second iteration, AdamW foreach, H100 kernels as torch 2.13 "
        "picks them: cuDNN attention first with the wheel's cuDNN 9.20, math for fp32 with grouped "
        "KV heads; CUDA allocator rounding) from `memplan train` beside `memplan trace --train`. *Worst line*: "
        "the largest error over the categories at the peak and the six phases (relative to the "
        "line, or to 1 % of the peak for lines smaller than that). Regenerate with "
        "`python scripts/accuracy_training.py`.",
        "",
    ]
    lines += table(rows)
    lines += [
        "",
        "Notes. MoE rows assume tokens spread evenly over the experts, as the trace routes its "
        "fake tokens. The CUDA context and cuBLAS workspace (outside the allocator) are not in "
        "these peaks; `memplan train --gpu` subtracts them before it says what fits.",
        "",
        "### Every model type at full size",
        "",
        "One catalog model of each of the 20 supported model types, batch 1, sequence 512, "
        "pure bf16, AdamW (foreach); eager attention where transformers defaults to it "
        "(Gemma 2 and 3).",
        "",
    ]
    lines += table(family_rows)
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(section())
