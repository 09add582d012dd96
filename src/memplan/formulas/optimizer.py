"""Optimizer memory: the state tensors each optimizer keeps per parameter, and its step's temporaries.

Sources (torch 2.13 ``torch/optim``; bitsandbytes ``optim/optimizer.py``):

- ``Adam``/``AdamW``: ``exp_avg`` and ``exp_avg_sq`` in the parameter dtype (``zeros_like``);
  ``step`` is a host scalar except for the fused and capturable variants (a 4-byte device
  tensor, one allocator block each). The foreach step (the CUDA default) materialises
  ``exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)`` for all parameters at once: one extra copy of
  the parameters in their dtype. The for-loop step builds ``exp_avg_sq.sqrt() / bc2`` one
  parameter at a time (two temporaries of the largest parameter). The fused kernel makes none.
- ``SGD``: no state; with momentum a ``momentum_buffer`` (a clone of the first gradient).
- ``Adafactor`` (``transformers.optimization.Adafactor``, Trainer's ``optim="adafactor"``): a
  factored fp32 second moment, ``exp_avg_sq_row`` (``shape[:-1]``) and ``exp_avg_sq_col``
  (``shape[:-2] + shape[-1:]``) for matrices, a full ``exp_avg_sq`` for vectors, no first
  moment (``beta1=None``), and ``RMS``, a 0-d tensor. Its step loops over parameters.
- ``Lion``: one ``exp_avg``; its (for-loop) step clones it and adds the gradient: two
  temporaries of the largest parameter.
- bitsandbytes ``AdamW8bit``: ``state1``/``state2`` uint8 and, block-wise, ``absmax1``/``absmax2``
  fp32 with one value per block of 256 (``blocks = ceil(n / 256)``); parameters under
  ``min_8bit_size = 4096`` elements keep fp32 states; two shared 256-entry fp32 quantization maps.
  Its CUDA kernels update in place. The paged variant allocates the states in CUDA unified
  memory, which the driver pages out to the host under memory pressure.
"""

from __future__ import annotations

from memplan.errors import SetupError
from memplan.formulas.allocator import alloc_bytes
from memplan.specs.training import Optimizer

__all__ = [
    "BNB_BLOCK_SIZE",
    "BNB_MIN_8BIT_SIZE",
    "optimizer_from_name",
    "optimizer_shared_state_bytes",
    "optimizer_state_allocations",
    "optimizer_step_temporary_bytes",
    "states_per_param_label",
]

BNB_BLOCK_SIZE = 256
"""bitsandbytes block-wise 8-bit optimizers: one fp32 absmax per 256 values."""
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes ``min_8bit_size``: smaller parameters keep 32-bit states."""
_ADAM = (
    Optimizer.ADAMW,
    Optimizer.ADAMW_FOREACH,
    Optimizer.ADAMW_FUSED,
    Optimizer.ADAMW_FORLOOP,
    Optimizer.ADAM,
)
_EIGHT_BIT = (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT)


def optimizer_from_name(name: str) -> Optimizer:
    """The :class:`Optimizer` called ``name`` (``adamw``, ``sgd-momentum``, ...) or a clear error."""
    try:
        return Optimizer(name.lower())
    except ValueError:
        known = ", ".join(o.value for o in Optimizer)
        raise SetupError(f"unknown optimizer {name!r}: choose one of {known}") from None


def optimizer_state_allocations(
    optimizer: Optimizer, numel: int, shape: tuple[int, ...], state_bytes: int
) -> tuple[int, ...]:
    """Byte sizes of the state tensors ``optimizer`` allocates for one parameter (unrounded)."""
    if optimizer in _ADAM:
        states = (numel * state_bytes, numel * state_bytes)
        return (*states, 4) if optimizer is Optimizer.ADAMW_FUSED else states
    if optimizer is Optimizer.SGD:
        return ()
    if optimizer is Optimizer.SGD_MOMENTUM or optimizer is Optimizer.LION:
        return (numel * state_bytes,)
    if optimizer is Optimizer.ADAFACTOR:
        # transformers' Adafactor (what Trainer's optim="adafactor" builds): fp32 factored
        # second moment, and ``state["RMS"]``, a 0-d fp32 tensor per parameter.
        if len(shape) >= 2:
            return (numel // shape[-1] * 4, numel // shape[-2] * 4, 4)
        return (numel * 4, 4)
    if optimizer in _EIGHT_BIT:
        if numel < BNB_MIN_8BIT_SIZE:
            return (numel * 4, numel * 4)
        blocks = -(-numel // BNB_BLOCK_SIZE)
        return (numel, numel, blocks * 4, blocks * 4)
    raise SetupError(f"no state model for optimizer {optimizer.value!r}")


def optimizer_shared_state_bytes(optimizer: Optimizer) -> tuple[int, ...]:
    """Allocations shared by all parameters: bitsandbytes' two 256-entry fp32 quantization maps."""
    if optimizer in _EIGHT_BIT:
        return (256 * 4, 256 * 4)
    return ()


def optimizer_step_temporary_bytes(
    optimizer: Optimizer, sizes: list[int], largest: int, round_to: int, state_bytes: int = 4
) -> int:
    """Peak extra bytes inside ``optimizer.step()`` beyond states, parameters and gradients.

    ``sizes``: bytes of each trainable parameter in the state dtype (unrounded); ``largest``:
    the largest of them. See the module docstring for each implementation.
    """
    if optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FOREACH, Optimizer.ADAM):
        return sum(alloc_bytes(s, round_to) for s in sizes)
    if optimizer is Optimizer.ADAFACTOR:
        # per parameter: ``update = grad**2 + eps``, then ``-update`` beside ``update``: two fp32
        # copies of the largest parameter, and a few 0-d tensors (norms, means).
        fp32_largest = largest // state_bytes * 4 if state_bytes else largest
        copies = 2 if state_bytes == 4 else 4  # half parameters: p.float() and grad.float() too
        return copies * alloc_bytes(fp32_largest, round_to) + 5 * alloc_bytes(4, round_to)
    if optimizer in (Optimizer.ADAMW_FORLOOP, Optimizer.LION):
        return 2 * alloc_bytes(largest, round_to)
    return 0


def states_per_param_label(optimizer: Optimizer) -> str:
    """A short description for formulas: ``2 x param`` (AdamW), ``1 B + 1 B + absmax`` ..."""
    labels = {
        Optimizer.SGD: "none",
        Optimizer.SGD_MOMENTUM: "momentum_buffer",
        Optimizer.LION: "exp_avg",
        Optimizer.ADAFACTOR: "row_var + col_var (factored)",
        Optimizer.ADAMW_8BIT: "state1 + state2 (uint8) + absmax per 256",
        Optimizer.PAGED_ADAMW_8BIT: "state1 + state2 (uint8, paged) + absmax per 256",
    }
    return labels.get(optimizer, "exp_avg + exp_avg_sq")
