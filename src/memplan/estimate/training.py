"""``estimate_training(spec, setup) -> Report``: per-GPU memory of one training step, no torch.

The step is the one the trace engine runs (``memplan.trace.training``) and Trainer runs:
``loss = model(input_ids=..., labels=...).loss`` (the logits are dropped), ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()`` (gradients set to None), twice; the steady
state is the second iteration (optimizer states live throughout); the first step allocates the
states inside ``step()``.

Everything that does not depend on batch and sequence length is computed once per
(spec, setup) and cached (:func:`training_plan`): parameters tensor by tensor, gradients,
optimizer states, autocast copies, and the saved-tensor terms of every distinct layer
(``memplan.formulas.activations``). The per-(B, S) path (:func:`evaluate`) is integer
arithmetic over a few dozen terms, each rounded to the allocator's 512-byte blocks. The one
thing (B, S) can change in a plan is the attention kernel (``memplan.estimate.train_kernels``:
a sliding window the sequence reaches makes transformers build a mask; cuDNN's limits): a plan
is cached per kernel choice, which follows the setup's GPU as the trace does.

Timeline (``static`` = parameters + buffers + optimizer states + inputs):

- ``after_load``: static (before the forward).
- ``end_of_forward``: + saved activations + the half weight copies autocast cached (held by the
  graph) + the loss scalar.
- inside the forward the loss is the high point: half logits, their fp32 copy and the fp32
  log-softmax beside everything saved, plus, under AMP, the fp32 k/v copies ``DynamicCache``
  holds and the final norm's fp32 output (``forward`` when it is the peak).
- ``peak_backward``: the largest of: log-softmax's backward (two fp32 (B*S, V) gradients, the
  int64 targets already released); the final RMSNorm's backward (five fp32 (B, S, H)
  temporaries, lm_head's gradient out); the last layer's MLP multiply (its down-projection's
  input released, weight gradient out, three (B, S, I) gradients in flight); with full
  checkpointing the layer being recomputed adds its activations and autocast copies back.
- ``after_backward``: static + gradients. ``optimizer_step``: + the step's temporaries
  (``memplan.formulas.optimizer``). ``after_zero_grad``: static.

These are checked against the trace byte for byte on size-reduced configs of seven families
(``tests/test_training_exact.py``) and at full size (``scripts/accuracy_training.py``).
"""

from __future__ import annotations

from memplan.estimate.train_plan import TrainingPlan, attention_kernels, training_plan
from memplan.estimate.train_report import _report
from memplan.estimate.train_setup import validate_setup
from memplan.estimate.train_step import (
    PHASES,
    StepMemory,
    _plan_key,
    evaluate,
    training_peak_bytes,
)
from memplan.report import Report
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = [
    "PHASES",
    "StepMemory",
    "TrainingPlan",
    "estimate_training",
    "evaluate",
    "training_peak_bytes",
    "training_plan",
    "validate_setup",
]


def estimate_training(
    spec: ModelSpec,
    setup: TrainingSetup,
    *,
    method: str = "exact",
    gpu: Gpu | None = None,
    cuda_context_bytes: int | None = None,
) -> Report:
    """Per-GPU memory of one training step of ``spec`` under ``setup``.

    ``method="exact"`` (default) is the op-by-op accounting above; the textbook methods
    (``memplan.formulas.methods_training``) are selectable by name and labelled as such. With
    a ``gpu``, the fit verdict of :mod:`memplan.estimate.fit` (the CUDA context, the cuBLAS
    workspaces of its architecture, the largest batch and sequence) joins the scalars.
    """
    validate_setup(spec, setup)
    if method != "exact":
        from memplan.formulas.methods_training import method_report

        report = method_report(spec, setup, method)
    else:
        kernels = attention_kernels(spec, setup, setup.batch, setup.seq)
        plan = training_plan(spec, _plan_key(setup), kernels)
        report = _report(plan, setup, evaluate(plan, setup.batch, setup.seq))
    if gpu is not None:
        from memplan.estimate.fit import training_fit_scalars

        report.scalars.update(
            training_fit_scalars(
                spec,
                setup,
                gpu,
                int(report.scalars["peak_bytes"]),
                method=method,
                peak_phase=str(report.scalars.get("peak_phase", "")),
                cuda_context_bytes=cuda_context_bytes,
            )
        )
    return report
