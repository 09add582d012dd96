"""The trace engine: the real transformers model, with no weights, under fake tensors.

Needs torch and transformers (``pip install 'memplan[trace]'``). Importing this package does
not import torch; ``trace_training`` and ``trace_inference`` do.

Report contract (the analytic engine mirrors these keys; they are stable)
=======================================================================

``trace_training(model, setup, *, progress=None) -> Report`` (``kind="trace/training"``)

- ``breakdown``: root ``peak`` = live memory at the steady-state (second iteration) peak, in
  allocated bytes (CUDA target: each storage rounded up to 512 B), children in this order:
  ``parameters``, ``gradients``, ``optimizer_states``, ``activations``, ``autocast_cache``,
  ``temporaries``, ``inputs``, ``buffers`` (zero entries omitted, except ``parameters`` and
  ``activations``). A storage's category is its first of: parameters > buffers > gradients >
  optimizer_states > inputs > kv_cache > autocast_cache > activations (saved for backward, or
  held by the graph, or recomputed by checkpointing) > temporaries (everything else).
- ``activations`` children: ``embedding``, ``layers`` (children ``0``, ``1``, ... each with
  leaves ``<AutogradNode>.<field>`` such as ``MmBackward0.self``,
  ``ScaledDotProductEfficientAttentionBackward0.log_sumexp``; ``other`` where no node field
  holds the storage), ``final_norm``, ``lm_head``, ``loss``, ``other``.
- ``phases`` (steady state): ``after_load`` (before forward), ``end_of_forward`` (before
  backward), ``peak_backward``, ``after_backward``, ``optimizer_step`` (peak during the step),
  ``after_zero_grad``; then the same six for the first iteration, named ``first_step/<phase>``.
- scalars: ``peak_bytes``, ``peak_phase`` (``forward``, ``backward``, ``optimizer_step`` or
  ``zero_grad``), ``first_step_peak_bytes``, ``tensor_bytes_at_peak`` (unrounded),
  ``reserved_bytes`` (caching-allocator model, peak), ``reserved_bytes_at_peak``,
  ``fragmentation_bytes``, ``flops`` (forward + backward of one step,
  ``torch.utils.flop_counter`` formulas), ``total_params``, ``trainable_params``,
  ``trace_seconds``, ``n_ops``.
- sections: ``saved_by_node`` (tensor bytes saved for backward at the end of the forward, by
  ``Node.field``, unrounded, seed 003 style); ``activations_end_of_forward`` (the
  ``activations`` tree at the end of the steady-state forward, unrounded tensor bytes, whatever
  the peak); ``outside_tensors`` (CUDA target: named lines ``cuda_context``,
  ``cublas_workspace`` and ``allocator_reserved`` (reserved minus allocated at the peak), not
  included in ``peak_bytes``). CUDA target: the fit verdict on the emulated GPU (H100 unless
  named), as every command gives it (``memplan.estimate.fit``): ``gpu``,
  ``gpu_memory_bytes``, the outside lines as ``<line>_bytes``, ``usable_bytes``,
  ``headroom_bytes``, ``fits``, ``limit``.

``trace_parallel_training(model, setup, plan, *, ranks=None, progress=None) -> Report``
(``memplan.trace.parallel``; ``kind="training/parallel"``, ``method="trace"``): the shape of
the analytic per-rank report (``memplan.estimate.dist_report``): ``ranks`` entries (one per
traced rank) with ``peak_bytes``, ``peak_phase``, ``breakdown`` and ``phases`` with per-category
``breakdown``; the categories of a training report plus ``communication`` (children
``unsharded_parameters``, ``all_gather``, ``unsharded_gradients``, ``reduce_scatter``,
``ddp_buckets``); each entry's ``communication`` gives those lines per phase.

``trace_inference(model, setup, *, progress=None) -> Report`` (``kind="trace/inference"``)

- ``breakdown`` root ``peak``: ``parameters``, ``kv_cache``, ``activations`` (always 0 under
  no_grad, kept for symmetry), ``temporaries``, ``inputs``, ``buffers``.
- ``phases``: ``after_load``, ``prefill_peak``, ``after_prefill``, ``decode_peak``,
  ``after_decode``.
- scalars: ``peak_bytes``, ``peak_phase`` (``prefill`` or ``decode``), ``kv_cache_bytes``
  (at the end: keys, values and the cache layers' int64 counters), ``tensor_bytes_at_peak``,
  ``reserved_bytes``, ``reserved_bytes_at_peak``, ``flops`` (prefill + decode),
  ``total_params``, ``trace_seconds``; ``outside_tensors`` and the fit verdict as in training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memplan.trace.inference import trace_inference
    from memplan.trace.training import trace_training

__all__ = ["require_torch", "trace_inference", "trace_training"]

INSTALL_HINT = "the trace engine needs torch and transformers: {command}"


def require_torch() -> None:
    """Raise MissingExtraError (one line, with the install command) without torch."""
    from memplan.errors import MissingExtraError, install_command

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(INSTALL_HINT.format(command=install_command("trace"))) from exc


def __getattr__(name: str) -> Any:
    if name == "trace_training":
        require_torch()
        from memplan.trace.training import trace_training

        return trace_training
    if name == "trace_inference":
        require_torch()
        from memplan.trace.inference import trace_inference

        return trace_inference
    raise AttributeError(name)
