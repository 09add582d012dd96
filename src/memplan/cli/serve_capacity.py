"""``memplan serve-capacity MODEL``: vLLM's KV cache size and concurrency on a GPU."""

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
    plot_if_asked,
    print_report,
    verdict_line,
)
from memplan.errors import SetupError
from memplan.formulas.serving import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.units import format_bytes, parse_size

__all__ = ["build_report", "register", "run", "weight_format_alias"]

EPILOG = """\
examples:
  memplan serve-capacity microsoft/Phi-3-mini-4k-instruct --gpu H100-SXM
  memplan serve-capacity meta-llama/Llama-3.1-70B --gpu H100 --tp 4 --max-model-len 32768
  memplan serve-capacity Qwen/Qwen2.5-7B --gpu L40S --kv-cache-dtype fp8 --json
  memplan serve-capacity meta-llama/Llama-3.1-70B --gpu L40S --tp 4 --pp 2 --max-model-len 8192

Follows vLLM's v1 engine arithmetic (vllm/v1/core/kv_cache_utils.py); prints the lines vLLM
logs: "GPU KV cache size: N tokens" and "Maximum concurrency for L tokens per request: X".
With --pp each pipeline stage is sized on its own (its layers, the embedding on the first,
lm_head and the sampler on the last) and the engine keeps the smallest stage's block count.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-capacity",
        help="vLLM KV cache capacity and concurrency on a GPU",
        description="What `vllm serve` allocates at start-up on one GPU (or each of a "
        "tensor-parallel group, per pipeline stage): its weights, profiling peak and KV-cache blocks, the tokens "
        "and concurrency it logs, whether it starts, the smallest tensor-parallel degree that "
        "does, and the longest max_model_len that fits. Capacity, not latency (see infer).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    add_gpu_flags(parser)
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    add_pipeline_flags(parser)
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, metavar="F", help="(0, 1], default 0.9"
    )
    parser.add_argument("--max-model-len", type=positive_int, metavar="N")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=positive_int,
        metavar="N",
        help="default as vllm serve: 8192 on >= 70 GiB GPUs other than A100, else 2048",
    )
    parser.add_argument(
        "--max-num-seqs", type=positive_int, metavar="N", help="default as vllm serve: 1024 or 256"
    )
    parser.add_argument(
        "--block-size",
        type=positive_int,
        default=DEFAULT_BLOCK_SIZE,
        choices=BLOCK_SIZES,
        metavar="N",
        help=f"tokens per KV block: {', '.join(map(str, BLOCK_SIZES))} (vLLM's choices; "
        f"default {DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp16, bf16")
    parser.add_argument("--dtype", default="auto", help="auto, bf16, fp16")
    parser.add_argument(
        "--weights",
        metavar="FORMAT",
        help="default: the checkpoint's quantization_config (DeepSeek-V3: fp8-block), else "
        "--dtype; awq-int4, gptq-int4, fp8, ...",
    )
    parser.add_argument(
        "--non-torch-memory", metavar="SIZE", help="non-torch memory vLLM measures (default 0)"
    )
    add_output_flags(parser)
    add_plot_flag(parser)
    parser.set_defaults(func=run)


def weight_format_alias(text: str | None) -> str | None:
    """``int4-awq`` -> ``awq-int4``, ``int4-gptq`` -> ``gptq-int4`` (both spellings accepted)."""
    if text is None:
        return None
    aliases = {"int4-awq": "awq-int4", "int4-gptq": "gptq-int4", "nf4": "bnb-nf4"}
    return aliases.get(text.lower(), text)


FP32_CHECKPOINT_NOTE = (
    "the checkpoint is stored in fp32; --dtype auto loads it in bf16, as nearly everyone does "
    "(vLLM downcasts a float32 config; --dtype fp32 keeps the stored width)"
)


def build_report(args: Any, spec: ModelSpec | None = None) -> Report:
    """The Report ``memplan serve-capacity`` prints (the web API calls it too); ``spec``
    replaces ``args.model`` when the model is already resolved."""
    from memplan.catalog import resolve
    from memplan.estimate.params import (
        checkpoint_quantization,
        stored_in_fp32,
        weight_format_note,
    )
    from memplan.estimate.serving import ServingSetup, serving_report

    gpu = gpu_from_args(args)
    if gpu is None:
        raise SetupError("serve-capacity needs a GPU: give --gpu NAME (or --gpu-memory SIZE)")
    spec = spec or resolve(args.model)
    weights = weight_format_alias(args.weights)
    if weights is None and args.dtype == "auto":
        weights = checkpoint_quantization(spec.hf_config or {})
    setup = ServingSetup(
        tp_degree=args.tp,
        pp_degree=args.pp,
        pp_partition=args.pp_partition or (),
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        block_size=args.block_size,
        kv_cache_dtype=args.kv_cache_dtype,
        dtype=args.dtype,
        weights=weights,
        non_torch_bytes=parse_size(args.non_torch_memory, flag="--non-torch-memory")
        if args.non_torch_memory
        else 0,
    )
    context = cuda_context_from_args(args)
    report = serving_report(spec, setup, gpu, cuda_context_bytes=context)
    if weights is not None and args.weights is None:
        note = weight_format_note(spec, weights)
        if note:
            report.notes.insert(0, note)
    elif args.weights is None and args.dtype == "auto" and stored_in_fp32(spec):
        report.notes.insert(0, FP32_CHECKPOINT_NOTE)
    _add_answers(report, spec, setup, gpu, context)
    report.scalars["verdict"] = _verdict(report, args.decimal)
    return report


def run(args: Any) -> int:
    report = build_report(args)
    plot_if_asked(report, args)
    if not args.json:
        # vLLM's refusal is the verdict line, not a trailing note
        report.notes = [n for n in report.notes if not n.startswith("vLLM would fail")]
    print_report(report, args)
    if not args.json:
        _print_answers(report, args.decimal)
    return 0


def _add_answers(report: Any, spec: Any, setup: Any, gpu: Any, context: int | None) -> None:
    """KV bytes per token, the smallest tensor-parallel degree that starts (at the same
    pipeline degree), the largest max_model_len that fits, and the verdict."""
    import dataclasses

    from memplan.estimate.serving import serving_report
    from memplan.formulas import serving as vllm

    s = report.scalars
    layout = vllm.kv_cache_layout(spec)
    group_size = layout.group_size
    for entry in s.get("stages", ()):  # the limiting stage's layers per group
        if s["limiting_stage"] in entry["stages"]:
            group_size = entry["layers_per_group"]
    layers = group_size * len(layout.groups)  # every layer's page, padded groups too
    s["kv_cache_bytes_per_token"] = s["page_size_bytes"] * layers // setup.block_size
    max_len = report.setup["max_model_len"]
    s["max_model_len_that_fits"] = max_len if s["fits"] else s.get("estimated_max_model_len", 0)
    s["min_tp"] = None
    for tp in (1, 2, 4, 8, 16, 32, 64):
        try:
            trial = serving_report(
                spec, dataclasses.replace(setup, tp_degree=tp), gpu, cuda_context_bytes=context
            )
        except SetupError:  # heads not divisible by this degree
            continue
        if trial.scalars["fits"]:
            s["min_tp"] = tp
            break


def _parallel(setup: dict[str, Any]) -> str:
    """``tp 4`` or ``tp 4, pp 2``."""
    pp = setup.get("pp") or 1
    return f"tp {setup['tp']}" + (f", pp {pp}" if pp > 1 else "")


def _print_answers(report: Any, decimal: bool) -> None:
    s, setup = report.scalars, report.setup
    out = sys.stdout
    pp = setup.get("pp") or 1
    out.write(
        f"\nKV cache per token: {format_bytes(s['kv_cache_bytes_per_token'], decimal=decimal)}"
    )
    if pp > 1:
        out.write(f" per GPU of stage {s['limiting_stage']} ({_parallel(setup)})\n")
    else:
        out.write(f" per GPU (tp {setup['tp']})\n" if setup["tp"] > 1 else "\n")
    for entry in s.get("stages", ()):
        ids = ", ".join(str(i) for i in entry["stages"])
        out.write(
            f"stage {ids}: {entry['n_layers']} layers, weights "
            f"{format_bytes(entry['weights_bytes'], decimal=decimal)}, profile "
            f"{format_bytes(entry['profile_activation_bytes'], decimal=decimal)}, KV available "
            f"{format_bytes(entry['available_kv_cache_bytes'], decimal=decimal)} -> "
            f"{entry['own_num_gpu_blocks']:,} blocks of {entry['layers_per_group']} layers\n"
        )
    min_tp = s["min_tp"]
    at = f" at pp {pp}" if pp > 1 else ""
    out.write(
        f"smallest tensor-parallel degree that starts{at}: "
        f"{min_tp if min_tp else 'none up to 64'}; "
        f"largest max_model_len that fits at {_parallel(setup)}: "
        f"{none_if_zero(s['max_model_len_that_fits'])}\n"
    )
    out.write(s["verdict"] + "\n")


def _verdict(report: Any, decimal: bool) -> str:
    """Whether vLLM starts (its refusal is the verdict), with what, and by how much; with
    pipeline stages, the one that limits."""
    s, setup = report.scalars, report.setup
    question = (
        f"vllm serve {report.model} ({_parallel(setup)}, max_model_len "
        f"{setup['max_model_len']:,}, {setup['weights']})"
    )
    available = s["available_kv_cache_bytes"]
    needed = s["kv_cache_needed_bytes"]
    n_gpus = setup["tp"] * (setup.get("pp") or 1)
    gpu = f"{setup['gpu']} x {n_gpus}" if n_gpus > 1 else setup["gpu"]
    if "limiting_stage" in s:
        gpu += f", stage {s['limiting_stage']}"
    fit = fit_phrase(gpu, s["gpu_memory_bytes"], available - needed, decimal=decimal)
    where = f" (stage {s['limiting_stage']} limits)" if "limiting_stage" in s else ""
    if s["fits"]:
        answer = (
            f"starts with {s['kv_cache_tokens']:,} tokens of KV cache, "
            f"{s['max_concurrency']:.2f}x concurrency at {setup['max_model_len']:,} tokens{where}"
        )
    elif not s["vllm_kv_check"] and available <= 0:
        # vLLM raises "No available memory for the cache blocks" before the one-request check
        answer = "vLLM would refuse to start (no memory left for KV cache blocks)"
    elif not s["vllm_kv_check"]:
        stage = f" on stage {s['limiting_stage']}" if "limiting_stage" in s else ""
        answer = f"vLLM would refuse to start (KV cache for one max_model_len request{stage})"
    else:
        answer = "vLLM would refuse to start (the requested memory and the CUDA context)"
        fit = fit_phrase(
            gpu,
            s["gpu_memory_bytes"],
            s["headroom_bytes"],
            decimal=decimal,
            usable_bytes=s["usable_bytes"],
        )
    return verdict_line(question, answer, fit)
