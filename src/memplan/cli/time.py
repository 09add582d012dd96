"""``memplan time MODEL``: time, GPU-hours and cost of a training run."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from memplan.cli.common import add_gpu_flags, gpu_from_args, positive_int
from memplan.cli.render import add_output_flags, print_report
from memplan.errors import SetupError
from memplan.formulas.time import DEFAULT_MFU
from memplan.units import format_seconds

__all__ = ["register", "run"]

MAX_RUN_COUNT = 1e18
"""Most steps or tokens a run may have (1e18; frontier runs train on about 1e13 tokens)."""

EPILOG = """\
examples:
  memplan time gpt2-xl --steps 400000 --batch 1024 --seq 1024 --gpu A100-80GB --dtype fp32 --mfu 0.5
  memplan time gpt2-xl --steps 400000 --batch 1024 --seq 1024 --gpu A100 --dtype fp32 \\
      --mfu 0.5 --method seed004
  memplan time meta-llama/Llama-3.1-8B --tokens 15e12 --seq 8192 --batch 512 --gpu H100 \\
      --gpus 1024 --price-per-gpu-hour 2.5

Default MFU 0.40 (Llama 3 paper, table 4: 38-43 % on H100).
"""


def _count(text: str) -> int:
    """argparse type: a positive count, written as an integer or in e-notation (``15e12``)."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number) or number > MAX_RUN_COUNT:
        raise argparse.ArgumentTypeError(f"expected at most 1e18, got {text!r}")
    value = int(number)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "time",
        help="training time, GPU-hours and cost",
        description="How long a training run takes, from its exact FLOPs and an MFU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_count, metavar="N", help="optimizer steps")
    length.add_argument("--tokens", type=_count, metavar="N", help="training tokens (e.g. 15e12)")
    parser.add_argument("--batch", type=positive_int, default=1, help="global batch (sequences)")
    parser.add_argument("--seq", type=positive_int, default=2048, help="sequence length")
    parser.add_argument("--gpus", type=positive_int, default=1, help="number of GPUs")
    parser.add_argument(
        "--dtype", default="bf16", help="compute dtype for the peak: fp32, tf32, bf16, fp8"
    )
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"default {DEFAULT_MFU}")
    parser.add_argument("--method", choices=("exact", "seed004"), default="exact")
    parser.add_argument(
        "--attention-flops",
        choices=("causal", "matmul"),
        default="causal",
        help="attention core convention: causal pairs only, or full matmuls",
    )
    parser.add_argument("--recompute", action="store_true", help="full activation recomputation")
    parser.add_argument(
        "--allow-long-seq",
        action="store_true",
        help="allow a sequence beyond max_position_embeddings",
    )
    parser.add_argument("--price-per-gpu-hour", type=float, metavar="USD")
    add_gpu_flags(parser, cuda_context=False)
    add_output_flags(parser)
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    from memplan.catalog import resolve
    from memplan.estimate.timing import TrainingRun, training_time_report

    gpu = gpu_from_args(args)
    if gpu is None:
        raise SetupError("time needs a GPU: give --gpu NAME (or --gpu-memory SIZE --tflops X)")
    if args.steps is None and args.tokens is None:
        raise SetupError("give the run length: --steps N or --tokens N")
    training = TrainingRun(
        batch=args.batch,
        seq=args.seq,
        steps=args.steps,
        tokens=args.tokens,
        n_gpus=args.gpus,
        dtype=args.dtype,
        mfu=args.mfu,
        method=args.method,
        convention=args.attention_flops,
        recompute=args.recompute,
        price_per_gpu_hour=args.price_per_gpu_hour,
    )
    spec = resolve(args.model)
    report = training_time_report(spec, training, gpu)
    if args.seq > spec.max_position_embeddings and not args.allow_long_seq:
        raise SetupError(
            f"sequence length {args.seq} exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings}); pass --allow-long-seq to estimate anyway"
        )
    print_report(report, args)
    if not args.json:
        s = report.scalars
        out = sys.stdout
        out.write(f"\ntime: {format_seconds(s['seconds'])} ({s['seconds']:,.0f} s)\n")
        out.write(f"GPU-hours: {s['gpu_hours']:,.0f}\n")
        if "cost_usd" in s:
            out.write(f"cost: ${s['cost_usd']:,.0f}\n")
    return 0
