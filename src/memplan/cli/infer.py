"""``memplan infer MODEL``: memory and latency of generation with transformers."""

from __future__ import annotations

import argparse
from typing import Any

from memplan.cli.common import add_gpu_flags, cuda_context_from_args, gpu_from_args, positive_int
from memplan.cli.render import add_output_flags, fit_lines, print_report
from memplan.cli.serve_capacity import weight_format_alias
from memplan.formulas.time import DEFAULT_BANDWIDTH_EFFICIENCY, DEFAULT_COMPUTE_EFFICIENCY

__all__ = ["register", "run"]

EPILOG = """\
examples:
  memplan infer Qwen/Qwen2.5-7B --batch 8 --prompt-len 2048 --gen-len 512 --gpu L40S
  memplan infer meta-llama/Llama-3.1-8B --weights int4-awq --kv-dtype fp8 --gpu A10G
  memplan infer microsoft/Phi-3-mini-4k-instruct --prompt-len 512 --gen-len 128 --gpu H100 --json
  memplan infer meta-llama/Llama-3.1-70B --tp 4 --gpu H100 --cache static

Latency uses the roofline with explicit efficiencies (defaults: compute 0.6, bandwidth 0.8).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="memory and latency of generation (transformers generate)",
        description="Peak memory of generate (weights, KV cache, transients) and its latency.",
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
        help="bf16 (default: the checkpoint dtype), fp16, fp32, fp8, int8, bnb-int8, bnb-nf4, "
        "gptq-int4, awq-int4 (also int4-awq)",
    )
    parser.add_argument("--kv-dtype", default="auto", help="auto, fp16, bf16, fp8, fp32")
    parser.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    parser.add_argument("--logits", choices=("last", "all"), default="last")
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    parser.add_argument(
        "--compute-efficiency", type=float, default=DEFAULT_COMPUTE_EFFICIENCY, metavar="F"
    )
    parser.add_argument(
        "--bandwidth-efficiency", type=float, default=DEFAULT_BANDWIDTH_EFFICIENCY, metavar="F"
    )
    add_gpu_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    from memplan.catalog import resolve
    from memplan.estimate.inference import Efficiency, inference_report
    from memplan.estimate.params import default_weight_format
    from memplan.specs.inference import InferenceSetup

    spec = resolve(args.model)
    setup = InferenceSetup(
        batch=args.batch,
        prompt_len=args.prompt_len,
        gen_len=args.gen_len,
        weights=weight_format_alias(args.weights) or default_weight_format(spec),
        kv_dtype=args.kv_dtype,
        cache=args.cache,
        logits=args.logits,
        tp_degree=args.tp,
    )
    report = inference_report(
        spec,
        setup,
        gpu_from_args(args),
        efficiency=Efficiency(args.compute_efficiency, args.bandwidth_efficiency),
        cuda_context_bytes=cuda_context_from_args(args),
    )
    print_report(report, args)
    if not getattr(args, "json", False):
        for line in fit_lines(report.scalars, decimal=getattr(args, "decimal", False)):
            print(line)
        if "max_batch_size" in report.scalars:
            print(
                f"  largest batch at this prompt and generation: {report.scalars['max_batch_size']}"
            )
    return 0
