"""``trace_training``: one real training step, twice, on the real model with no weights.

Iteration 1 creates the optimizer states; iteration 2 is the steady state the report gives
(seed 000's table: before forward, before backward, after backward, after clearing gradients).
The loop is the one ``transformers.Trainer`` runs: ``loss = model(**batch).loss`` (the logits
are dropped), ``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad()`` (gradients
set to None).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from memplan.errors import SetupError
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.specs.training import Attention, Checkpointing, Precision, Target, TrainingSetup
from memplan.trace.assemble import IterationMarks, training_report
from memplan.trace.build import (
    apply_freezing,
    apply_lora,
    build_model,
    check_seq_len,
    config_of,
    grouped_mm_policy,
    supports_sdpa,
    unpadded_mask_skips,
)
from memplan.trace.cuda_env import gpu_arch
from memplan.trace.optim import make_optimizer, step_counters_on_host
from memplan.trace.session import TraceSession
from memplan.trace.tracker import Flag

__all__ = ["TrainingRun", "run_training", "trace_training"]

Progress = Callable[[str, float], None]

_PARAM_DTYPE = {
    Precision.FP32: torch.float32,
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
    Precision.FP16_MIXED: torch.float32,
    Precision.BF16_MIXED: torch.float32,
}
_AUTOCAST_DTYPE = {Precision.FP16_MIXED: torch.float16, Precision.BF16_MIXED: torch.bfloat16}
_SDPA_BACKEND = {
    Attention.SDPA: "auto",
    Attention.EAGER: "auto",
    Attention.FLASH: "flash",
    Attention.MEM_EFFICIENT: "mem-efficient",
    Attention.CUDNN: "cudnn",
}


@dataclass
class TrainingRun:
    """What a traced (or real) run leaves behind for the report."""

    session: TraceSession
    iterations: list[IterationMarks] = field(default_factory=list)
    keep: set[int] = field(default_factory=set)
    seconds: float = 0.0
    build_seconds: float = 0.0
    """Of ``seconds``: building the model (bench/bench_trace.py prints the split)."""
    build_cpu_seconds: float = 0.0
    n_params: int = 0
    n_trainable: int = 0
    backends: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def trace_training(
    model: ModelSpec | dict[str, Any],
    setup: TrainingSetup,
    *,
    progress: Progress | None = None,
    fake: bool = True,
) -> Report:
    """Trace two training iterations of ``model`` under ``setup`` and report the memory.

    ``fake=False`` runs the same code on real cpu tensors (small models only): the exactness
    tests compare the two.
    """
    name, config = config_of(model)
    run = run_training(config, setup, progress=progress, fake=fake, name=name)
    return training_report(name, setup, run.session, run)


def run_training(
    config: dict[str, Any],
    setup: TrainingSetup,
    *,
    progress: Progress | None = None,
    fake: bool = True,
    name: str = "model",
) -> TrainingRun:
    """Build and run; returns the session (tracker and marks) for the report."""
    started, started_cpu = time.perf_counter(), time.process_time()
    tick = progress or (lambda message, fraction: None)
    _check_setup(name, config, setup, fake)
    cuda = setup.target is Target.CUDA
    precision = setup.precision
    session = TraceSession(
        fake=fake,
        cuda=cuda,
        arch=gpu_arch(setup.gpu),
        sdpa_backend=_SDPA_BACKEND[setup.attention],
        autocast_dtype=_AUTOCAST_DTYPE.get(precision),
    )
    session.checkpointed_layers = setup.checkpointing is Checkpointing.FULL
    run = TrainingRun(session)
    attention = _attention_impl(config, setup.attention)
    if attention != setup.attention.value and setup.attention is Attention.SDPA:
        run.notes.append(
            f"{config.get('model_type')} has no sdpa attention in transformers: traced with eager"
        )
    if setup.is_lora:
        import peft.tuners  # noqa: F401  (its module-level tensors must not enter the trace)
    tick("building the model", 0.0)
    with session, grouped_mm_policy(_PARAM_DTYPE[precision]), unpadded_mask_skips():
        model = _prepare_model(config, setup, attention)
        session.register_model(model)
        session.wrap_checkpointing(model)
        run.build_seconds = time.perf_counter() - started
        run.build_cpu_seconds = time.process_time() - started_cpu
        run.n_params = sum(p.numel() for p in model.parameters())
        run.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tracker = session.tracker
        vocab = int(model.get_input_embeddings().weight.shape[0])
        input_ids = torch.randint(0, vocab, (setup.batch, setup.seq))
        labels = torch.randint(0, vocab, (setup.batch, setup.seq))
        for tensor in (input_ids, labels):
            tracker.flag(tensor, Flag.INPUT)
        run.keep = {tracker.key(input_ids), tracker.key(labels)}
        optimizer = make_optimizer(model.parameters(), setup.optimizer, cuda=cuda)
        session.flag_gradients(model)
        total_ops = [0]

        def on_op(n_ops: int) -> None:
            if total_ops[0]:
                tick("iteration 2 of 2", 0.5 + 0.5 * min(1.0, n_ops / total_ops[0]))
            else:
                tick("iteration 1 of 2", min(0.49, n_ops / 2e5))

        tracker.on_op = on_op
        for iteration in range(2):
            ops_before = tracker.n_ops
            tracker.count_flops = iteration == 1
            session.collect()
            marks = IterationMarks(start=tracker.mark())
            with session.autocast():
                loss = model(input_ids=input_ids, labels=labels).loss
            marks.end_of_forward = tracker.mark()
            session.name_saved_fields(loss.grad_fn)
            session.flag_graph_held(marks.start, run.keep | {tracker.key(loss)})
            session.in_backward = True
            loss.backward()
            session.in_backward = False
            del loss
            marks.after_backward = tracker.mark()
            optimizer.step()
            _flag_optimizer(optimizer, session, cuda)
            marks.after_step = tracker.mark()
            optimizer.zero_grad(set_to_none=True)
            session.collect()
            marks.after_zero_grad = tracker.mark()
            run.iterations.append(marks)
            if iteration == 0:
                total_ops[0] = tracker.n_ops - ops_before
        if session.emulation is not None:
            run.backends = dict(session.emulation.backends_used)
    run.seconds = time.perf_counter() - started
    tick("done", 1.0)
    return run


def _check_setup(name: str, config: dict[str, Any], setup: TrainingSetup, fake: bool) -> None:
    check_seq_len(name, config, setup.seq, setup.allow_long_seq)
    if setup.precision not in _PARAM_DTYPE:
        raise SetupError(
            f"the trace runs plain PyTorch training; {setup.precision.value} (DeepSpeed) is "
            "analytic only: use memplan train"
        )
    if setup.qlora:
        raise SetupError("QLoRA needs bitsandbytes (no CPU build here): analytic only")
    if setup.checkpointing is Checkpointing.SELECTIVE:
        raise SetupError(
            "selective recomputation is a Megatron feature transformers does not have: "
            "analytic only (the trace supports --checkpointing full)"
        )
    if setup.target is Target.CPU and setup.attention in (
        Attention.FLASH,
        Attention.MEM_EFFICIENT,
        Attention.CUDNN,
    ):
        raise SetupError(
            f"--attention {setup.attention.value} is a CUDA kernel; with --target cpu use sdpa or eager"
        )


def _attention_impl(config: dict[str, Any], attention: Attention) -> str:
    """``eager`` or ``sdpa`` (the transformers implementation to build)."""
    if attention is Attention.EAGER:
        return "eager"
    if supports_sdpa(config):
        return "sdpa"
    if attention is Attention.SDPA:
        return "eager"
    raise SetupError(
        f"{config.get('model_type')}: transformers has no sdpa attention for this family, so "
        f"the {attention.value} kernel cannot run; use --attention eager"
    )


def _prepare_model(
    config: dict[str, Any], setup: TrainingSetup, attention: str | None = None
) -> torch.nn.Module:
    model = build_model(
        config,
        dtype=_PARAM_DTYPE[setup.precision],
        attention=attention or _attention_impl(config, setup.attention),
        dropout=setup.dropout,
    )
    model.train()
    if setup.checkpointing is Checkpointing.FULL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
    if setup.is_lora:
        for param in model.parameters():
            param.requires_grad_(False)
        model = apply_lora(
            model,
            rank=setup.lora_rank,
            alpha=setup.lora_alpha,
            targets=tuple(setup.lora_targets),
            dropout=setup.dropout or 0.0,
        )
        if setup.checkpointing is Checkpointing.FULL:
            model.enable_input_require_grads()
    apply_freezing(
        model, freeze_layers=setup.freeze_layers, freeze_embeddings=setup.freeze_embeddings
    )
    return model


def _flag_optimizer(optimizer: torch.optim.Optimizer, session: TraceSession, cuda: bool) -> None:
    tracker = session.tracker
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.flag(value, Flag.OPTIMIZER_STATE)
    if cuda:
        for step in step_counters_on_host(optimizer):
            tracker.flag(step, Flag.HOST)
