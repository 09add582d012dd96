"""``memplan trace MODEL --train | --infer``: run the real model under fake tensors.

Importable without torch: torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from memplan.cli.parallel import add_parallel_flags, plan_from_args
from memplan.cli.render import add_output_flags, print_report
from memplan.report import Report
from memplan.units import format_bytes

__all__ = ["register", "resolve_model", "run"]

EXAMPLES = """\
examples:
  memplan trace llama-2-7b --train --batch 1 --seq 2048 --precision bf16 --optimizer adamw
  memplan trace ./config.json --train --precision bf16-mixed --checkpointing full
  memplan trace qwen2.5-7b --train --lora-rank 16 --lora-targets q_proj,v_proj
  memplan trace llama-3.2-1b --infer --batch 8 --prompt-len 1024 --gen-len 128
"""

SEED_000_ROWS = (
    ("after_load", "before forward"),
    ("end_of_forward", "before backward"),
    ("peak_backward", "peak in backward"),
    ("after_backward", "after backward"),
    ("optimizer_step", "peak in optimizer step"),
    ("after_zero_grad", "after clearing gradients"),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="trace the real model's memory under fake tensors (needs the trace extra)",
        description="Build the transformers model with no weights under PyTorch fake tensors, "
        "run a real training step (twice) or a generation pass, and record every allocation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, Hugging Face id, config.json or folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="trace a training step (default)")
    mode.add_argument("--infer", action="store_true", help="trace prefill and decode")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048, help="training sequence length")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--checkpointing", default="none")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--freeze-layers", type=int, default=0)
    parser.add_argument("--freeze-embeddings", action="store_true")
    parser.add_argument("--target", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--gpu", default=None, help="GPU whose kernels to emulate (default H100)")
    parser.add_argument("--allow-long-seq", action="store_true")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--weights", default="bf16", help="inference weight dtype")
    parser.add_argument("--kv-dtype", default="auto")
    parser.add_argument("--cache", default="dynamic", choices=("dynamic", "static"))
    parser.add_argument("--measure", action="store_true", help="run the real step beside it")
    parser.add_argument("--progress", action="store_true", help="progress bar even off a tty")
    add_parallel_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(func=run)


def resolve_model(name: str) -> Any:
    """The ModelSpec of a catalog name, config.json or model folder, validated like every
    other command; for a model_type memplan cannot parse, the raw config dict (transformers
    still builds it)."""
    from memplan.catalog import resolve
    from memplan.catalog.local import read_config_file
    from memplan.specs.hf import UnsupportedModelTypeError

    try:
        return resolve(name)
    except UnsupportedModelTypeError:
        path = Path(name)
        return read_config_file(path / "config.json" if path.is_dir() else path)


def run(args: argparse.Namespace) -> int:
    from memplan.trace import require_torch

    require_torch()
    model = resolve_model(args.model)
    plan = plan_from_args(args, model if not isinstance(model, dict) else None)
    if plan is not None:
        return _run_parallel(model, plan, args)
    progress = _progress_bar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    report = _infer(model, args, progress) if args.infer else _train(model, args, progress)
    if progress is not None:
        sys.stderr.write("\r\033[K")
    if not args.json:
        # one row per layer and saved field: JSON only (too long for a terminal)
        report.sections.pop("activations_end_of_forward", None)
    print_report(report, args)
    if not args.json and report.kind == "trace/training":
        print_step_table(report, sys.stdout)
    return 0


def _run_parallel(model: Any, plan: Any, args: argparse.Namespace) -> int:
    """A plan: the per-rank trace under a fake process group (``memplan.trace.parallel``)."""
    from memplan.cli.train import setup_from_args

    if args.infer:
        from memplan.errors import SetupError

        raise SetupError("--infer with a training plan: give --tp to memplan infer instead")
    args.lora_targets = getattr(args, "lora_targets", "")
    args.fp32_grad_accumulation = False
    args.qlora = False
    from memplan.trace.parallel import trace_parallel_training

    progress = _progress_bar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    report = trace_parallel_training(model, setup_from_args(args), plan, progress=progress)
    if progress is not None:
        sys.stderr.write("\r\033[K")
    if args.json:
        print_report(report, args)
        return 0
    from memplan.cli.render_parallel import print_parallel_report

    print_parallel_report(report, args, sys.stdout)
    return 0


def _train(model: Any, args: argparse.Namespace, progress: Any) -> Report:
    from memplan.specs.training import (
        Attention,
        Checkpointing,
        Optimizer,
        Precision,
        Target,
        TrainingSetup,
    )
    from memplan.trace.training import trace_training

    setup = TrainingSetup(
        batch=args.batch,
        seq=args.seq,
        precision=_choice(Precision, args.precision, "--precision"),
        optimizer=_choice(Optimizer, args.optimizer, "--optimizer"),
        attention=_choice(Attention, args.attention, "--attention"),
        checkpointing=_choice(Checkpointing, args.checkpointing, "--checkpointing"),
        dropout=args.dropout,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=tuple(t for t in args.lora_targets.split(",") if t),
        freeze_layers=args.freeze_layers,
        freeze_embeddings=args.freeze_embeddings,
        target=Target(args.target),
        gpu=args.gpu,
        allow_long_seq=args.allow_long_seq,
    )
    report = trace_training(model, setup, progress=progress)
    if args.measure:
        from memplan.trace.build import config_of
        from memplan.trace.measure import measure_training

        _, config = config_of(model)
        measured = measure_training(config, setup, int(report.scalars["total_params"]))
        report.scalars["measured"] = measured
    return report


def _infer(model: Any, args: argparse.Namespace, progress: Any) -> Report:
    from memplan.specs.inference import InferenceSetup
    from memplan.trace.inference import trace_inference

    setup = InferenceSetup(
        batch=args.batch,
        prompt_len=args.prompt_len,
        gen_len=args.gen_len,
        weights=args.weights,
        kv_dtype=args.kv_dtype,
        attention=args.attention,
        cache=args.cache,
        target=args.target,
    )
    if args.measure:
        from memplan.errors import SetupError

        raise SetupError("--measure is implemented for --train only")
    return trace_inference(model, setup, progress=progress)


def _choice(enum: Any, value: str, flag: str) -> Any:
    from memplan.errors import SetupError

    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise SetupError(f"{flag} {value!r} is not one of: {choices}") from None


def print_step_table(report: Report, out: TextIO, *, decimal: bool = False) -> None:
    """Seed 000's table (before forward / before backward / after backward / after clearing
    gradients), with the measured figure beside each row when --measure ran."""
    phases = {p.name: p.bytes for p in report.phases}
    measured = report.scalars.get("measured") or {}
    out.write("\nstep (steady state)               traced")
    out.write(f"        measured ({measured.get('device')})\n" if measured else "\n")
    for name, label in SEED_000_ROWS:
        traced = format_bytes(phases.get(name, 0), decimal=decimal)
        line = f"  {label:<28} {traced:>12}"
        if name in measured:
            line += f"  {format_bytes(measured[name], decimal=decimal):>12}"
        out.write(line + "\n")
    for key in ("reserved_bytes", "saved_tensor_bytes", "rss_bytes"):
        if key in measured:
            out.write(f"  measured {key:<19} {format_bytes(measured[key], decimal=decimal):>12}\n")


def _progress_bar(stream: TextIO) -> Any:
    width = 30
    columns = os.environ.get("COLUMNS")
    if columns and columns.isdigit():
        width = max(10, min(40, int(columns) // 3))

    def show(message: str, fraction: float) -> None:
        filled = int(width * max(0.0, min(1.0, fraction)))
        stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% {message}\033[K"
        )
        stream.flush()

    return show
