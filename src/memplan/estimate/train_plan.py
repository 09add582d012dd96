"""The (B, S)-independent part of a training estimate (:func:`training_plan`, cached).

Parameters tensor by tensor, gradients, optimizer states, autocast copies, LoRA and QLoRA
adapters, and the saved-tensor terms of every distinct decoder layer; see
:mod:`memplan.estimate.training` for the step this describes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.estimate.train_setup import _lora_widths
from memplan.formulas.activations import (
    ActivationContext,
    Saved,
    attention_backend,
    head_saved,
    layer_saved,
    model_saved,
)
from memplan.formulas.allocator import ALLOCATOR_ROUND_BYTES, alloc_bytes
from memplan.formulas.optimizer import (
    optimizer_shared_state_bytes,
    optimizer_state_allocations,
    optimizer_step_temporary_bytes,
    states_per_param_label,
)
from memplan.formulas.training import (
    ParamTensor,
    Regime,
    buffer_allocations,
    param_tensors,
    regime,
)
from memplan.specs.model import ModelSpec, NormKind
from memplan.specs.training import Checkpointing, Optimizer, Target, TrainingSetup

_LINEAR_ROLES = ("linear", "experts")
_CUDA_FOREACH_DEFAULT = (Optimizer.ADAMW, Optimizer.ADAM)
_RELEASED_BEFORE_MLP_MULTIPLY = (
    "mlp/down_input",
    "mlp/expert_down_input",
    "mlp/expert_down_out",
    "mlp/routing_weights",
)
"""Saved tensors the MLP's backward has released by the time its gated multiply runs: the
down-projection's input (dense or experts), and for MoE the routing multiply's factors."""


_NLL_SAVED = ("loss/shift_labels", "loss/total_weight")


# The plan: everything independent of batch and sequence -------------------------------------------
@dataclass(frozen=True, slots=True)
class LayerGroup:
    """``count`` decoder layers that save the same tensors."""

    count: int
    saved: tuple[Saved, ...]
    full_saved: tuple[Saved, ...]
    """What the layer saves without checkpointing (recomputed during backward with it)."""
    grad_bytes: int
    cache_bytes: int
    first: bool
    """Contains the first layer (the end of backward)."""
    down_input: tuple[Saved, ...] = ()
    """The down-projection's saved input (released before the MLP's multiply backward)."""
    recompute: tuple[Saved, ...] = ()
    """What recomputation saves again beyond the kept layer input (full checkpointing)."""


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """The (B, S)-independent part of an estimate."""

    spec: ModelSpec
    setup: TrainingSetup
    regime: Regime
    round_to: int
    params: dict[str, int]
    grads: dict[str, int]
    states: dict[str, int]
    step_temporary: int
    dequant_bytes: int
    """QLoRA: the bf16 copy bitsandbytes dequantizes one NF4 weight into, for each matmul
    (forward and backward); the largest linear layer bounds it."""
    buffers: int
    cache_head: int
    cache_bias: int
    last_down_grad: int
    first_down_grad: int
    last_down_cast: int
    first_down_cast: int
    """Its cached half copy (AMP), released with the down-projection's saved tensors."""
    """Gradient of the last layer's down-projection: allocated before the MLP's multiply."""
    """Half copies of linear biases: cached by autocast during the forward only."""
    model_saved: tuple[Saved, ...]
    layers: tuple[LayerGroup, ...]
    head_saved: tuple[Saved, ...]
    backend: str
    trainable_params: int
    nll_saved: tuple[Saved, ...]
    final_norm_input: tuple[Saved, ...]
    notes: tuple[str, ...]

    @property
    def param_bytes(self) -> int:
        return sum(self.params.values())

    @property
    def grad_bytes(self) -> int:
        return sum(self.grads.values())

    @property
    def state_bytes(self) -> int:
        return sum(self.states.values())


def _context(spec: ModelSpec, setup: TrainingSetup, reg: Regime) -> ActivationContext:
    p = setup.dropout
    stream = 4 if reg.autocast else reg.param_bytes
    if setup.qlora or (setup.is_lora and reg.param_bytes == 2):
        stream = reg.compute_bytes
    return ActivationContext(
        compute_bytes=reg.compute_bytes,
        stream_bytes=stream,
        autocast=reg.autocast,
        attention=setup.attention,
        checkpointing=setup.checkpointing,
        attention_dropout=spec.attention_dropout if p is None else p,
        hidden_dropout=spec.hidden_dropout if p is None else p,
        embedding_dropout=spec.embedding_dropout if p is None else p,
        mask_bytes=1 if setup.target is Target.CUDA else 0,
        kv_cache_copies=setup.checkpointing is not Checkpointing.FULL,
    )


def _trainable(t: ParamTensor, spec: ModelSpec, setup: TrainingSetup) -> bool:
    """Whether ``t`` gets a gradient: LoRA freezes the base; ``--freeze-layers K`` the first K
    layers; ``--freeze-embeddings`` the input embeddings (tied: the head too)."""
    if setup.is_lora:
        return False
    if t.role == "embedding":
        return not setup.freeze_embeddings
    return not (0 <= t.layer < setup.freeze_layers)


def _cast_for_matmul(t: ParamTensor, spec: ModelSpec) -> bool:
    """The parameter feeds an autocast matmul (a linear weight, the router; tied embeddings).

    Stacked experts go through ``grouped_mm``, which autocast leaves in the weights' dtype."""
    if t.role in ("linear", "router"):
        return True
    return t.name == "embed_tokens.weight" and spec.tie_word_embeddings


def _param_group(t: ParamTensor) -> str:
    if t.role == "embedding":
        return "embeddings"
    if t.layer >= 0:
        return "layers"
    if t.name.startswith("lm_head"):
        return "lm_head"
    return "final_norm"


@lru_cache(maxsize=512)
def training_plan(spec: ModelSpec, setup: TrainingSetup) -> TrainingPlan:
    """The (B, S)-independent part of the estimate (cached; ``setup.batch/seq`` are ignored)."""
    reg = regime(setup.precision, fp32_grad_accumulation=setup.fp32_grad_accumulation)
    round_to = ALLOCATOR_ROUND_BYTES if setup.target is Target.CUDA else 1
    ctx = _context(spec, setup, reg)
    tensors = param_tensors(spec)
    lora_targets = (
        frozenset(_lora_widths(spec, setup.lora_targets)) if setup.is_lora else frozenset()
    )

    params: dict[str, int] = {}
    grads: dict[str, int] = {}
    states: dict[str, int] = {}
    grad_per_layer: dict[int, int] = {}
    cache_per_layer: dict[int, int] = {}
    cache_head = 0
    cache_bias = 0
    state_sizes: list[int] = []
    largest = 0
    trainable_params = 0
    state_label = states_per_param_label(setup.optimizer)
    for t in tensors:
        group = _param_group(t)
        if setup.qlora and t.role in _LINEAR_ROLES and t.layer >= 0:
            nbytes = _nf4_bytes(t.numel, round_to)
            params["quantized_nf4"] = params.get("quantized_nf4", 0) + nbytes
        else:
            params[group] = params.get(group, 0) + alloc_bytes(t.numel * reg.param_bytes, round_to)
        train = _trainable(t, spec, setup)
        # Autocast caches the half copy of every matmul weight; the graph keeps it until the
        # layer's backward. Bias copies are cached too but nothing saves them: they go when
        # the autocast region ends, before any phase boundary.
        uses_cache = reg.autocast and _cast_for_matmul(t, spec) and not setup.is_lora
        if reg.autocast and train and t.role == "bias" and not setup.is_lora:
            cache_bias += alloc_bytes(t.numel * reg.compute_bytes, round_to)
        if uses_cache and train:
            size = alloc_bytes(t.numel * reg.compute_bytes, round_to)
            if t.layer >= 0:
                cache_per_layer[t.layer] = cache_per_layer.get(t.layer, 0) + size
            else:
                cache_head += size
        if not train:
            continue
        trainable_params += t.numel
        g = alloc_bytes(t.numel * reg.grad_bytes, round_to)
        grads[group] = grads.get(group, 0) + g
        if t.layer >= 0:
            grad_per_layer[t.layer] = grad_per_layer.get(t.layer, 0) + g
        for size in optimizer_state_allocations(setup.optimizer, t.numel, t.shape, reg.state_bytes):
            states[state_label] = states.get(state_label, 0) + alloc_bytes(size, round_to)
        if reg.master_bytes:
            states["master_weights_fp32"] = states.get("master_weights_fp32", 0) + alloc_bytes(
                t.numel * reg.master_bytes, round_to
            )
        if setup.optimizer is not Optimizer.ADAFACTOR or len(t.shape) >= 2:
            state_sizes.append(t.numel * reg.state_bytes)
        largest = max(largest, t.numel * reg.state_bytes)

    if setup.is_lora:
        lora_forward_only = [0]
        trainable_params = _add_lora(
            spec,
            setup,
            reg,
            round_to,
            params,
            grads,
            states,
            grad_per_layer,
            state_sizes,
            state_label,
            cache_per_layer,
            lora_forward_only,
        )
        cache_bias += lora_forward_only[0]
        largest = max(largest, max(state_sizes, default=0))
    for size in optimizer_shared_state_bytes(setup.optimizer):
        states[state_label] = states.get(state_label, 0) + alloc_bytes(size, round_to)
    step_optimizer = setup.optimizer
    if setup.target is Target.CPU and step_optimizer in _CUDA_FOREACH_DEFAULT:
        # on CPU tensors torch picks the for-loop step, and its step counters are CPU memory
        step_optimizer = Optimizer.ADAMW_FORLOOP
        states[state_label] = states.get(state_label, 0) + 4 * len(state_sizes)
    step_temp = optimizer_step_temporary_bytes(
        step_optimizer, state_sizes, largest, round_to, reg.state_bytes
    )

    embed_grad = any(_trainable(t, spec, setup) for t in tensors if t.role == "embedding")
    layer_groups = _layer_groups(
        spec, setup, ctx, embed_grad, lora_targets, grad_per_layer, cache_per_layer
    )
    head_trainable = not setup.is_lora
    head = head_saved(spec, ctx, head_trainable=head_trainable)
    backend = attention_backend(spec, ctx, has_mask=False)
    return TrainingPlan(
        spec=spec,
        setup=setup,
        regime=reg,
        round_to=round_to,
        params=params,
        grads=grads,
        states=states,
        step_temporary=step_temp,
        buffers=sum(alloc_bytes(b, round_to) for b in buffer_allocations(spec)),
        cache_head=cache_head,
        cache_bias=cache_bias,
        last_down_grad=_down_grad(spec, setup, reg, round_to, spec.n_layers - 1),
        first_down_grad=_down_grad(spec, setup, reg, round_to, 0),
        last_down_cast=_down_grad(spec, setup, reg, round_to, spec.n_layers - 1, cast=True),
        first_down_cast=_down_grad(spec, setup, reg, round_to, 0, cast=True),
        model_saved=model_saved(spec, ctx, embed_grad=embed_grad),
        layers=layer_groups,
        head_saved=head,
        dequant_bytes=max(
            (
                alloc_bytes(t.numel * 2, round_to)
                for t in tensors
                if setup.qlora and t.role in _LINEAR_ROLES and t.layer >= 0
            ),
            default=0,
        ),
        nll_saved=tuple(i for i in head if i.key in _NLL_SAVED),
        final_norm_input=tuple(i for i in head if i.key == "final_norm/input_fp32"),
        backend=backend,
        trainable_params=trainable_params,
        notes=tuple(_plan_notes(spec, setup, backend)),
    )


def _down_grad(
    spec: ModelSpec,
    setup: TrainingSetup,
    reg: Regime,
    round_to: int,
    layer: int,
    cast: bool = False,
) -> int:
    """Gradient bytes of one layer's down-projection (allocated before the MLP's multiply);
    ``cast``: the bytes of its autocast half copy instead (0 without AMP)."""
    if cast and not reg.autocast:
        return 0
    width = reg.compute_bytes if cast else reg.grad_bytes
    return sum(
        alloc_bytes(t.numel * width, round_to)
        for t in param_tensors(spec)
        if t.layer == layer
        and ".mlp." in t.name
        and (
            t.name.rsplit(".", 2)[-2] in ("down_proj", "c_proj")
            or t.name.endswith("experts.down_proj")
        )
        and _trainable(t, spec, setup)
    )


def _nf4_bytes(numel: int, round_to: int) -> int:
    """bitsandbytes NF4 with double quantization, block 64 (``formulas/weights.py``)."""
    blocks = -(-numel // 64)
    nested = -(-blocks // 256)
    parts = (-(-numel // 2), blocks, 4, 4 * nested, 256 * 4, 16 * 4)
    return sum(alloc_bytes(p, round_to) for p in parts)


def _add_lora(
    spec: ModelSpec,
    setup: TrainingSetup,
    reg: Regime,
    round_to: int,
    params: dict[str, int],
    grads: dict[str, int],
    states: dict[str, int],
    grad_per_layer: dict[int, int],
    state_sizes: list[int],
    state_label: str,
    cache_per_layer: dict[int, int],
    forward_only: list[int],
) -> int:
    """LoRA adapters: A (r, in) and B (out, r) per targeted linear, fp32 (peft's
    ``autocast_adapter_dtype`` keeps adapters in fp32), with fp32 gradients and states."""
    r = setup.lora_rank
    n = 0
    for t in param_tensors(spec):
        if t.role != "linear" or t.layer < 0 or t.module not in setup.lora_targets:
            continue
        out_f, in_f = t.shape
        for shape in ((r, in_f), (out_f, r)):
            numel = shape[0] * shape[1]
            n += numel
            params["lora_adapters"] = params.get("lora_adapters", 0) + alloc_bytes(
                numel * 4, round_to
            )
            g = alloc_bytes(numel * 4, round_to)
            grads["lora_adapters"] = grads.get("lora_adapters", 0) + g
            grad_per_layer[t.layer] = grad_per_layer.get(t.layer, 0) + g
            for size in optimizer_state_allocations(setup.optimizer, numel, shape, 4):
                states[state_label] = states.get(state_label, 0) + alloc_bytes(size, round_to)
            state_sizes.append(numel * 4)
            if reg.autocast:  # the fp32 adapters are matmul weights: cached half copies
                size = alloc_bytes(numel * reg.compute_bytes, round_to)
                if (
                    t.layer == 0
                    and shape == (r, in_f)
                    and t.module in ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn")
                    and setup.checkpointing is not Checkpointing.FULL
                ):
                    # layer 0's attention input needs no gradient (frozen embeddings), so
                    # lora_A's matmul does not save its weight: cached for the forward only
                    forward_only[0] += size
                else:
                    cache_per_layer[t.layer] = cache_per_layer.get(t.layer, 0) + size
    return n


def _layer_groups(
    spec: ModelSpec,
    setup: TrainingSetup,
    ctx: ActivationContext,
    embed_grad: bool,
    lora_targets: frozenset[str],
    grad_per_layer: dict[int, int],
    cache_per_layer: dict[int, int],
) -> tuple[LayerGroup, ...]:
    groups: dict[tuple[Any, ...], list[Any]] = {}
    # The recomputed forward runs with use_cache off (transformers turns it off with checkpointing).
    full_ctx = dataclasses.replace(ctx, checkpointing=Checkpointing.NONE, kv_cache_copies=False)
    any_before = embed_grad
    for i in range(spec.n_layers):
        trainable = not setup.is_lora and i >= setup.freeze_layers
        input_grad = any_before or (setup.is_lora and i > 0)
        kwargs: dict[str, Any] = {
            "input_grad": input_grad,
            "trainable": trainable,
            "lora_modules": lora_targets,
            "lora_rank": setup.lora_rank,
        }
        saved = layer_saved(spec, ctx, i, **kwargs)
        full = (
            layer_saved(spec, full_ctx, i, **kwargs)
            if ctx.checkpointing is Checkpointing.FULL
            else saved
        )
        if ctx.autocast and not trainable and (input_grad or setup.is_lora):
            # Frozen fp32 weights: autocast does not cache their half copies (no grad), but
            # each matmul whose input needs a gradient saves its copy for that gradient.
            skip = () if input_grad else ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn")
            copies = _frozen_weight_copies(spec, i, ctx.compute_bytes, skip)
            if ctx.checkpointing is Checkpointing.FULL:
                full = full + copies  # dropped in the forward, back when recomputed
            else:
                saved = full = saved + copies
        key = (saved, full, grad_per_layer.get(i, 0), cache_per_layer.get(i, 0), i == 0)
        if key in groups:
            groups[key][0] += 1
        else:
            groups[key] = [
                1,
                saved,
                full,
                grad_per_layer.get(i, 0),
                cache_per_layer.get(i, 0),
                i == 0,
            ]
        any_before = any_before or trainable or bool(lora_targets)
    shared = ctx.autocast or ctx.compute_bytes == 4 or spec.norm_kind is not NormKind.RMSNORM
    out = []
    for values in groups.values():
        group = LayerGroup(*values)
        down = tuple(i for i in group.full_saved if i.key in _RELEASED_BEFORE_MLP_MULTIPLY)
        recompute = tuple(
            i
            for i in group.full_saved
            if not (shared and i.key in ("input_layernorm/input_fp32", "input_layernorm/input"))
        )
        out.append(dataclasses.replace(group, down_input=down, recompute=recompute))
    return tuple(out)


def _frozen_weight_copies(
    spec: ModelSpec, index: int, width: int, skip: tuple[str, ...] = ()
) -> tuple[Saved, ...]:
    return tuple(
        Saved(
            f"{t.name.split('.', 2)[-1].rsplit('.', 1)[0]}/weight_half_copy", width, fixed=t.numel
        )
        for t in param_tensors(spec)
        if t.layer == index and t.role in ("linear", "router") and t.module not in skip
    )


def _plan_notes(spec: ModelSpec, setup: TrainingSetup, backend: str) -> list[str]:
    notes = [f"attention kernel: {backend}"]
    if spec.moe is not None:
        notes.append("MoE: tokens assumed spread evenly over the experts (top-k of E)")
    if setup.optimizer is Optimizer.PAGED_ADAMW_8BIT:
        notes.append(
            "paged optimizer: states live in CUDA unified memory, paged out under pressure"
        )
    if setup.qlora:
        notes.append("QLoRA: NF4 base weights (double quantization, block 64), fp32 adapters")
    return notes
