"""``memplan time MODEL``: time, GPU-hours and cost of a training run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from memplan.cli.common import (
    add_gpu_flags,
    count,
    gpu_from_args,
    non_negative_int,
    positive_int,
)
from memplan.cli.parallel import add_parallel_flags, plan_from_args
from memplan.cli.render import (
    add_output_flags,
    add_plot_flag,
    plot_if_asked,
    print_report,
    verdict_line,
)
from memplan.errors import SetupError
from memplan.formulas.time import DEFAULT_MFU
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.units import format_seconds, format_sig

__all__ = ["build_report", "register", "run"]

EPILOG = """\
examples:
  memplan time gpt2-xl --steps 400000 --batch 1024 --seq 1024 --gpu A100-80GB --dtype fp32 --mfu 0.5
  memplan time gpt2-xl --steps 400000 --batch 1024 --seq 1024 --gpu A100 --dtype fp32 \\
      --mfu 0.5 --method one-layer-formula
  memplan time meta-llama/Llama-2-7b-hf --tokens 2T --seq 4096 --batch 1024 --gpu A100 \\
      --gpus 2048 --price-per-gpu-hour 1.5
  memplan time llama-3.1-8b --tokens 100M --seq 2048 --batch 16 --gpu A100 --qlora
  memplan time meta-llama/Llama-3.1-8B --tokens 15e12 --seq 8192 --batch 512 --gpu H100 \\
      --gpus 1024 --price-per-gpu-hour 2.5
  memplan time meta-llama/Llama-3.1-70B --tokens 1e12 --seq 4096 --batch 512 --gpu H100 \\
      --gpus 64 --tp 8 --pp 2 --fsdp full --micro-batch 1

With plan flags (--tp, --pp, --cp, --ep, --dp, --zero, --fsdp, --nodes, --micro-batch) the step
time is modelled per rank: compute at the matmul efficiency, the pipeline bubble and the
communication not hidden behind the backward; --mfu then overrides that model.

Default MFU 0.40 (Llama 3 paper, table 4: 38-43 % on H100).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "time",
        help="training time, GPU-hours and cost",
        description="How long a training run takes on N GPUs, from the exact matmul FLOPs of "
        "its steps (full training, LoRA or QLoRA) and a model FLOPs utilisation (MFU); "
        "GPU-hours and cost. Compute time only: no data loading, checkpoints or failures.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=count, metavar="N", help="optimizer steps (400000, 4e5)")
    length.add_argument(
        "--tokens", type=count, metavar="N", help="training tokens (15e12, 2T, 300B)"
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="global batch (sequences)")
    parser.add_argument(
        "--seq",
        type=positive_int,
        default=None,
        help="sequence length (default 2048, or the model's context when shorter)",
    )
    parser.add_argument("--gpus", type=positive_int, default=1, help="number of GPUs")
    parser.add_argument(
        "--dtype", default="bf16", help="compute dtype for the peak: fp32, tf32, bf16, fp8"
    )
    parser.add_argument("--mfu", type=float, default=None, help=f"default {DEFAULT_MFU}")
    parser.add_argument(
        "--micro-batch", type=positive_int, default=None, help="per-GPU micro-batch (a plan)"
    )
    parser.add_argument("--precision", default="bf16-mixed", help="training precision (a plan)")
    parser.add_argument(
        "--method",
        choices=("exact", "one-layer-formula", "seed004"),
        default="exact",
        help="exact (every matmul) or seed 004's one-layer formula (old name: seed004)",
    )
    parser.add_argument(
        "--attention-flops",
        choices=("causal", "matmul"),
        default="causal",
        help="attention core convention: causal pairs only, or full matmuls",
    )
    parser.add_argument("--recompute", action="store_true", help="full activation recomputation")
    lora = parser.add_argument_group("fine-tuning (frozen base: fewer backward FLOPs)")
    lora.add_argument("--lora-rank", type=non_negative_int, default=None, metavar="R")
    lora.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated module names, all-linear or attention (default: attention; "
        "all-linear with --qlora)",
    )
    lora.add_argument(
        "--qlora",
        action="store_true",
        help="the QLoRA recipe: LoRA r=64 on all linear layers, NF4 base, recomputation",
    )
    parser.add_argument(
        "--allow-long-seq",
        action="store_true",
        help="allow a sequence beyond max_position_embeddings",
    )
    parser.add_argument("--price-per-gpu-hour", type=float, metavar="USD")
    add_gpu_flags(parser, cuda_context=False)
    add_parallel_flags(parser, gpus_flag=False, batch_flags=False)
    add_output_flags(parser)
    add_plot_flag(parser)
    parser.set_defaults(func=run)


def build_report(args: Any, spec: ModelSpec | None = None) -> Report:
    """The Report ``memplan time`` prints (the web API calls it too); ``spec`` replaces
    ``args.model`` when the model is already resolved."""
    from memplan.catalog import resolve
    from memplan.cli.train import default_seq
    from memplan.estimate.timing import TrainingRun, training_time_report
    from memplan.estimate.train_setup import lora_targets_for
    from memplan.specs.training import PLAIN_DEFAULTS, QLORA_RECIPE

    gpu = gpu_from_args(args)
    if gpu is None:
        raise SetupError("time needs a GPU: give --gpu NAME (or --gpu-memory SIZE --tflops X)")
    if args.steps is None and args.tokens is None:
        raise SetupError("give the run length: --steps N or --tokens N")
    spec = spec or resolve(args.model)
    seq = args.seq if args.seq is not None else default_seq(spec)
    recipe = QLORA_RECIPE if args.qlora else PLAIN_DEFAULTS
    rank = args.lora_rank if args.lora_rank is not None else recipe.lora_rank
    if args.lora_targets is not None and rank == 0:
        raise SetupError("--lora-targets picks LoRA's modules: give --lora-rank R too (or --qlora)")
    targets: tuple[str, ...] = ()
    if rank:
        text = args.lora_targets if args.lora_targets is not None else recipe.lora_targets
        targets = lora_targets_for(spec, tuple(t.strip() for t in text.split(",") if t.strip()))
    training = TrainingRun(
        batch=args.batch,
        seq=seq,
        steps=args.steps,
        tokens=args.tokens,
        n_gpus=args.gpus,
        dtype=args.dtype,
        mfu=args.mfu if args.mfu is not None else DEFAULT_MFU,
        method=args.method,
        convention=args.attention_flops,
        recompute=args.recompute or args.qlora,
        price_per_gpu_hour=args.price_per_gpu_hour,
        lora_rank=rank,
        lora_targets=targets,
        qlora=args.qlora,
    )
    if seq > spec.max_position_embeddings and not args.allow_long_seq:
        raise SetupError(
            f"sequence length {seq} exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings}); pass --allow-long-seq to estimate anyway"
        )
    plan = _plan(args, spec, seq)
    if plan is not None:
        from memplan.estimate.dist_report import parallel_time_report

        training = dataclasses.replace(training, n_gpus=plan.world_size)
        report = parallel_time_report(spec, _setup(args, seq), plan, gpu, training, mfu=args.mfu)
    else:
        report = training_time_report(spec, training, gpu)
    s = report.scalars
    answer = f"{format_seconds(s['seconds'])}, {format_sig(s['gpu_hours'])} GPU-hours"
    if "cost_usd" in s:
        answer += f", ${format_sig(s['cost_usd'])}"
    question = (
        f"{s['tokens']:.3g} tokens of {report.model} on {training.n_gpus} x {gpu.name} "
        f"at MFU {s['mfu']:.3g}"
    )
    s["verdict"] = verdict_line(question, answer)
    return report


def run(args: Any) -> int:
    report = build_report(args)
    plot_if_asked(report, args)
    s = report.scalars
    print_report(report, args)
    if not args.json:
        out = sys.stdout
        out.write(f"\ntime: {format_seconds(s['seconds'])} ({format_sig(s['seconds'])} s)\n")
        out.write(f"GPU-hours: {format_sig(s['gpu_hours'])}\n")
        if "cost_usd" in s:
            out.write(f"cost: ${format_sig(s['cost_usd'])}\n")
        out.write(s["verdict"] + "\n")
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


def _plan(args: Any, spec: Any, seq: int) -> Any:
    """The plan when a plan flag beyond ``--gpus`` is given (``--gpus`` alone keeps the
    MFU model of one GPU times n)."""
    if not any(getattr(args, name, None) is not None for name in _PLAN_FLAGS) and not args.sp:
        return None
    micro = args.micro_batch or 1
    if args.batch % micro:
        raise SetupError(f"--batch {args.batch} is not divisible by --micro-batch {micro}")
    args.global_batch = args.batch
    args.seq = seq
    if args.gpus == 1:
        args.gpus = None  # let the degrees size the cluster
    return plan_from_args(args, spec, micro_batch=micro)


def _setup(args: Any, seq: int) -> Any:
    from memplan.specs.training import Checkpointing, Precision, TrainingSetup

    try:
        precision = Precision(args.precision)
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise SetupError(f"unknown precision {args.precision!r}: choose one of {known}") from None
    return TrainingSetup(
        batch=args.micro_batch or 1,
        seq=seq,
        precision=precision,
        checkpointing=Checkpointing.FULL if args.recompute else Checkpointing.NONE,
        allow_long_seq=args.allow_long_seq,
    )
