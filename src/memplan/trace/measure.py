"""``--measure``: the real step, to set beside the trace.

On a GPU: the same training loop with random weights on ``cuda``, reading
``torch.cuda.memory_allocated`` / ``max_memory_allocated`` / ``memory_reserved`` at the same
phases as the trace (seed 000's table). On a CPU-only machine: the same code as the trace on
real cpu tensors (CPU kernels), which measures saved-tensor bytes exactly, plus the process's
peak RSS. Written for the GPU without one at hand: the GPU path has not been run.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from typing import Any

import torch

from memplan.errors import SetupError
from memplan.specs.training import Attention, Precision, TrainingSetup
from memplan.trace.optim import make_optimizer

__all__ = ["MAX_CPU_MEASURE_BYTES", "measure_training"]

MAX_CPU_MEASURE_BYTES = 4 * 2**30
"""Refuse a real CPU run whose parameters alone exceed this (the machine has to hold them)."""


def measure_training(config: dict[str, Any], setup: TrainingSetup, n_params: int) -> dict[str, Any]:
    """Measured bytes per phase (steady state) and ``reserved_bytes`` / ``rss_bytes``."""
    if torch.cuda.is_available():
        try:
            return _measure_cuda(config, setup)
        except torch.cuda.OutOfMemoryError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else "out of memory"
            raise SetupError(
                f"--measure: the real step does not fit on this GPU ({first_line})"
            ) from exc
    return _measure_cpu(config, setup, n_params)


def _measure_cpu(config: dict[str, Any], setup: TrainingSetup, n_params: int) -> dict[str, Any]:
    from dataclasses import replace

    from memplan.specs.training import Target
    from memplan.trace.assemble import saved_by_node
    from memplan.trace.timeline import Timeline
    from memplan.trace.training import run_training

    bytes_per_param = 2 if setup.precision in (Precision.BF16, Precision.FP16) else 4
    if n_params * bytes_per_param > MAX_CPU_MEASURE_BYTES:
        raise SetupError(
            f"--measure without a GPU runs the step for real on the CPU; "
            f"{n_params:,} parameters are too many for that (limit "
            f"{MAX_CPU_MEASURE_BYTES // 2**30} GiB of weights)"
        )
    cpu_setup = replace(setup, target=Target.CPU, attention=_cpu_attention(setup.attention))
    run = run_training(config, cpu_setup, fake=False)
    session = run.session
    sizes = [n for n in session.tracker.nbytes]
    timeline = Timeline.build(sizes, session.tracker.events)
    marks = run.iterations[1]
    saved = saved_by_node(session, timeline.live_at(marks.end_of_forward))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    return {
        "device": "cpu",
        "after_load": timeline.at(marks.start),
        "end_of_forward": timeline.at(marks.end_of_forward),
        "peak_backward": timeline.peak_between(marks.end_of_forward, marks.after_backward)[0],
        "after_backward": timeline.at(marks.after_backward),
        "optimizer_step": timeline.peak_between(marks.after_backward, marks.after_step)[0],
        "after_zero_grad": timeline.at(marks.after_zero_grad),
        "saved_tensor_bytes": int(saved.total),
        "rss_bytes": rss,
    }


def _cpu_attention(attention: Attention) -> Attention:
    return Attention.EAGER if attention is Attention.EAGER else Attention.SDPA


def _sdpa_context(attention: Attention) -> Any:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {
        Attention.FLASH: SDPBackend.FLASH_ATTENTION,
        Attention.MEM_EFFICIENT: SDPBackend.EFFICIENT_ATTENTION,
        Attention.CUDNN: SDPBackend.CUDNN_ATTENTION,
    }.get(attention)
    return sdpa_kernel(chosen) if chosen is not None else contextlib.nullcontext()


def _measure_cuda(config: dict[str, Any], setup: TrainingSetup) -> dict[str, Any]:
    from memplan.trace.training import _AUTOCAST_DTYPE, _prepare_model

    cuda = torch.cuda
    device = torch.device("cuda")
    with device:
        model = _prepare_model(config, setup)
    optimizer = make_optimizer(model.parameters(), setup.optimizer, cuda=True)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    input_ids = torch.randint(0, vocab, (setup.batch, setup.seq), device=device)
    labels = torch.randint(0, vocab, (setup.batch, setup.seq), device=device)
    autocast_dtype = _AUTOCAST_DTYPE.get(setup.precision)
    record: dict[str, Any] = {"device": cuda.get_device_name()}
    for _iteration in range(2):
        cuda.synchronize()
        record["after_load"] = cuda.memory_allocated()
        cuda.reset_peak_memory_stats()
        autocast = (
            torch.autocast("cuda", dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast, _sdpa_context(setup.attention):
            loss = model(input_ids=input_ids, labels=labels).loss
        record["end_of_forward"] = cuda.memory_allocated()
        record["peak_forward"] = cuda.max_memory_allocated()
        cuda.reset_peak_memory_stats()
        with _sdpa_context(setup.attention):
            loss.backward()
        del loss
        cuda.synchronize()
        record["peak_backward"] = cuda.max_memory_allocated()
        record["after_backward"] = cuda.memory_allocated()
        cuda.reset_peak_memory_stats()
        optimizer.step()
        cuda.synchronize()
        record["optimizer_step"] = cuda.max_memory_allocated()
        optimizer.zero_grad(set_to_none=True)
        record["after_zero_grad"] = cuda.memory_allocated()
    record["reserved_bytes"] = cuda.max_memory_reserved()
    free, total = cuda.mem_get_info()
    record["device_used_bytes"] = total - free
    return record
