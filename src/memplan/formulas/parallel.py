"""Per-rank sizes under data, tensor, pipeline, context and expert parallelism.

**Contract (issue 10's search evaluates these on NumPy arrays):** every function below is plain
arithmetic on its arguments: no ``if`` on a value, no ``max()``/``min()`` builtins, no Python
loops whose trip count depends on a degree. Choices go through :func:`where`, :func:`maximum`,
:func:`minimum` and :func:`ceil_div`, which work on ints and, unchanged, on NumPy integer
arrays (a plan grid). Booleans enter as 0/1 (``flag * x``). Per-model constants (tensor shapes,
saved-tensor terms) are computed once elsewhere and passed in as numbers.

Sources, one per rule:

- FSDP2 ``fully_shard`` shards every parameter on dim 0 with ``torch.chunk`` semantics and pads
  each rank's storage to ``ceil(d0 / W) * rest`` elements, the last rank included; gradients
  likewise; optimizer states are created from the unpadded local view, ``clamp(d0 - r *
  ceil(d0/W), 0, ceil(d0/W)) * rest`` elements on rank r (``torch/distributed/fsdp/_fully_shard/
  _fsdp_param.py``; measured, DIST-NOTES.md). The all-gather output is ``W * ceil(d0/W) * rest``.
- DeepSpeed ZeRO-1/2 flatten each parameter group and pad it to a multiple of
  ``2 * W`` elements (``nccl_start_alignment_factor = 2``, ``stage_1_and_2.py``), then give each
  rank ``1/W`` of it; ZeRO-3 pads each parameter to a multiple of W (``_padding_size``,
  ``partition_parameters.py``) and keeps ``ceil(numel / W)`` per rank.
- Pipeline in-flight micro-batches: 1F1B stage ``i`` of ``p`` holds ``min(p - i, M)``; GPipe
  all ``M``; interleaved 1F1B with ``v`` chunks holds, on its first rank, ``(v - 1) * p + (p - i)
  * 1`` chunk-micro-batches at most (Narayanan et al. 2021, section 2.2; Megatron-LM
  ``get_num_microbatches`` warm-up ``(p - i - 1) * 2 + (v - 1) * p``).
- Pipeline bubble fraction ``(p - 1) / (v * M)`` (Narayanan et al. 2021, eq. in section 2.2).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ceil_div",
    "deepspeed_flat_padded_numel",
    "fsdp_local_view_numel",
    "fsdp_padded_shard_numel",
    "in_flight_chunks",
    "layers_in_stage",
    "maximum",
    "minimum",
    "pipeline_bubble_fraction",
    "round_up",
    "where",
    "zero3_partition_numel",
]

Num = Any
"""An int, a float, or a NumPy array of them (a plan grid)."""


def where(cond: Num, a: Num, b: Num) -> Num:
    """``a`` where ``cond`` else ``b``; ``cond`` is a bool or a 0/1 array (arithmetic select)."""
    return cond * a + (1 - cond) * b


def maximum(a: Num, b: Num) -> Num:
    """Elementwise maximum without a Python branch."""
    return where(a >= b, a, b)


def minimum(a: Num, b: Num) -> Num:
    """Elementwise minimum without a Python branch."""
    return where(a <= b, a, b)


def ceil_div(a: Num, b: Num) -> Num:
    """``ceil(a / b)`` for non-negative integers (ints or integer arrays)."""
    return -(-a // b)


def round_up(n_bytes: Num, block: Num) -> Num:
    """``n_bytes`` rounded up to ``block`` (the caching allocator's 512 B; 1 on CPU)."""
    return ceil_div(n_bytes, block) * block


def fsdp_padded_shard_numel(d0: Num, rest: Num, world: Num) -> Num:
    """Elements of one rank's FSDP2 shard storage: ``ceil(d0 / W) * rest`` (padded)."""
    return ceil_div(d0, world) * rest


def fsdp_local_view_numel(d0: Num, rest: Num, world: Num, rank: Num) -> Num:
    """Elements of rank ``rank``'s unpadded local view (what optimizer states copy)."""
    chunk = ceil_div(d0, world)
    rows = minimum(maximum(d0 - rank * chunk, 0), chunk)
    return rows * rest


def deepspeed_flat_padded_numel(numel: Num, world: Num) -> Num:
    """ZeRO-1/2's flat parameter group, padded to a multiple of ``2 * W`` elements."""
    return round_up(numel, 2 * world)


def zero3_partition_numel(numel: Num, world: Num) -> Num:
    """ZeRO-3's ``ds_tensor`` elements on every rank: ``ceil(numel / W)``."""
    return ceil_div(numel, world)


def layers_in_stage(n_layers: Num, chunks: Num, chunk: Num) -> Num:
    """Decoder layers in model chunk ``chunk`` of ``chunks`` (= pp * virtual stages): an even
    split, the first ``n_layers % chunks`` chunks one layer more (torchtitan's split)."""
    return n_layers // chunks + (chunk < n_layers % chunks)


def first_layer_of_chunk(n_layers: Num, chunks: Num, chunk: Num) -> Num:
    """Index of the first decoder layer of model chunk ``chunk``."""
    base = n_layers // chunks
    extra = n_layers % chunks
    return chunk * base + minimum(chunk, extra)


def in_flight_chunks(stage: Num, pp: Num, micro_batches: Num, virtual: Num, gpipe: Num) -> Num:
    """Micro-batches whose activations one pipeline rank holds at its peak, counted in model
    chunks of ``1 / virtual`` of the rank's layers.

    GPipe: all ``M`` forwards before any backward, every chunk: ``M * v``. 1F1B (v = 1):
    ``min(p - stage, M)``. Interleaved (v > 1): the warm-up forwards
    ``(p - stage - 1) * 2 + (v - 1) * p`` plus the one in steady state, at most ``M * v``.
    """
    one_f_one_b = minimum(pp - stage, micro_batches)
    interleaved = minimum((pp - stage - 1) * 2 + (virtual - 1) * pp + 1, micro_batches * virtual)
    steady = where(virtual > 1, interleaved, one_f_one_b * virtual)
    return where(gpipe, micro_batches * virtual, steady)


def pipeline_bubble_fraction(pp: Num, micro_batches: Num, virtual: Num) -> Num:
    """Idle share of a pipeline step relative to its compute: ``(p - 1) / (v * M)``."""
    return (pp - 1) / (virtual * micro_batches)
