"""Accuracy of memplan's inference, serving, latency and time figures.

Inference memory: ``memplan infer`` beside ``memplan trace --infer`` at full size (every phase
and every category of the peak); trace FLOPs of MoE models beside the analytic count. Serving,
latency and time: against the seeds' measurements. ``section() -> str`` returns the markdown
for ``docs/accuracy.md`` (``scripts/accuracy.py`` assembles the sections); run directly it
prints it. The traces need the trace extra and take a few minutes on 2 cores.
"""

from __future__ import annotations

import time

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate.inference import inference_report
from memplan.estimate.serving import ServingSetup, serving_report, vllm_weights_item
from memplan.estimate.timing import TrainingRun, training_time_report
from memplan.formulas.flops import forward_flops_item
from memplan.formulas.time import DEFAULT_BANDWIDTH_EFFICIENCY, DEFAULT_COMPUTE_EFFICIENCY
from memplan.report import Report
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import Precision, TrainingSetup
from memplan.units import GIB

__all__ = ["memory_rows", "section"]

PHI3 = "microsoft/Phi-3-mini-4k-instruct"
SEED002_WEIGHTS_GIB = 7.1183
SEED002_PROCESS_VRAM_MB = {0.2: 21254.635520, 0.9: 91182.071808}
SEED002_PREFILL_TOKENS_PER_S = 19485.523696
SEED002_DECODE_TOKENS_PER_S = 163.810265
SEED004_SECONDS = 11_418_005.37


def _error(ours: float, theirs: float) -> str:
    percent = 100 * (ours - theirs) / theirs
    return f"{percent:+.4f} %" if abs(percent) < 0.01 else f"{percent:+.2f} %"


def _weights_rows() -> list[str]:
    spec = resolve(PHI3)
    weights = vllm_weights_item(spec, "bf16", 1, 2).total / GIB
    return [
        "| quantity | seed 002 (measured) | memplan | error |",
        "| --- | --- | --- | --- |",
        f"| Phi-3-mini-4k weights loaded by vLLM | {SEED002_WEIGHTS_GIB} GiB | "
        f"{weights:.4f} GiB ({weights:.6f}) | {_error(round(weights, 4), SEED002_WEIGHTS_GIB)} |",
    ]


def _vram_rows() -> list[str]:
    """The seed's process VRAM at two utilisations vs total x utilisation + CUDA context."""
    spec = resolve(PHI3)
    gpu = resolve_gpu("H100-NVL")
    rows = []
    for utilization, measured_mb in SEED002_PROCESS_VRAM_MB.items():
        report = serving_report(spec, ServingSetup(gpu_memory_utilization=utilization), gpu)
        requested = report.scalars["peak_bytes"]
        ours_mb = (requested + 512 * 2**20) / 1e6
        rows.append(
            f"| process VRAM at gpu_memory_utilization={utilization} (H100 NVL assumed) | "
            f"{measured_mb:,.0f} MB | {ours_mb:,.0f} MB (requested + 512 MiB context) | "
            f"{_error(ours_mb, measured_mb)} |"
        )
    return rows


def _latency_rows() -> list[str]:
    spec = resolve(PHI3)
    setup = InferenceSetup(batch=1, prompt_len=512, gen_len=50, weights="bf16")
    rows = [
        "| GPU | prefill tokens/s (seed: 19,485) | error | decode tokens/s (seed: 163.8) | error |"
        " efficiencies that would match (compute, bandwidth) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("H100-SXM", "H100-NVL", "H100-PCIe"):
        s = inference_report(spec, setup, resolve_gpu(name)).scalars
        prefill, decode = s["prefill_tokens_per_s"], s["decode_tokens_per_s"]
        eta_c = DEFAULT_COMPUTE_EFFICIENCY * SEED002_PREFILL_TOKENS_PER_S / prefill
        eta_m = DEFAULT_BANDWIDTH_EFFICIENCY * SEED002_DECODE_TOKENS_PER_S / decode
        rows.append(
            f"| {name} | {prefill:,.0f} | {_error(prefill, SEED002_PREFILL_TOKENS_PER_S)} | "
            f"{decode:,.1f} | {_error(decode, SEED002_DECODE_TOKENS_PER_S)} | "
            f"{eta_c:.3f}, {eta_m:.3f} |"
        )
    return rows


def _time_rows() -> list[str]:
    spec = resolve("gpt2-xl")
    gpu = resolve_gpu("A100")
    common = dict(batch=1024, seq=1024, steps=400_000, dtype="fp32", mfu=0.5)
    seed = training_time_report(spec, TrainingRun(method="seed004", **common), gpu).scalars
    exact = training_time_report(spec, TrainingRun(**common), gpu).scalars
    return [
        "| method | FLOPs | seconds | days |",
        "| --- | --- | --- | --- |",
        f"| seed 004 (its arithmetic) | 1.11325552e20 | {SEED004_SECONDS:,.2f} | 132 |",
        f"| memplan `--method seed004` | {seed['flops']:.9e} | {seed['seconds']:,.2f} | "
        f"{seed['days']:.1f} |",
        f"| memplan exact (48 layers, lm_head, causal core) | {exact['flops']:.6e} | "
        f"{exact['seconds']:,.0f} | {exact['days']:,.0f} |",
    ]


MEMORY_CASES: list[tuple[str, InferenceSetup]] = [
    ("meta-llama/Llama-3.2-1B", InferenceSetup(batch=4, prompt_len=1024, gen_len=2)),
    ("Qwen/Qwen2.5-0.5B", InferenceSetup(batch=1, prompt_len=512, gen_len=128)),
    ("meta-llama/Llama-3.1-8B", InferenceSetup(batch=8, prompt_len=2048, gen_len=64)),
    ("meta-llama/Llama-3.1-8B", InferenceSetup(batch=1, prompt_len=8192, gen_len=16)),
    ("meta-llama/Llama-2-7b-hf", InferenceSetup(batch=2, prompt_len=1024, gen_len=32)),
    (
        "meta-llama/Llama-2-7b-hf",
        InferenceSetup(batch=4, prompt_len=512, gen_len=8, weights="fp32"),
    ),
    ("mistralai/Mistral-7B-v0.1", InferenceSetup(batch=4, prompt_len=2048, gen_len=64)),
    ("Qwen/Qwen2.5-7B", InferenceSetup(batch=2, prompt_len=4096, gen_len=8, logits="all")),
    ("mistralai/Mixtral-8x7B-v0.1", InferenceSetup(batch=2, prompt_len=1024, gen_len=16)),
    ("Qwen/Qwen1.5-MoE-A2.7B", InferenceSetup(batch=4, prompt_len=1024, gen_len=32)),
    ("Qwen/Qwen3-30B-A3B", InferenceSetup(batch=2, prompt_len=2048, gen_len=16)),
    ("deepseek-ai/DeepSeek-V2-Lite", InferenceSetup(batch=2, prompt_len=2048, gen_len=32)),
    (
        "meta-llama/Llama-2-7b-hf",
        InferenceSetup(batch=1, prompt_len=512, gen_len=32, cache="static"),
    ),
    ("microsoft/Phi-3-mini-4k-instruct", InferenceSetup(batch=2, prompt_len=1024, gen_len=8)),
    ("google/gemma-2-2b", InferenceSetup(batch=2, prompt_len=1024, gen_len=8, attention="eager")),
    ("openai-community/gpt2", InferenceSetup(batch=4, prompt_len=512, gen_len=8)),
]
"""Full-size generate calls: the issue's two cases first, then each family the replay covers,
then known gaps (static cache masks, Phi-3's fused projections, Gemma 2, GPT-2)."""

FLOP_CASES = (
    "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen1.5-MoE-A2.7B",
    "deepseek-ai/DeepSeek-V2-Lite",
)


def _describe(setup: InferenceSetup) -> str:
    extra = [setup.weights] + [
        text
        for text, on in (
            (f"{setup.cache} cache", setup.cache != "dynamic"),
            ("all logits", setup.logits == "all"),
            (setup.attention, setup.attention != "sdpa"),
        )
        if on
    ]
    return f"b{setup.batch} p{setup.prompt_len} g{setup.gen_len}, " + ", ".join(extra)


def _worst(analytic: Report, trace: Report) -> tuple[str, float]:
    """The line (phase or category at the peak) with the largest relative error."""
    ours = {f"phase/{p.name}": p.bytes for p in analytic.phases}
    ours.update({f"peak/{c.key}": c.total for c in analytic.breakdown.children})
    theirs = {f"phase/{p.name}": p.bytes for p in trace.phases}
    theirs.update({f"peak/{c.key}": c.total for c in trace.breakdown.children})
    floor = 0.01 * trace.scalars["peak_bytes"]
    worst, error = "-", 0.0
    for key in sorted(set(ours) | set(theirs)):
        gap = ours.get(key, 0) - theirs.get(key, 0)
        relative = gap / max(theirs.get(key, 0), floor)
        if gap and abs(relative) > abs(error):
            worst, error = key, relative
    return worst, error


def _memory_rows(
    cases: list[tuple[str, InferenceSetup]] | None = None,
) -> tuple[list[str], int, int]:
    from memplan.trace.inference import trace_inference

    rows = [
        "| model | setup | trace peak (GiB) | analytic peak (GiB) | peak error | worst line | "
        "its error | trace s |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    exact = within = 0
    for name, setup in MEMORY_CASES if cases is None else cases:
        spec = resolve(name)
        started = time.perf_counter()
        trace = trace_inference(spec, setup)
        seconds = time.perf_counter() - started
        analytic = inference_report(spec, setup)
        ours, theirs = analytic.scalars["peak_bytes"], trace.scalars["peak_bytes"]
        worst, error = _worst(analytic, trace)
        exact += ours == theirs and worst == "-"
        within += abs(ours - theirs) <= 0.01 * theirs
        rows.append(
            f"| {name} | {_describe(setup)} | {theirs / GIB:.3f} | {ours / GIB:.3f} | "
            f"{100 * (ours - theirs) / theirs:+.3f} % | {worst} | {100 * error:+.3f} % | "
            f"{seconds:.1f} |"
        )
    return rows, exact, within


def _flop_rows() -> list[str]:
    from memplan.specs.hf import spec_from_config
    from memplan.trace.inference import trace_inference
    from memplan.trace.training import trace_training

    rows = [
        "| model | run | trace FLOPs | analytic FLOPs | error |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in FLOP_CASES:
        spec = resolve(name)
        assert spec.hf_config is not None
        spec = spec_from_config(dict(spec.hf_config), source=name)
        setup = InferenceSetup(batch=1, prompt_len=512, gen_len=4)
        traced = trace_inference(spec, setup).scalars["flops"]
        common = dict(batch=1, convention="matmul", logits="last")
        ours = forward_flops_item(spec, q_len=512, **common).total + sum(
            forward_flops_item(spec, q_len=1, past_len=512 + step, **common).total
            for step in range(3)
        )
        rows.append(
            f"| {name} | generate b1 p512 g4 | {traced:,} | {int(ours):,} | "
            f"{_error(traced, ours)} |"
        )
        step = trace_training(spec, TrainingSetup(batch=1, seq=512, precision=Precision.BF16))
        forward = forward_flops_item(spec, batch=1, q_len=512, convention="matmul")
        core = forward.find("layers/attention_core").total
        d_qk, d_v = (
            (spec.mla.qk_head_dim, spec.mla.v_head_dim) if spec.mla else (spec.head_dim,) * 2
        )
        ours = 3 * forward.total + core * d_qk // (d_qk + d_v)
        rows.append(
            f"| {name} | training step b1 s512 | {step.scalars['flops']:,} | {int(ours):,} | "
            f"{_error(step.scalars['flops'], ours)} |"
        )
    return rows


memory_rows = _memory_rows


def _inference_memory_lines() -> list[str]:
    rows, exact, within = _memory_rows()
    return [
        "### Inference memory: analytic engine vs trace engine (full size)",
        "",
        "`memplan infer` beside `memplan trace --infer` (H100 kernels, CUDA allocator rounding,",
        "greedy generate: the prefill, then the last decode step, the one with the longest",
        "cache). *Worst line*: the largest error over the five phases and the categories at the",
        "peak (relative to the line, or to 1 % of the peak for smaller lines). Before the",
        "op-by-op replay the temporaries line was an estimate: -12.8 % on the first row,",
        "-10.5 % on the second. Peaks are tensors only (allocated bytes); the CUDA context and",
        "the cuBLAS workspace are separate lines in both engines.",
        "",
        *rows,
        "",
        f"{exact} of {len(MEMORY_CASES)} identical to the byte on every line; {within} of "
        f"{len(MEMORY_CASES)} peaks within 1 %. Known gaps: a StaticCache's decode step and "
        "sliding windows once the keys reach the window build masks the replay does not "
        "model yet; Phi-3's fused projections, Gemma 2 (eager attention, four norms) and "
        "GPT-2 (Conv1D, LayerNorm, gelu_new) are not replayed op by op.",
        "",
        "### MoE FLOPs: trace vs analytic (full size)",
        "",
        "The trace counts the expert matmuls (`aten._grouped_mm`, transformers'",
        "`grouped_mm_fallback`) with `memplan.trace.flops`; before, torch's counter had no",
        "formula for them and the trace left them out (tiny Mixtral -71.5 %, tiny DeepSeek-V2",
        "-18.9 %). Generation: prefill + 3 decode steps, all matmuls as run (no causal",
        "halving). Training: 3 x forward plus the fused attention backward's recomputed",
        "`Q K^T` (`flop_counter`'s convention).",
        "",
        *_flop_rows(),
        "",
    ]


def section() -> str:
    """Markdown: inference memory and MoE FLOPs against the trace; serving, latency and
    training-time comparisons against the seeds."""
    lines = [
        "## Inference, serving and time (issue 5)",
        "",
        *_inference_memory_lines(),
        "### Serving (vLLM) against seed 002",
        "",
        "vLLM arithmetic follows the v1 engine source (vllm-project/vllm @ 001cabc1:",
        "`kv_cache_utils.py`, `kv_cache_interface.py`, `gpu_worker.py`). vLLM logs the weights",
        "as torch's allocated-bytes delta: exact parameters x 2 B (7,642,159,104 B), plus the",
        "CUDA caching allocator's whole 188 MiB segments for the two 187.875 MiB vocab tables",
        "(2 x 131,072 B), plus vLLM's rotary cos/sin cache (4096 x 96 x 2 B = 786,432 B):",
        "7,643,207,680 B = 7.11829 GiB, printed as 7.1183.",
        "",
        *_weights_rows(),
        *_vram_rows(),
        "",
        "The seed's 91.8 GB global VRAM exceeds an 80 GB H100's total (85.5e9 B), so its GPU",
        "must have had more memory: the rows assume an H100 NVL (94 GiB datasheet figure; the",
        "driver's exact total is not in the catalog). vLLM of that time counted the CUDA context",
        "and CUDA graphs differently from the v1 engine modelled here, hence the residual.",
        "",
        "### Latency against seed 002 (Phi-3-mini, batch 1)",
        "",
        "Setup assumed: bf16 weights, batch 1, a 512-token prompt (19,485 tokens/s x 26.3 ms),",
        "50 generated tokens (the seed's 0.299 s decode at 163.8 tokens/s is about 49 steps),",
        "transformers-style decoding (full weights + KV cache read per step). memplan's defaults:",
        f"compute efficiency {DEFAULT_COMPUTE_EFFICIENCY}, bandwidth efficiency "
        f"{DEFAULT_BANDWIDTH_EFFICIENCY} (both overridable).",
        "",
        *_latency_rows(),
        "",
        "memplan's roofline is an upper bound on throughput: at batch 1 the seed's run reached",
        "about 15 % of the bf16 peak in prefill and 35-40 % of the memory bandwidth in decode",
        "(kernel-launch and framework overhead, which the roofline does not model). Pass",
        "`--compute-efficiency` / `--bandwidth-efficiency` to calibrate to a serving stack.",
        "",
        "### Training time against seed 004 (GPT-2 XL, 400K steps, batch 1024, A100 fp32, 50 % MFU)",
        "",
        *_time_rows(),
        "",
        "Seed 004's formula `2 B S d (4 d + 2 S + 3 d_ff)` counts one layer and no lm_head",
        "(and a 3-matrix MLP where GPT-2 has 2); memplan reproduces it exactly when asked",
        "(`--method seed004`) and otherwise counts every matmul of the model.",
        "",
        "### Exactness checks in CI",
        "",
        "- KV cache bytes: exact against transformers 5.23 DynamicCache and StaticCache on tiny",
        "  llama, qwen2, mistral (sliding), gemma2 (alternating sliding), mixtral, deepseek_v2",
        "  (MLA latent) CPU models, prefill and decode (`tests/test_kv_cache_exact.py`), and",
        "  against the trace engine's inference mode with 512-B allocator rounding",
        "  (`tests/test_kv_trace.py`).",
        "- Forward FLOPs: exact against `torch.utils.flop_counter.FlopCounterMode` for the same",
        "  six families, prefill and decode, eager attention (`tests/test_flops_exact.py`).",
        "  torch counts CPU sdpa's flash kernel and `torch._grouped_mm` MoE experts as zero.",
        "- Generation FLOPs (prefill + decode steps, sliding windows included): exact against",
        "  the trace engine's counter for llama, qwen2, mistral, gemma2, mixtral and deepseek_v2",
        "  (`tests/test_kv_trace.py`), and for MoE training steps and both expert paths",
        "  (`tests/test_moe_flops.py`).",
        "- Inference memory: every phase and category equal to the trace on 11 size-reduced",
        "  cases (dense GQA and MHA, sliding window, MoE with and without shared experts, MLA;",
        "  batch 1-3, prompts 6-100, one to eight decode steps; `tests/test_inference_exact.py`),",
        "  with the known gaps as strict xfails.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section())
