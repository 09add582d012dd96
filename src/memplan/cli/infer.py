"""``memplan infer MODEL``: memory and latency of generation with transformers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from memplan.cli.common import (
    add_gpu_flags,
    add_pipeline_flags,
    cuda_context_from_args,
    gpu_from_args,
    positive_int,
)
from memplan.cli.render import (
    add_output_flags,
    add_plot_flag,
    fit_phrase,
    none_if_zero,
    outside_lines,
    plot_if_asked,
    print_report,
    verdict_line,
)
from memplan.cli.serve_capacity import weight_format_alias
from memplan.formulas.time import DEFAULT_BANDWIDTH_EFFICIENCY, DEFAULT_COMPUTE_EFFICIENCY
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.units import format_bytes, format_seconds

__all__ = ["build_report", "register", "run"]

EPILOG = """\
examples:
  memplan infer Qwen/Qwen2.5-7B --batch 8 --prompt-len 2048 --gen-len 512 --gpu L40S
  memplan infer meta-llama/Llama-3.1-8B --weights int4-awq --kv-dtype fp8 --gpu A10G
  memplan infer microsoft/Phi-3-mini-4k-instruct --prompt-len 512 --gen-len 128 --gpu H100 --json
  memplan infer meta-llama/Llama-3.1-70B --tp 4 --gpu H100 --cache static
  memplan infer meta-llama/Llama-3.1-70B --pp 4 --gpu L40S --batch 8

Latency uses the roofline with explicit efficiencies (defaults: compute 0.6, bandwidth 0.8).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="memory and latency of generation (transformers generate)",
        description="Peak memory of transformers' generate() for one batch of requests "
        "(weights, KV cache, transients; the CUDA context and cuBLAS workspace beside them) on one GPU or a tensor-parallel group, "
        "its latency (roofline), and the largest batch and prompt that fit. For a vLLM server's "
        "capacity, see serve-capacity.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--prompt-len", type=positive_int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FORMAT",
        help="default: the checkpoint's format (its quantization_config, else its dtype); "
        "bf16, fp16, fp32, fp8, fp8-block, fp8-rowwise, int8, bnb-int8, bnb-nf4, gptq-int4, "
        "awq-int4 (also int4-awq)",
    )
    parser.add_argument("--kv-dtype", default="auto", help="auto, fp16, bf16, fp8, fp32")
    parser.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    parser.add_argument("--logits", choices=("last", "all"), default="last")
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    add_pipeline_flags(parser)
    parser.add_argument(
        "--compute-efficiency", type=float, default=DEFAULT_COMPUTE_EFFICIENCY, metavar="F"
    )
    parser.add_argument(
        "--bandwidth-efficiency", type=float, default=DEFAULT_BANDWIDTH_EFFICIENCY, metavar="F"
    )
    add_gpu_flags(parser)
    add_output_flags(parser)
    add_plot_flag(parser)
    parser.set_defaults(func=run)


def build_report(args: Any, spec: ModelSpec | None = None) -> Report:
    """The Report ``memplan infer`` prints (the web API calls it too); ``spec`` replaces
    ``args.model`` when the model is already resolved."""
    from memplan.catalog import resolve
    from memplan.estimate.inference import Efficiency, inference_report
    from memplan.estimate.params import default_weight_format, weight_format_note
    from memplan.specs.inference import InferenceSetup

    spec = spec or resolve(args.model)
    setup = InferenceSetup(
        batch=args.batch,
        prompt_len=args.prompt_len,
        gen_len=args.gen_len,
        weights=weight_format_alias(args.weights) or default_weight_format(spec),
        kv_dtype=args.kv_dtype,
        cache=args.cache,
        logits=args.logits,
        tp_degree=args.tp,
        pp_degree=args.pp,
        pp_partition=args.pp_partition or (),
    )
    report = inference_report(
        spec,
        setup,
        gpu_from_args(args),
        efficiency=Efficiency(args.compute_efficiency, args.bandwidth_efficiency),
        cuda_context_bytes=cuda_context_from_args(args),
    )
    if args.weights is None:
        note = weight_format_note(spec, setup.weights)
        if note:
            report.notes.insert(0, note)
    kv_per_token = kv_bytes_per_token(spec, report)
    report.scalars["kv_cache_bytes_per_token"] = kv_per_token
    report.scalars["verdict"] = _verdict(report, args.decimal)
    return report


def run(args: Any) -> int:
    report = build_report(args)
    plot_if_asked(report, args)
    print_report(report, args)
    if not args.json:
        _print_answers(report, args.decimal)
    return 0


def kv_bytes_per_token(spec: Any, report: Any) -> int:
    """KV cache bytes one more token costs (every softmax-attention layer, per
    tensor-parallel rank; a sliding-window layer counts while the context is inside its
    window; linear-attention layers' fixed states cost nothing per token); with pipeline
    stages, on the GPU of the stage with the highest peak (its attention layers' share: every
    such layer costs the same per token)."""
    from memplan.estimate.inference import activation_bytes
    from memplan.formulas import serving as vllm
    from memplan.formulas.kv_cache import kv_cache_item, kv_dtype_bytes

    setup = report.setup
    act = activation_bytes(setup["weights"])
    element = kv_dtype_bytes(setup["kv_dtype"], "fp32" if act == 4 else "bf16")
    heads = vllm.vllm_kv_heads_per_rank(spec, setup["tp"])
    one = kv_cache_item(
        spec,
        batch=1,
        n_tokens=1,
        dtype_bytes=element,
        kv_heads=heads,
        views=True,  # no counters: they do not grow with the context
        linear_states=False,
    )
    total = int(one.total)
    for entry in report.scalars.get("stages", ()):
        if entry["stage"] == report.scalars["peak_stage"]:
            start, stop = entry["layers"]
            attention = sum(1 for i in range(start, stop) if not spec.is_linear_attention(i))
            return total // spec.n_attention_layers * attention
    return total


def _verdict(report: Any, decimal: bool) -> str:
    s, setup = report.scalars, report.setup
    question = (
        f"generate with {report.model} (batch {setup['batch']}, prompt {setup['prompt_len']:,},"
        f" {setup['gen_len']:,} new tokens, {setup['weights']})"
    )
    answer = f"peak {format_bytes(s['peak_bytes'], decimal=decimal)}"
    if "ttft_s" in s:
        answer += (
            f", first token {format_seconds(s['ttft_s'])}, {s['decode_tokens_per_s']:,.0f} tokens/s"
        )
    if "gpu_memory_bytes" not in s:
        return verdict_line(question, answer, "give --gpu NAME to check a fit")
    gpu = setup["gpu"]
    n_gpus = setup["tp"] * (setup.get("pp") or 1)
    if n_gpus > 1:
        gpu = f"{gpu} x {n_gpus} (tp {setup['tp']}" + (
            f", pp {setup['pp']}; stage {s['peak_stage']} peaks)" if "peak_stage" in s else ")"
        )
    fit = fit_phrase(
        gpu,
        s["gpu_memory_bytes"],
        s["headroom_bytes"],
        decimal=decimal,
        usable_bytes=s["usable_bytes"],
    )
    return verdict_line(question, answer, fit)


def _print_answers(report: Any, decimal: bool) -> None:
    s, setup = report.scalars, report.setup
    out = sys.stdout
    out.write(
        f"\nKV cache per token: {format_bytes(s['kv_cache_bytes_per_token'], decimal=decimal)}"
    )
    if "peak_stage" in s:
        out.write(f" per GPU of stage {s['peak_stage']}\n")
        for entry in s["stages"]:
            start, stop = entry["layers"]
            out.write(
                f"stage {entry['stage']}: layers {start}-{stop - 1}, peak "
                f"{format_bytes(entry['peak_bytes'], decimal=decimal)} ({entry['peak_phase']}), "
                f"weights {format_bytes(entry['weights_bytes'], decimal=decimal)}, KV cache "
                f"{format_bytes(entry['kv_cache_bytes'], decimal=decimal)}\n"
            )
    else:
        out.write(" per GPU\n" if setup["tp"] > 1 else "\n")
    if "ttft_s" in s:
        out.write(
            f"time to first token: {format_seconds(s['ttft_s'])}; decode: "
            f"{format_seconds(s['time_per_output_token_s'])} per token, "
            f"{s['decode_tokens_per_s']:,.0f} tokens/s over the batch; whole request "
            f"{format_seconds(s['e2e_s'])}\n"
        )
    for line in outside_lines(s, decimal=decimal):
        out.write(line + "\n")
    if "max_batch_size" in s:
        out.write(
            f"largest batch at prompt {setup['prompt_len']:,}: {none_if_zero(s['max_batch_size'])};"
            f" longest prompt at batch {setup['batch']}: {none_if_zero(s['max_prompt_len'])}\n"
        )
    out.write(s["verdict"] + "\n")
