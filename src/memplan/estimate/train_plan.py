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

from memplan.estimate.train_kernels import Kernels, attention_kernels, kernel_notes
from memplan.estimate.train_setup import _lora_widths
from memplan.formulas.activations import (
    ActivationContext,
    Saved,
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
    kernels: Kernels
    """Attention kernel of full-attention and of sliding-window layers (``attention_kernels``)."""
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


def _context(
    spec: ModelSpec, setup: TrainingSetup, reg: Regime, kernels: Kernels
) -> ActivationContext:
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
        kernels=kernels,
    )


def _trainable(t: ParamTensor, spec: ModelSpec, setup: TrainingSetup) -> bool:
    """Whether ``t`` gets a gradient: LoRA freezes the base; ``--freeze-layers K`` the first K
    layers; ``--freeze-embeddings`` the input embeddings (tied: the head too)."""
    if setup.is_lora or t.role == "vision":  # text inputs give the vision tower no gradient
        return False
    if t.role == "embedding":
        return not setup.freeze_embeddings
    return not (0 <= t.layer < setup.freeze_layers)


def _cast_for_matmul(t: ParamTensor, spec: ModelSpec) -> bool:
    """The parameter feeds an autocast matmul (a linear weight, the router; tied embeddings).

    Stacked experts go through ``grouped_mm``, which autocast leaves in the weights' dtype;
    Llama 4's go through ``bmm``, which autocast casts."""
    if t.role in ("linear", "router"):
        return True
    if t.role == "experts" and spec.moe is not None and spec.moe.all_experts_per_token:
        return True
    return t.name == "embed_tokens.weight" and spec.tie_word_embeddings


def _param_group(t: ParamTensor) -> str:
    if t.role == "embedding":
        return "embeddings"
    if t.role == "vision":
        return t.module  # vision_tower, multi_modal_projector
    if t.layer >= 0:
        return "layers"
    if t.name.startswith("lm_head"):
        return "lm_head"
    return "final_norm"


def training_plan(
    spec: ModelSpec, setup: TrainingSetup, kernels: Kernels | None = None
) -> TrainingPlan:
    """The (B, S)-independent part of the estimate, for the attention ``kernels``. Cached.

    By default the kernels of ``setup.batch`` and of a sequence of ``setup.seq`` tokens, but at
    least two: a (1, 1) setup is a plan key (``_plan_key``, the fit search), and a one-token
    sequence would pick kernels no training sequence gets (cuDNN refuses kv_len 1).
    :func:`memplan.estimate.train_step.evaluate` swaps in the plan of its own (B, S) when the
    kernels there differ.
    """
    if kernels is None:
        kernels = attention_kernels(spec, setup, setup.batch, max(setup.seq, 2))
    return _training_plan(spec, setup, kernels)


@dataclass(slots=True)
class _Ledger:
    """Bytes per category, accumulated parameter tensor by parameter tensor."""

    state_label: str
    params: dict[str, int] = dataclasses.field(default_factory=dict)
    grads: dict[str, int] = dataclasses.field(default_factory=dict)
    states: dict[str, int] = dataclasses.field(default_factory=dict)
    grad_per_layer: dict[int, int] = dataclasses.field(default_factory=dict)
    cache_per_layer: dict[int, int] = dataclasses.field(default_factory=dict)
    cache_head: int = 0
    cache_bias: int = 0
    """Half copies of linear biases: cached by autocast during the forward only."""
    state_sizes: list[int] = dataclasses.field(default_factory=list)
    """Bytes of each state tensor the optimizer step walks (its temporaries follow them)."""
    largest: int = 0
    trainable_params: int = 0

    def add(self, table: dict[Any, int], key: Any, nbytes: int) -> None:
        table[key] = table.get(key, 0) + nbytes


def _account_parameter(
    ledger: _Ledger, t: ParamTensor, spec: ModelSpec, setup: TrainingSetup, reg: Regime, r: int
) -> None:
    """One parameter: its storage (NF4 under QLoRA), the autocast copy the graph keeps until
    the layer's backward (matmul weights under AMP; biases are cached but saved by nothing, so
    they go when the autocast region ends), its gradient, optimizer states, master weight."""
    if setup.qlora and t.role in _LINEAR_ROLES and t.layer >= 0:
        ledger.add(ledger.params, "quantized_nf4", _nf4_bytes(t.numel, r))
    else:
        ledger.add(ledger.params, _param_group(t), alloc_bytes(t.numel * reg.param_bytes, r))
    train = _trainable(t, spec, setup)
    if reg.autocast and train and not setup.is_lora:
        if t.role == "bias":
            ledger.cache_bias += alloc_bytes(t.numel * reg.compute_bytes, r)
        if _cast_for_matmul(t, spec):
            size = alloc_bytes(t.numel * reg.compute_bytes, r)
            if t.layer >= 0:
                ledger.add(ledger.cache_per_layer, t.layer, size)
            else:
                ledger.cache_head += size
    if not train:
        return
    ledger.trainable_params += t.numel
    grad = alloc_bytes(t.numel * reg.grad_bytes, r)
    ledger.add(ledger.grads, _param_group(t), grad)
    if t.layer >= 0:
        ledger.add(ledger.grad_per_layer, t.layer, grad)
    for size in optimizer_state_allocations(setup.optimizer, t.numel, t.shape, reg.state_bytes):
        ledger.add(ledger.states, ledger.state_label, alloc_bytes(size, r))
    if reg.master_bytes:
        ledger.add(ledger.states, "master_weights_fp32", alloc_bytes(t.numel * reg.master_bytes, r))
    if setup.optimizer is not Optimizer.ADAFACTOR or len(t.shape) >= 2:
        ledger.state_sizes.append(t.numel * reg.state_bytes)
    ledger.largest = max(ledger.largest, t.numel * reg.state_bytes)


def _ledger(spec: ModelSpec, setup: TrainingSetup, reg: Regime, r: int) -> _Ledger:
    """Every parameter tensor, the LoRA adapters, and the optimizer's shared states."""
    ledger = _Ledger(states_per_param_label(setup.optimizer))
    for t in param_tensors(spec):
        _account_parameter(ledger, t, spec, setup, reg, r)
    if setup.is_lora:
        _add_lora(spec, setup, reg, r, ledger)
        ledger.largest = max(ledger.largest, max(ledger.state_sizes, default=0))
    for size in optimizer_shared_state_bytes(setup.optimizer):
        ledger.add(ledger.states, ledger.state_label, alloc_bytes(size, r))
    return ledger


def _step_temporary(setup: TrainingSetup, reg: Regime, r: int, ledger: _Ledger) -> int:
    """Temporaries of ``optimizer.step()`` (``memplan.formulas.optimizer``). On CPU tensors
    torch picks the for-loop step for AdamW/Adam, and its step counters are CPU memory (counted
    among the states here)."""
    optimizer = setup.optimizer
    if setup.target is Target.CPU and optimizer in _CUDA_FOREACH_DEFAULT:
        optimizer = Optimizer.ADAMW_FORLOOP
        ledger.add(ledger.states, ledger.state_label, 4 * len(ledger.state_sizes))
    return optimizer_step_temporary_bytes(
        optimizer, ledger.state_sizes, ledger.largest, r, reg.state_bytes
    )


def _dequant_bytes(spec: ModelSpec, setup: TrainingSetup, r: int) -> int:
    """QLoRA: the bf16 copy bitsandbytes dequantizes one NF4 weight into for each matmul; the
    largest linear layer bounds it."""
    if not setup.qlora:
        return 0
    return max(
        (
            alloc_bytes(t.numel * 2, r)
            for t in param_tensors(spec)
            if t.role in _LINEAR_ROLES and t.layer >= 0
        ),
        default=0,
    )


@lru_cache(maxsize=512)
def _training_plan(spec: ModelSpec, setup: TrainingSetup, kernels: Kernels) -> TrainingPlan:
    reg = regime(setup.precision, fp32_grad_accumulation=setup.fp32_grad_accumulation)
    r = ALLOCATOR_ROUND_BYTES if setup.target is Target.CUDA else 1
    ctx = _context(spec, setup, reg, kernels)
    ledger = _ledger(spec, setup, reg, r)
    step_temp = _step_temporary(setup, reg, r, ledger)
    tensors = param_tensors(spec)
    embed_grad = any(_trainable(t, spec, setup) for t in tensors if t.role == "embedding")
    lora_targets = (
        frozenset(_lora_widths(spec, setup.lora_targets)) if setup.is_lora else frozenset()
    )
    layer_groups = _layer_groups(
        spec, setup, ctx, embed_grad, lora_targets, ledger.grad_per_layer, ledger.cache_per_layer
    )
    head = head_saved(spec, ctx, head_trainable=not setup.is_lora)
    last = spec.n_layers - 1
    return TrainingPlan(
        spec=spec,
        setup=setup,
        regime=reg,
        round_to=r,
        params=ledger.params,
        grads=ledger.grads,
        states=ledger.states,
        step_temporary=step_temp,
        buffers=sum(alloc_bytes(b, r) for b in buffer_allocations(spec)),
        cache_head=ledger.cache_head,
        cache_bias=ledger.cache_bias,
        last_down_grad=_down_grad(spec, setup, reg, r, last),
        first_down_grad=_down_grad(spec, setup, reg, r, 0),
        last_down_cast=_down_grad(spec, setup, reg, r, last, cast=True),
        first_down_cast=_down_grad(spec, setup, reg, r, 0, cast=True),
        model_saved=model_saved(spec, ctx, embed_grad=embed_grad),
        layers=layer_groups,
        head_saved=head,
        dequant_bytes=_dequant_bytes(spec, setup, r),
        nll_saved=tuple(i for i in head if i.key in _NLL_SAVED),
        final_norm_input=tuple(i for i in head if i.key == "final_norm/input_fp32"),
        kernels=kernels,
        trainable_params=ledger.trainable_params,
        notes=tuple(_plan_notes(spec, setup, kernels)),
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


def _add_lora(spec: ModelSpec, setup: TrainingSetup, reg: Regime, r: int, ledger: _Ledger) -> None:
    """LoRA adapters: A (r, in) and B (out, r) per targeted linear, fp32 (peft's
    ``autocast_adapter_dtype`` keeps adapters in fp32), with fp32 gradients and states; under
    AMP their half copies are cached like any matmul weight."""
    rank = setup.lora_rank
    lora_params = 0
    for t in param_tensors(spec):
        if t.role != "linear" or t.layer < 0 or t.module not in setup.lora_targets:
            continue
        out_f, in_f = t.shape
        for shape in ((rank, in_f), (out_f, rank)):
            numel = shape[0] * shape[1]
            lora_params += numel
            ledger.add(ledger.params, "lora_adapters", alloc_bytes(numel * 4, r))
            grad = alloc_bytes(numel * 4, r)
            ledger.add(ledger.grads, "lora_adapters", grad)
            ledger.add(ledger.grad_per_layer, t.layer, grad)
            for size in optimizer_state_allocations(setup.optimizer, numel, shape, 4):
                ledger.add(ledger.states, ledger.state_label, alloc_bytes(size, r))
            ledger.state_sizes.append(numel * 4)
            if reg.autocast:
                size = alloc_bytes(numel * reg.compute_bytes, r)
                _cache_lora_copy(ledger, t, shape == (rank, in_f), setup, size)
    ledger.trainable_params = lora_params


def _cache_lora_copy(
    ledger: _Ledger, t: ParamTensor, is_a: bool, setup: TrainingSetup, size: int
) -> None:
    """Where an fp32 adapter's cached half copy lives: held by the graph until the layer's
    backward, except layer 0's attention lora_A, whose input needs no gradient (frozen
    embeddings), so its matmul does not save the weight: cached for the forward only."""
    first_attention = (
        t.layer == 0
        and is_a
        and t.module in ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn")
        and setup.checkpointing is not Checkpointing.FULL
    )
    if first_attention:
        ledger.cache_bias += size
    else:
        ledger.add(ledger.cache_per_layer, t.layer, size)


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
    # a layer's saved tensors depend on its index only through these (computed once each)
    memo: dict[tuple[Any, ...], tuple[tuple[Saved, ...], tuple[Saved, ...]]] = {}
    # equal tuples shared as one object: the step sums each distinct one once per (B, S)
    shared_saved: dict[tuple[Saved, ...], tuple[Saved, ...]] = {}
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
        signature = (trainable, input_grad, i == 0, spec.slides(i), spec.is_moe_layer(i))
        if signature not in memo:
            one = layer_saved(spec, ctx, i, **kwargs)
            recomputed = (
                layer_saved(spec, full_ctx, i, **kwargs)
                if ctx.checkpointing is Checkpointing.FULL
                else one
            )
            memo[signature] = (
                shared_saved.setdefault(one, one),
                shared_saved.setdefault(recomputed, recomputed),
            )
        saved, full = memo[signature]
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
        if t.layer == index and _cast_for_matmul(t, spec) and t.role != "embedding"
        and t.module not in skip
    )  # fmt: skip


def _plan_notes(spec: ModelSpec, setup: TrainingSetup, kernels: Kernels) -> list[str]:
    notes = kernel_notes(spec, setup, kernels)
    if spec.moe is not None:
        notes.append("MoE: tokens assumed spread evenly over the experts (top-k of E)")
    n_linear = spec.n_layers - spec.n_attention_layers
    if n_linear:
        notes.append(
            f"linear attention not modelled: the {n_linear} Gated DeltaNet layers' saved "
            "activations are counted as a softmax-attention layer's (their chunked delta rule "
            "saves more); `memplan trace --train` follows them, docs/accuracy.md has the gap"
        )
    if setup.optimizer is Optimizer.PAGED_ADAMW_8BIT:
        notes.append(
            "paged optimizer: states live in CUDA unified memory, paged out under pressure"
        )
    if setup.qlora:
        notes.append("QLoRA: NF4 base weights (double quantization, block 64), fp32 adapters")
    return notes
