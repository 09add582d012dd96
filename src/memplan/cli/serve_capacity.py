"""``memplan serve-capacity MODEL``: vLLM's KV cache size and concurrency on a GPU."""

from __future__ import annotations

import argparse
from typing import Any

from memplan.cli.common import add_gpu_flags, cuda_context_from_args, gpu_from_args, positive_int
from memplan.cli.render import add_output_flags, print_report
from memplan.errors import SetupError
from memplan.units import parse_size

__all__ = ["register", "run"]

EPILOG = """\
examples:
  memplan serve-capacity microsoft/Phi-3-mini-4k-instruct --gpu H100-SXM
  memplan serve-capacity meta-llama/Llama-3.1-70B --gpu H100 --tp 4 --max-model-len 32768
  memplan serve-capacity Qwen/Qwen2.5-7B --gpu L40S --kv-cache-dtype fp8 --json

Follows vLLM's v1 engine arithmetic (vllm/v1/core/kv_cache_utils.py); prints the lines vLLM
logs: "GPU KV cache size: N tokens" and "Maximum concurrency for L tokens per request: X".
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-capacity",
        help="vLLM KV cache capacity and concurrency on a GPU",
        description="How many tokens of KV cache vLLM allocates, and how many requests fit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    add_gpu_flags(parser)
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
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
    parser.add_argument("--block-size", type=positive_int, default=16, metavar="N")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp16, bf16")
    parser.add_argument("--dtype", default="auto", help="auto, bf16, fp16")
    parser.add_argument("--weights", metavar="FORMAT", help="awq-int4, gptq-int4, fp8, ...")
    parser.add_argument(
        "--non-torch-memory", metavar="SIZE", help="non-torch memory vLLM measures (default 0)"
    )
    add_output_flags(parser)
    parser.set_defaults(func=run)


def weight_format_alias(text: str | None) -> str | None:
    """``int4-awq`` -> ``awq-int4``, ``int4-gptq`` -> ``gptq-int4`` (both spellings accepted)."""
    if text is None:
        return None
    aliases = {"int4-awq": "awq-int4", "int4-gptq": "gptq-int4", "nf4": "bnb-nf4"}
    return aliases.get(text.lower(), text)


def run(args: Any) -> int:
    from memplan.catalog import resolve
    from memplan.estimate.serving import ServingSetup, serving_report

    gpu = gpu_from_args(args)
    if gpu is None:
        raise SetupError("serve-capacity needs a GPU: give --gpu NAME (or --gpu-memory SIZE)")
    setup = ServingSetup(
        tp_degree=args.tp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        block_size=args.block_size,
        kv_cache_dtype=args.kv_cache_dtype,
        dtype=args.dtype,
        weights=weight_format_alias(args.weights),
        non_torch_bytes=parse_size(args.non_torch_memory) if args.non_torch_memory else 0,
    )
    report = serving_report(
        resolve(args.model), setup, gpu, cuda_context_bytes=cuda_context_from_args(args)
    )
    print_report(report, args)
    return 0
