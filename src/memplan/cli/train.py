"""``memplan train MODEL [setup flags] [--gpu NAME | --gpu-memory SIZE]``: training memory.

The analytic engine (no torch): per-GPU peak, its breakdown and the phase timeline, and with a
GPU what fits (largest micro-batch, longest sequence, headroom). ``add_training_flags`` and
``setup_from_args`` are shared with ``memplan compare``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from memplan.cli.common import add_gpu_flags, gpu_from_args
from memplan.cli.parallel import add_parallel_flags, plan_from_args
from memplan.cli.render import add_output_flags, print_report
from memplan.errors import SetupError
from memplan.report import Report
from memplan.specs.training import (
    Attention,
    Checkpointing,
    Precision,
    Target,
    TrainingSetup,
)
from memplan.units import format_bytes

__all__ = ["add_training_flags", "register", "run", "setup_from_args"]

EPILOG = """\
examples:
  memplan train meta-llama/Llama-3.1-8B --batch 1 --seq 2048 --precision bf16-mixed --gpu H100-SXM
  memplan train llama-2-7b --batch 4 --seq 4096 --precision bf16 --checkpointing full
  memplan train qwen2.5-7b --lora-rank 16 --lora-targets q_proj,v_proj --gpu L40S
  memplan train llama-3.1-8b --qlora --lora-rank 16 --gpu-memory 24GiB
  memplan train gpt2-xl --precision fp32 --seq 1024 --gpu-memory 80GB --method seed004
  memplan train llama-2-7b --gpus 64 --zero 3 --gpu A100-80GB
  memplan train meta-llama/Llama-3.1-70B --nodes 8 --gpus-per-node 8 --tp 8 --pp 4 --sp \
      --fsdp full --global-batch 512 --gpu H100

precision:  fp32 fp16 bf16 fp16-mixed bf16-mixed deepspeed-bf16 deepspeed-fp16
optimizer:  adamw adamw-foreach adamw-fused adamw-forloop adam sgd sgd-momentum adafactor
            lion adamw-8bit paged-adamw-8bit
attention:  sdpa (PyTorch picks the kernel) flash mem-efficient cudnn eager
methods:    exact (default) korthikanti seed004 seed003 16n; with a plan: zero-paper
            (ZeRO paper, K = 12), korthikanti-tp (Korthikanti et al. with TP/SP), deepspeed
            (DeepSpeed's estimate_zero2/3_model_states_mem_needs)
"""


def _choice(enum: Any, text: str, flag: str) -> Any:
    try:
        return enum(text.lower())
    except ValueError:
        known = ", ".join(item.value for item in enum)
        raise SetupError(f"unknown {flag} {text!r}: choose one of {known}") from None


def add_training_flags(parser: Any) -> None:
    """The setup vocabulary of ARCHITECTURE.md (train, trace and compare share it)."""
    group = parser.add_argument_group("training setup")
    group.add_argument("--batch", type=int, default=1, help="micro-batch size per GPU")
    group.add_argument("--seq", type=int, default=2048, help="sequence length in tokens")
    group.add_argument("--precision", default="bf16-mixed", help="see the list below")
    group.add_argument("--optimizer", default="adamw", help="see the list below")
    group.add_argument("--attention", default="sdpa", help="see the list below")
    group.add_argument("--checkpointing", default="none", help="none, full or selective")
    group.add_argument("--dropout", type=float, default=None, help="override every dropout")
    group.add_argument("--fp32-grad-accumulation", action="store_true",
                       help="DeepSpeed regimes: keep gradients in fp32")  # fmt: skip
    group.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0: full training)")
    group.add_argument("--lora-alpha", type=float, default=16.0)
    group.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj",
                       help="comma-separated module names")  # fmt: skip
    group.add_argument("--qlora", action="store_true", help="NF4 base weights (bitsandbytes)")
    group.add_argument("--freeze-embeddings", action="store_true")
    group.add_argument("--freeze-layers", type=int, default=0, help="freeze the first K layers")
    group.add_argument("--target", default="cuda", help="cuda (default) or cpu semantics")
    group.add_argument("--allow-long-seq", action="store_true",
                       help="allow a sequence beyond max_position_embeddings")  # fmt: skip


def setup_from_args(args: Any) -> TrainingSetup:
    """The TrainingSetup the flags describe (one clear line for each bad value)."""
    from memplan.formulas.optimizer import optimizer_from_name

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return TrainingSetup(
        batch=args.batch,
        seq=args.seq,
        precision=_choice(Precision, args.precision, "precision"),
        optimizer=optimizer_from_name(args.optimizer),
        attention=_choice(Attention, args.attention, "attention"),
        checkpointing=_choice(Checkpointing, args.checkpointing, "checkpointing"),
        dropout=args.dropout,
        fp32_grad_accumulation=args.fp32_grad_accumulation,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=targets,
        qlora=args.qlora,
        freeze_embeddings=args.freeze_embeddings,
        freeze_layers=args.freeze_layers,
        target=_choice(Target, args.target, "target"),
        gpu=getattr(args, "gpu", None),
        allow_long_seq=args.allow_long_seq,
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="per-GPU memory of a training or fine-tuning step (analytic, no torch)",
        description="Peak memory of one training step, where it goes, when it happens, and "
        "what fits on a GPU. Exact op-by-op accounting of what transformers + PyTorch allocate "
        "on CUDA; textbook methods with --method.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, Hugging Face id, config.json or folder")
    add_training_flags(parser)
    parser.add_argument("--method", default="exact", help="exact, korthikanti, seed004, ...")
    add_gpu_flags(parser)
    add_parallel_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(func=run)


def run(args: Any, out: TextIO | None = None) -> int:
    from memplan.catalog import resolve
    from memplan.estimate.training import estimate_training

    out = out or sys.stdout
    spec = resolve(args.model)
    setup = setup_from_args(args)
    plan = plan_from_args(args, spec)
    if plan is not None:
        return _run_parallel(args, spec, setup, plan, out)
    report = estimate_training(spec, setup, method=args.method)
    gpu = gpu_from_args(args)
    if gpu is not None:
        _add_fit(report, spec, setup, gpu, args.method)
    if getattr(args, "json", False):
        print_report(report, args, out)
        return 0
    _print_text(report, args, out)
    return 0


def _run_parallel(args: Any, spec: Any, setup: TrainingSetup, plan: Any, out: TextIO) -> int:
    from memplan.cli.render_parallel import print_parallel_report
    from memplan.estimate.dist_report import parallel_training_report

    gpu = gpu_from_args(args)
    if args.method != "exact":
        from memplan.formulas.methods_parallel import parallel_method_report

        report = parallel_method_report(spec, setup, plan, args.method)
        print_report(report, args, out)
        return 0
    report = parallel_training_report(spec, setup, plan, gpu=gpu)
    if getattr(args, "json", False):
        print_report(report, args, out)
    else:
        print_parallel_report(report, args, out)
    return 0


def _add_fit(report: Report, spec: Any, setup: TrainingSetup, gpu: Any, method: str) -> None:
    from memplan.estimate.fit import fit_training, usable_bytes
    from memplan.formulas.methods_training import seed004_max_batch

    report.scalars["gpu"] = gpu.name
    report.scalars["gpu_memory_bytes"] = gpu.memory_bytes
    if method == "seed004":
        report.scalars["max_batch_size"] = seed004_max_batch(spec, setup.seq, gpu.memory_bytes)
        report.scalars["headroom_bytes"] = gpu.memory_bytes - report.scalars["peak_bytes"]
        return
    if method != "exact":
        report.scalars["headroom_bytes"] = (
            usable_bytes(gpu.memory_bytes) - report.scalars["peak_bytes"]
        )
        return
    fit = fit_training(spec, setup, gpu.memory_bytes)
    report.scalars.update(
        fits=fit.fits,
        usable_bytes=fit.usable_bytes,
        headroom_bytes=fit.headroom_bytes,
        max_batch_size=fit.max_batch_size,
        max_seq_len=fit.max_seq_len,
        limit=fit.limit,
    )


def _print_text(report: Report, args: Any, out: TextIO) -> None:
    decimal = getattr(args, "decimal", False)
    scalars = report.scalars
    print_report(report, args, out)
    peak = scalars["peak_bytes"]
    out.write(f"\npeak: {format_bytes(peak, decimal=decimal)}")
    if "peak_phase" in scalars:
        out.write(f" ({scalars['peak_phase']})")
    first = scalars.get("first_step_peak_bytes")
    if first is not None and first != peak:
        out.write(f"; first step {format_bytes(first, decimal=decimal)}")
    out.write("\n")
    if "gpu" not in scalars:
        return
    gpu_line = f"{scalars['gpu']} ({format_bytes(scalars['gpu_memory_bytes'], decimal=decimal)})"
    headroom = scalars.get("headroom_bytes", 0)
    if "fits" in scalars:
        usable = format_bytes(scalars["usable_bytes"], decimal=decimal)
        if scalars["fits"]:
            verdict = f"fits on {gpu_line}: {format_bytes(headroom, decimal=decimal)} free of {usable} usable"
        else:
            verdict = (
                f"does NOT fit on {gpu_line}: short by {format_bytes(-headroom, decimal=decimal)} "
                f"({usable} usable after the CUDA context)"
            )
        out.write(verdict + "\n")
        out.write(f"  limited by: {scalars['limit']}\n")
        if scalars["max_batch_size"] == 0 and scalars["max_seq_len"] == 0:
            out.write(
                f"  no micro-batch fits at seq {report.setup['seq']}, and no sequence at batch"
                f" {report.setup['batch']}: shrink them, or try LoRA, pure bf16, activation"
                " checkpointing or a larger GPU\n"
            )
            return
        out.write(
            f"  largest micro-batch at seq {report.setup['seq']}: {scalars['max_batch_size']}\n"
        )
        out.write(
            f"  longest sequence at batch {report.setup['batch']}: {scalars['max_seq_len']:,}\n"
        )
    elif "max_batch_size" in scalars:
        out.write(f"{gpu_line}: the method's largest batch is {scalars['max_batch_size']}\n")
