"""``memplan trace MODEL --train | --infer``: run the real model under fake tensors.

Importable without torch: torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from memplan.cli.common import non_negative_int, positive_int
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
        "run a real training step (twice) or a generation pass with the CUDA kernels' "
        "semantics, and record every allocation: the oracle the analytic commands are checked "
        "against. Needs the trace extra; no GPU.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, Hugging Face id, config.json or folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="trace a training step (default)")
    mode.add_argument("--infer", action="store_true", help="trace prefill and decode")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument(
        "--seq",
        type=positive_int,
        default=None,
        help="training sequence length (default 2048, or the model's context when shorter)",
    )
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--checkpointing", default="none")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--lora-rank", type=non_negative_int, default=0)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--freeze-layers", type=non_negative_int, default=0)
    parser.add_argument("--freeze-embeddings", action="store_true")
    parser.add_argument("--target", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--gpu", default=None, help="GPU whose kernels to emulate (default H100)")
    parser.add_argument("--allow-long-seq", action="store_true")
    parser.add_argument("--prompt-len", type=positive_int, default=512)
    parser.add_argument("--gen-len", type=non_negative_int, default=128)
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
    plan = None
    if not isinstance(model, dict):
        seq = args.seq if args.seq is not None else _default_seq(model)
        plan = plan_from_args(args, model, micro_batch=args.batch, seq=seq)
    if plan is not None:
        return _run_parallel(model, plan, args)
    progress = _progress_bar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    report = _infer(model, args, progress) if args.infer else _train(model, args, progress)
    if progress is not None:
        sys.stderr.write("\r\033[K")
    if not args.json:
        # one row per layer and saved field: JSON only (too long for a terminal)
        report.sections.pop("activations_end_of_forward", None)
    report.scalars["verdict"] = _verdict(report, args.decimal)
    print_report(report, args)
    if not args.json:
        if report.kind == "trace/training":
            print_step_table(report, sys.stdout, decimal=args.decimal)
        _print_answers(report, sys.stdout, args.decimal)
    return 0


def _verdict(report: Report, decimal: bool) -> str:
    from memplan.cli.render import verdict_line

    s = report.scalars
    what = "training step" if report.kind == "trace/training" else "generate"
    answer = (
        f"peak {format_bytes(s['peak_bytes'], decimal=decimal)} allocated "
        f"({s.get('peak_phase', '?')}), {format_bytes(s.get('reserved_bytes', 0), decimal=decimal)}"
        " reserved"
    )
    return verdict_line(f"traced {what} of {report.model}", answer)


def _print_answers(report: Report, out: TextIO, decimal: bool) -> None:
    """Allocated and reserved peaks side by side, the FLOPs, and the verdict."""
    s = report.scalars
    out.write(
        f"\npeak allocated: {format_bytes(s['peak_bytes'], decimal=decimal)}; reserved by the "
        f"caching allocator: {format_bytes(s.get('reserved_bytes', 0), decimal=decimal)} "
        "(nvidia-smi shows this plus the CUDA context)\n"
    )
    if "flops" in s:
        scope = (
            "forward + backward of one step"
            if report.kind == "trace/training"
            else ("prefill + decode")
        )
        out.write(f"FLOPs: {s['flops']:.4g} ({scope}, torch.utils.flop_counter formulas)\n")
    out.write(str(s["verdict"]) + "\n")


def _run_parallel(model: Any, plan: Any, args: argparse.Namespace) -> int:
    """A plan: the per-rank trace under a fake process group (``memplan.trace.parallel``)."""

    if args.infer:
        from memplan.errors import SetupError

        raise SetupError("--infer with a training plan: give --tp to memplan infer instead")
    from memplan.trace.parallel import trace_parallel_training

    progress = _progress_bar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    report = trace_parallel_training(model, _training_setup(model, args), plan, progress=progress)
    if progress is not None:
        sys.stderr.write("\r\033[K")
    if args.json:
        print_report(report, args)
        return 0
    from memplan.cli.render_parallel import print_parallel_report

    print_parallel_report(report, args, sys.stdout)
    return 0


def _training_setup(model: Any, args: argparse.Namespace) -> Any:
    """The TrainingSetup the trace flags describe (shared by ``_train`` and a plan)."""
    from memplan.specs.training import (
        Attention,
        Checkpointing,
        Optimizer,
        Precision,
        Target,
        TrainingSetup,
    )

    return TrainingSetup(
        batch=args.batch,
        seq=args.seq if args.seq is not None else _default_seq(model),
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


def _train(model: Any, args: argparse.Namespace, progress: Any) -> Report:
    from memplan.trace.training import trace_training

    setup = _training_setup(model, args)
    report = trace_training(model, setup, progress=progress)
    if args.measure:
        from memplan.trace.build import config_of
        from memplan.trace.measure import measure_training

        _, config = config_of(model)
        measured = measure_training(config, setup, int(report.scalars["total_params"]))
        report.scalars["measured"] = measured
    return report


def _default_seq(model: Any) -> int:
    """2048, or the model's context when shorter (a ModelSpec or a raw config dict)."""
    from memplan.specs.training import DEFAULT_SEQ

    if isinstance(model, dict):
        context = model.get("max_position_embeddings") or model.get("n_positions") or DEFAULT_SEQ
        return min(DEFAULT_SEQ, int(context))
    return min(DEFAULT_SEQ, model.max_position_embeddings)


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
        gpu=args.gpu,
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
