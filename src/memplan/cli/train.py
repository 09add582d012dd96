"""``memplan train MODEL [setup flags] [--gpu NAME | --gpu-memory SIZE]``: training memory.

The analytic engine (no torch): per-GPU peak, its breakdown and the phase timeline, and with a
GPU what fits (largest micro-batch, longest sequence, headroom). ``add_training_flags`` and
``setup_from_args`` are shared with ``memplan compare``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from memplan.cli.common import (
    add_gpu_flags,
    cuda_context_from_args,
    gpu_from_args,
    non_negative_int,
    positive_int,
)
from memplan.cli.parallel import add_parallel_flags, plan_from_args
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
from memplan.errors import SetupError
from memplan.estimate.train_setup import lora_targets_for
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.specs.training import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_SEQ,
    PLAIN_DEFAULTS,
    QLORA_RECIPE,
    Attention,
    Checkpointing,
    Precision,
    Target,
    TrainingSetup,
)
from memplan.units import format_bytes

__all__ = [
    "add_training_flags",
    "build_report",
    "default_seq",
    "register",
    "run",
    "setup_from_args",
]

EPILOG = """\
examples:
  memplan train meta-llama/Llama-3.1-8B --batch 1 --seq 2048 --precision bf16-mixed --gpu H100-SXM
  memplan train llama-2-7b --batch 4 --seq 4096 --precision bf16 --checkpointing full
  memplan train qwen2.5-7b --lora-rank 16 --lora-targets q_proj,v_proj --gpu L40S
  memplan train llama-3.1-8b --qlora --lora-rank 16 --gpu-memory 24GiB
  memplan train gpt2-xl --precision fp32 --seq 1024 --gpu-memory 80GB --method fp32-adamw-count
  memplan train llama-2-7b --gpus 64 --zero 3 --gpu A100-80GB
  memplan train meta-llama/Llama-3.1-70B --nodes 8 --gpus-per-node 8 --tp 8 --pp 4 --sp \\
      --fsdp full --global-batch 512 --gpu H100

precision:  fp32 fp16 bf16 fp16-mixed bf16-mixed deepspeed-bf16 deepspeed-fp16
optimizer:  adamw adamw-foreach adamw-fused adamw-forloop adam sgd sgd-momentum adafactor
            lion adamw-8bit paged-adamw-8bit
attention:  sdpa (PyTorch picks the kernel) flash mem-efficient cudnn eager
methods:    exact (default) korthikanti fp32-adamw-count per-node-saved 16-bytes-per-param
            (the old names seed004, seed003, 16n still work); with a plan: zero-paper
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
    group.add_argument("--batch", type=positive_int, default=1, help="micro-batch size per GPU")
    group.add_argument("--seq", type=positive_int, default=None,
                       help=f"sequence length in tokens (default {DEFAULT_SEQ}, or the model's "
                       "context when shorter)")  # fmt: skip
    group.add_argument("--precision", default=None, help="see the list below (default bf16-mixed)")
    group.add_argument("--optimizer", default=None, help="see the list below (default adamw)")
    group.add_argument("--attention", default="sdpa", help="see the list below")
    group.add_argument("--checkpointing", default=None, help="none (default), full or selective")
    group.add_argument("--dropout", type=float, default=None, help="override every dropout")
    group.add_argument("--fp32-grad-accumulation", action="store_true",
                       help="DeepSpeed regimes: keep gradients in fp32")  # fmt: skip
    group.add_argument("--lora-rank", type=non_negative_int, default=None,
                       help="LoRA rank (default: full training; 64 with --qlora)")  # fmt: skip
    group.add_argument("--lora-alpha", type=float, default=None,
                       help="LoRA alpha (default 16); needs --lora-rank or --qlora")  # fmt: skip
    group.add_argument("--lora-targets", default=None,
                       help="comma-separated module names, all-linear, or attention (the "
                       "default: q_proj,k_proj,v_proj,o_proj on Llama; all-linear with --qlora)")  # fmt: skip
    group.add_argument("--qlora", action="store_true",
                       help="the standard QLoRA recipe (NF4 base with double quantization, bf16, "
                       "LoRA r=64 on all linear layers, full checkpointing, paged 8-bit AdamW); "
                       "any part can be overridden")  # fmt: skip
    group.add_argument("--freeze-embeddings", action="store_true")
    group.add_argument("--freeze-layers", type=non_negative_int, default=0,
                       help="freeze the first K layers")  # fmt: skip
    group.add_argument("--target", default="cuda", help="cuda (default) or cpu semantics")
    group.add_argument("--allow-long-seq", action="store_true",
                       help="allow a sequence beyond max_position_embeddings")  # fmt: skip


def default_seq(spec: ModelSpec | None) -> int:
    """:data:`DEFAULT_SEQ`, or the model's context when it is shorter (gpt2: 1024)."""
    if spec is None:
        return DEFAULT_SEQ
    return min(DEFAULT_SEQ, spec.max_position_embeddings)


def setup_from_args(args: Any, spec: ModelSpec | None = None) -> TrainingSetup:
    """The TrainingSetup the flags describe (one clear line for each bad value).

    ``--qlora`` fills every part the user left unset from :data:`QLORA_RECIPE`; the sequence
    length defaults to :func:`default_seq`."""
    from memplan.formulas.optimizer import optimizer_from_name

    recipe = QLORA_RECIPE if args.qlora else PLAIN_DEFAULTS
    rank = args.lora_rank if args.lora_rank is not None else recipe.lora_rank
    if args.lora_alpha is not None and rank == 0:
        raise SetupError(
            "--lora-alpha scales LoRA adapters: give --lora-rank R too (or --qlora), "
            "or drop --lora-alpha for full training"
        )
    if args.lora_targets is not None and rank == 0:
        raise SetupError("--lora-targets picks LoRA's modules: give --lora-rank R too (or --qlora)")
    targets_text = args.lora_targets if args.lora_targets is not None else recipe.lora_targets
    targets = tuple(t.strip() for t in targets_text.split(",") if t.strip())
    if spec is not None and rank:
        targets = lora_targets_for(spec, targets)
    return TrainingSetup(
        batch=args.batch,
        seq=args.seq if args.seq is not None else default_seq(spec),
        precision=_choice(Precision, args.precision or recipe.precision, "precision"),
        optimizer=optimizer_from_name(args.optimizer or recipe.optimizer),
        attention=_choice(Attention, args.attention, "attention"),
        checkpointing=_choice(
            Checkpointing, args.checkpointing or recipe.checkpointing, "checkpointing"
        ),
        dropout=args.dropout,
        fp32_grad_accumulation=args.fp32_grad_accumulation,
        lora_rank=rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else DEFAULT_LORA_ALPHA,
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
    parser.add_argument("--method", default="exact", help="exact or a textbook method (below)")
    add_gpu_flags(parser)
    add_parallel_flags(parser)
    add_output_flags(parser)
    add_plot_flag(parser)
    parser.set_defaults(func=run)


def build_report(args: Any, spec: ModelSpec | None = None) -> Report:
    """The Report ``memplan train`` prints for these arguments (the web API calls it too);
    ``spec`` replaces ``args.model`` when the model is already resolved (a pasted config)."""
    from memplan.catalog import resolve
    from memplan.estimate.training import estimate_training
    from memplan.formulas.methods_training import canonical_method

    spec = spec or resolve(args.model)
    setup = setup_from_args(args, spec)
    plan = plan_from_args(args, spec, micro_batch=setup.batch, seq=setup.seq)
    if plan is not None:
        return _parallel_report(args, spec, setup, plan)
    report = estimate_training(
        spec,
        setup,
        method=canonical_method(args.method),
        gpu=gpu_from_args(args),
        cuda_context_bytes=cuda_context_from_args(args),
    )
    report.scalars["verdict"] = _verdict(report, getattr(args, "decimal", False))
    return report


def run(args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    report = build_report(args)
    plot_if_asked(report, args)
    if getattr(args, "json", False):
        print_report(report, args, out)
        return 0
    if report.kind == "training/parallel":
        from memplan.cli.render_parallel import print_parallel_report

        if report.scalars.get("method", "exact") == "exact":
            print_parallel_report(report, args, out)
        else:
            print_report(report, args, out)
        out.write(str(report.scalars["verdict"]) + "\n")
        return 0
    _print_text(report, args, out)
    return 0


def _parallel_report(args: Any, spec: ModelSpec, setup: TrainingSetup, plan: Any) -> Report:
    """The per-rank report of a plan (or, with ``--method``, a published per-GPU formula)."""
    from memplan.estimate.dist_report import parallel_training_report
    from memplan.formulas.methods_parallel import parallel_method_report

    decimal = getattr(args, "decimal", False)
    question = f"training {spec.name} on {plan.world_size} GPUs"
    if args.method != "exact":
        report = parallel_method_report(spec, setup, plan, args.method)
        answer = f"{format_bytes(report.scalars['peak_bytes'], decimal=decimal)} per GPU"
        report.scalars["verdict"] = verdict_line(question, f"{answer} ({args.method})")
        return report
    report = parallel_training_report(spec, setup, plan, gpu=gpu_from_args(args))
    s = report.scalars
    answer = (
        f"peak {format_bytes(s['peak_bytes'], decimal=decimal)} on rank {s['worst_rank']} "
        f"({s['peak_phase']})"
    )
    fit = ""
    if "fits" in s:
        fit = f"fits on every rank of {s['gpu']}" if s["fits"] else f"does NOT fit on {s['gpu']}"
    s["verdict"] = verdict_line(question, answer, fit)
    return report


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
    setup = report.setup
    if "gpu" not in scalars:
        out.write(scalars["verdict"] + "\n")
        return
    for line in outside_lines(scalars, decimal=decimal):
        out.write(line + "\n")
    if "max_seq_len" not in scalars:  # a textbook method
        if "max_batch_size" in scalars:
            out.write(f"the method's largest batch: {none_if_zero(scalars['max_batch_size'])}\n")
        out.write(scalars["verdict"] + "\n")
        return
    out.write(
        f"largest micro-batch at seq {setup['seq']}: {none_if_zero(scalars['max_batch_size'])}\n"
    )
    out.write(
        f"longest sequence at batch {setup['batch']}: {none_if_zero(scalars['max_seq_len'])}\n"
    )
    levers = scalars.get("what_to_try") or []
    if levers:
        out.write("what to try (each alone, levers not already on):\n")
        width = max(len(lever["flags"]) for lever in levers)
        for lever in levers:
            then = "fits" if lever["fits"] else "still short"
            out.write(
                f"  {lever['flags']:<{width}}  -{format_bytes(lever['saved_bytes'], decimal=decimal)}"
                f" -> peak {format_bytes(lever['peak_bytes'], decimal=decimal)} ({then}): "
                f"{lever['name']}\n"
            )
    out.write(scalars["verdict"] + "\n")


def _verdict(report: Report, decimal: bool) -> str:
    scalars, setup = report.scalars, report.setup
    question = f"training step of {report.model} (batch {setup['batch']} x seq {setup['seq']})"
    answer = f"peak {format_bytes(scalars['peak_bytes'], decimal=decimal)} per GPU"
    if "gpu" not in scalars:
        return verdict_line(question, answer, "give --gpu NAME to check a fit")
    fit = fit_phrase(
        scalars["gpu"],
        scalars["gpu_memory_bytes"],
        scalars["headroom_bytes"],
        decimal=decimal,
        usable_bytes=scalars.get("usable_bytes"),
    )
    return verdict_line(question, answer, fit)
