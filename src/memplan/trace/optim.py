"""The optimizer of a traced step, with its implementation chosen as a GPU run would get it.

``torch.optim.AdamW()`` on CUDA tensors defaults to the foreach implementation, whose step
makes temporaries for all parameters at once; on fake tensors PyTorch would pick the for-loop
(TRACE-NOTES.md), so the implementation is always passed explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from memplan.errors import SetupError
from memplan.specs.training import Optimizer

__all__ = ["make_optimizer", "step_counters_on_host"]

_ANALYTIC_ONLY = {
    Optimizer.LION: "Lion is not in torch.optim",
    Optimizer.ADAMW_8BIT: "8-bit AdamW needs bitsandbytes, which has no CPU build here",
    Optimizer.PAGED_ADAMW_8BIT: "paged 8-bit AdamW needs bitsandbytes, which has no CPU build here",
}


def make_optimizer(
    params: Iterable[torch.nn.Parameter], optimizer: Optimizer, *, cuda: bool
) -> torch.optim.Optimizer:
    """The optimizer for ``params``; ``cuda`` picks the CUDA default implementation."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SetupError("nothing to train: every parameter is frozen")
    if optimizer in _ANALYTIC_ONLY:
        raise SetupError(
            f"the trace cannot run {optimizer.value}: {_ANALYTIC_ONLY[optimizer]}; "
            "use the analytic engine (memplan train) for it"
        )
    if optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FOREACH):
        foreach = True if optimizer is Optimizer.ADAMW_FOREACH else cuda
        return torch.optim.AdamW(params, lr=1e-4, foreach=foreach)
    if optimizer is Optimizer.ADAMW_FUSED:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if optimizer is Optimizer.ADAMW_FORLOOP:
        return torch.optim.AdamW(params, lr=1e-4, foreach=False)
    if optimizer is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=1e-4, foreach=cuda)
    if optimizer in (Optimizer.SGD, Optimizer.SGD_MOMENTUM):
        momentum = 0.9 if optimizer is Optimizer.SGD_MOMENTUM else 0.0
        return torch.optim.SGD(params, lr=1e-3, momentum=momentum, foreach=cuda)
    if optimizer is Optimizer.ADAFACTOR:
        from transformers.optimization import Adafactor

        # The transformers Adafactor that Trainer uses for optim="adafactor", with a fixed
        # learning rate (its relative-step schedule reads tensor values).
        return Adafactor(params, lr=1e-3, scale_parameter=False, relative_step=False)
    raise SetupError(f"the trace does not support the optimizer {optimizer.value}")


def step_counters_on_host(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """AdamW/Adam ``step`` tensors that live in host memory on a GPU run.

    torch/optim/adamw.py ``_init_group``: ``step`` is a cpu scalar tensor unless the
    optimizer is fused or capturable.
    """
    defaults = optimizer.defaults
    if defaults.get("fused") or defaults.get("capturable"):
        return []
    steps = []
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            steps.append(step)
    return steps
