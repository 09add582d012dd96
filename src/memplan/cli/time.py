"""``memplan time MODEL``: time, GPU-hours and cost of a training run."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from memplan.cli.common import add_gpu_flags, gpu_from_args, positive_int
from memplan.cli.parallel import add_parallel_flags, plan_from_args
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
  memplan time meta-llama/Llama-3.1-70B --tokens 1e12 --seq 4096 --batch 512 --gpu H100 \\
      --gpus 64 --tp 8 --pp 2 --fsdp full --micro-batch 1

With plan flags (--tp, --pp, --cp, --ep, --dp, --zero, --fsdp, --nodes, --micro-batch) the step
time is modelled per rank: compute at the matmul efficiency, the pipeline bubble and the
communication not hidden behind the backward; --mfu then overrides that model.

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
    parser.add_argument("--mfu", type=float, default=None, help=f"default {DEFAULT_MFU}")
    parser.add_argument(
        "--micro-batch", type=positive_int, default=None, help="per-GPU micro-batch (a plan)"
    )
    parser.add_argument("--precision", default="bf16-mixed", help="training precision (a plan)")
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
    add_gpu_flags(parser)
    add_parallel_flags(parser, gpus_flag=False, batch_flags=False)
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
        mfu=args.mfu if args.mfu is not None else DEFAULT_MFU,
        method=args.method,
        convention=args.attention_flops,
        recompute=args.recompute,
        price_per_gpu_hour=args.price_per_gpu_hour,
    )
    spec = resolve(args.model)
    plan = _plan(args, spec)
    if plan is not None:
        training = dataclasses.replace(training, n_gpus=plan.world_size)
    if plan is not None:
        from memplan.estimate.dist_report import parallel_time_report

        report = parallel_time_report(spec, _setup(args), plan, gpu, training, mfu=args.mfu)
    else:
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


_PLAN_FLAGS = (
    "dp",
    "tp",
    "pp",
    "cp",
    "ep",
    "zero",
    "fsdp",
    "nodes",
    "gpus_per_node",
    "micro_batch",
)


def _plan(args: Any, spec: Any) -> Any:
    """The plan when a plan flag beyond ``--gpus`` is given (``--gpus`` alone keeps the
    MFU model of one GPU times n)."""
    if not any(getattr(args, name, None) is not None for name in _PLAN_FLAGS) and not args.sp:
        return None
    micro = args.micro_batch or 1
    if args.gpus == 1:
        args.gpus = None  # let the degrees size the cluster
    if args.batch % micro:
        raise SetupError(f"--batch {args.batch} is not divisible by --micro-batch {micro}")
    args.global_batch = args.batch
    plan = plan_from_args(args, spec, micro_batch=micro)
    if plan is None:
        return None
    args.gpus = plan.world_size
    return plan


def _setup(args: Any) -> Any:
    from memplan.specs.training import Checkpointing, Precision, TrainingSetup

    try:
        precision = Precision(args.precision)
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise SetupError(f"unknown precision {args.precision!r}: choose one of {known}") from None
    return TrainingSetup(
        batch=args.micro_batch or 1,
        seq=args.seq,
        precision=precision,
        checkpointing=Checkpointing.FULL if args.recompute else Checkpointing.NONE,
        allow_long_seq=args.allow_long_seq,
    )
