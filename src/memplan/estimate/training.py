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
arithmetic over a few dozen terms, each rounded to the allocator's 512-byte blocks.

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

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.errors import SetupError
from memplan.formulas.activations import (
    SOURCE as ACT_SOURCE,
)
from memplan.formulas.activations import (
    ActivationContext,
    Saved,
    attention_backend,
    head_saved,
    layer_saved,
    model_saved,
)
from memplan.formulas.optimizer import (
    optimizer_shared_state_bytes,
    optimizer_state_allocations,
    optimizer_step_temporary_bytes,
    states_per_param_label,
)
from memplan.formulas.training import (
    ParamTensor,
    Regime,
    alloc_bytes,
    buffer_allocations,
    param_tensors,
    regime,
)
from memplan.report import TRAINING_CATEGORIES, TRAINING_PHASES, Item, Phase, Report
from memplan.specs.model import MlpKind, ModelSpec, NormKind
from memplan.specs.training import Checkpointing, Optimizer, Target, TrainingSetup

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

PHASES = TRAINING_PHASES
CATEGORIES = TRAINING_CATEGORIES
_PEAK_PHASE_NAMES = {
    "forward_peak": "forward",
    "end_of_forward": "forward",
    "peak_backward": "backward",
    "optimizer_step": "optimizer_step",
    "after_load": "forward",
    "after_backward": "backward",
    "after_zero_grad": "zero_grad",
}
"""The trace engine's ``peak_phase`` vocabulary (memplan.trace.__init__)."""
_BACKWARD_TEMPORARIES = {
    "loss_backward": "loss_gradients_fp32",
    "final_norm_backward": "final_norm_backward_fp32",
    "last_layer_backward": "mlp_backward_gradients",
    "first_layer_backward": "layer_backward_gradients",
    "embedding_backward": "embedding_backward",
    "moe_combine_backward": "moe_combine_backward_fp32",
}
"""How the temporaries at each backward high point are labelled."""
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


def validate_setup(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Reject impossible setups with one clear line (beyond TrainingSetup's own checks)."""
    if setup.seq > spec.max_position_embeddings and not setup.allow_long_seq:
        raise SetupError(
            f"sequence length {setup.seq} exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings}); pass --allow-long-seq to estimate anyway"
        )
    if setup.is_lora:
        widths = _lora_widths(spec, setup.lora_targets)
        if not widths:
            raise SetupError(
                f"none of the LoRA targets {', '.join(setup.lora_targets)} is a linear layer of "
                f"{spec.name}; modules: {', '.join(sorted(_linear_modules(spec)))}"
            )
        smallest = min(min(w) for w in widths.values())
        if setup.lora_rank > smallest:
            raise SetupError(
                f"LoRA rank {setup.lora_rank} is larger than the smallest targeted layer "
                f"dimension ({smallest}); choose a rank <= {smallest}"
            )
    if setup.freeze_layers > spec.n_layers:
        raise SetupError(
            f"--freeze-layers {setup.freeze_layers} exceeds the model's {spec.n_layers} layers"
        )


def _linear_modules(spec: ModelSpec) -> set[str]:
    return {t.module for t in param_tensors(spec) if t.role == "linear"}


def _lora_widths(spec: ModelSpec, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(out, in) of each targeted linear module name present in the model (decoder layers)."""
    out: dict[str, tuple[int, int]] = {}
    for t in param_tensors(spec):
        if t.role == "linear" and t.layer >= 0 and t.module in targets:
            out[t.module] = (t.shape[0], t.shape[1])
    return out


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
    round_to = 512 if setup.target is Target.CUDA else 1
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


# Evaluation at (B, S) ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StepMemory:
    """Live bytes per phase and per category (steady state), and the first step's peak."""

    phases: dict[str, dict[str, int]]
    peak_phase: str
    first_step_peak: int
    activations: dict[str, int]
    temporaries: dict[str, int]
    backward_sections: dict[str, int] = dataclasses.field(default_factory=dict)
    """Activations by trace section at the backward peak when it lies in the layers."""

    @property
    def peak_bytes(self) -> int:
        return sum(self.phases[self.peak_phase].values())

    def phase_bytes(self, name: str) -> int:
        return sum(self.phases[name].values())


def _sum_saved(items: tuple[Saved, ...], b: int, s: int, round_to: int) -> int:
    """Sum of ``item.nbytes(b, s)`` rounded per allocation (inlined: the hot loop)."""
    total = 0
    bs = b * s
    bss = bs * s
    for it in items:
        n = it.fixed + s * it.per_position
        if it.per_token:
            n += (bs + b if it.whole_buffer_at_batch_1 and b == 1 else bs) * it.per_token
        if it.per_score:
            n += bss * it.per_score
        if it.per_row:
            a = it.align
            n += b * (-(-s // a) * a) * it.per_row
        n *= it.elem_bytes
        if n > 0:
            total += -(-n // round_to) * round_to
    return total


def _layer_transient(plan: TrainingPlan, b: int, s: int) -> int:
    """Gradients in flight at the peak of a layer's backward: inside the MLP's gated multiply.

    ``down_proj``'s backward has produced the gradient of its input (B, S, I) and released its
    saved input; the multiply's backward then makes the gradients of both factors, beside the
    layer's output gradient (stream width) that the residual path still holds.
    """
    spec, reg, r = plan.spec, plan.regime, plan.round_to
    stream = 4 if reg.autocast else reg.compute_bytes
    width = spec.intermediate_size
    if spec.moe is not None:
        width = spec.moe.expert_intermediate_size * spec.moe.top_k
    branches = 3 if spec.mlp_kind is MlpKind.GATED else 2
    grad_bytes = reg.compute_bytes
    if spec.activation == "gelu_new":
        branches = 4  # its tanh formula's backward holds four (B, S, I) gradients at once
        grad_bytes = 4 if reg.autocast else grad_bytes  # pow runs in fp32 under autocast
    tokens = b * s
    return alloc_bytes(tokens * spec.hidden_size * stream, r) + branches * alloc_bytes(
        tokens * width * grad_bytes, r
    )


def _norm_transient(plan: TrainingPlan, b: int, s: int) -> int:
    """Peak temporaries of an RMSNorm's backward: it runs in fp32 (x.to(float32)), and the
    gradients of ``x * rsqrt`` and of ``pow`` meet five fp32 (B, S, H) tensors at once."""
    return 5 * alloc_bytes(b * s * plan.spec.hidden_size * 4, plan.round_to)


def evaluate(plan: TrainingPlan, batch: int, seq: int) -> StepMemory:
    """Live memory of the steady-state step at (batch, seq), per phase and category."""
    r, spec, reg = plan.round_to, plan.spec, plan.regime
    tokens = batch * seq
    v = spec.vocab_size
    a_model = _sum_saved(plan.model_saved, batch, seq, r)
    a_head = _sum_saved(plan.head_saved, batch, seq, r)
    a_layers = 0
    cache_layers = 0
    group_bytes = {}
    for g in plan.layers:
        group_bytes[id(g)] = one = _sum_saved(g.saved, batch, seq, r)
        a_layers += g.count * one
        cache_layers += g.count * g.cache_bytes
    activations = a_model + a_layers + a_head
    # With full checkpointing the layers' saved tensors (their half weights included) are
    # dropped in the forward: the casts live in autocast's cache only until the region ends,
    # and come back one layer at a time when backward recomputes it.
    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    cache = plan.cache_head + (0 if ckpt else cache_layers)
    inputs = 2 * alloc_bytes(tokens * 8, r)
    logits = alloc_bytes(tokens * v * reg.compute_bytes, r)
    fp32_logits = alloc_bytes(tokens * v * 4, r)
    upcast = fp32_logits if reg.compute_bytes != 4 else 0
    static = {
        "parameters": plan.param_bytes,
        "optimizer_states": plan.state_bytes,
        "buffers": plan.buffers,
    }
    held = {"inputs": inputs}
    # nll_loss's saved int64 targets and fp32 total_weight, freed when its backward has run
    nll_saved = _sum_saved(plan.nll_saved, batch, seq, r)
    scalar = alloc_bytes(4, r)  # the loss (and, in backward, its gradient)

    base = dict.fromkeys(CATEGORIES, 0)
    base.update(static)
    base.update(held)

    def phase(**parts: int) -> dict[str, int]:
        out = base.copy()
        out.update(parts)  # the parts are the step's own categories, never the static ones
        return out

    phases: dict[str, dict[str, int]] = {"after_load": phase()}
    phases["end_of_forward"] = phase(
        activations=activations, autocast_cache=cache, temporaries=scalar
    )
    # Inside log_softmax's backward: nll_loss has released its int64 targets; its fp32
    # gradient and log_softmax's own are both alive beside the saved output.
    loss_backward = phase(
        activations=activations - nll_saved,
        autocast_cache=cache,
        temporaries=2 * fp32_logits + 2 * scalar,
    )
    candidates = [("loss_backward", loss_backward)]
    transient = _layer_transient(plan, batch, seq)
    grads_head = (
        plan.grad_bytes
        - sum(g.count * g.grad_bytes for g in plan.layers)
        - plan.grads.get("embeddings", 0)
    )
    # The last layer's backward starts with every layer still saved; inside its MLP the
    # down-projection has released its saved input.
    last = plan.layers[-1]
    recompute_last = _recompute(plan, last, batch, seq)
    down_input = _sum_saved(last.down_input, batch, seq, r)
    candidates.append(
        (
            "last_layer_backward",
            phase(
                activations=a_model + a_layers + recompute_last - down_input,
                autocast_cache=(last.cache_bytes if ckpt else cache_layers) - plan.last_down_cast,
                gradients=grads_head + plan.last_down_grad,
                temporaries=transient + 2 * scalar + plan.dequant_bytes,
            ),
        )
    )
    if spec.moe is not None and spec.is_moe_layer(spec.n_layers - 1):
        # the last MoE block's combine: proj_out (half) * routing weights (fp32) is fp32, so its
        # backward holds three fp32 (B*S*k, H) gradients and the half one for proj_out
        k = spec.moe.top_k
        wide = alloc_bytes(tokens * k * spec.hidden_size * 4, r)
        expert_width = 4 if reg.autocast else reg.compute_bytes
        narrow = alloc_bytes(tokens * k * spec.hidden_size * expert_width, r)
        out_grad = alloc_bytes(
            tokens * spec.hidden_size * (4 if reg.autocast else reg.compute_bytes), r
        )
        candidates.append(
            (
                "moe_combine_backward",
                phase(
                    activations=a_model + a_layers,
                    autocast_cache=0 if ckpt else cache_layers,
                    gradients=grads_head,
                    temporaries=3 * wide + narrow + out_grad + 2 * scalar,
                ),
            )
        )
    norm_input = 0
    if spec.final_norm and spec.norm_kind is NormKind.RMSNORM:
        # the final norm's backward: lm_head's gradient is out, the norm's fp32 input still saved
        norm_input = _sum_saved(plan.final_norm_input, batch, seq, r)
        candidates.append(
            (
                "final_norm_backward",
                phase(
                    activations=a_model + a_layers + norm_input,
                    autocast_cache=0 if ckpt else cache_layers,
                    gradients=grads_head,
                    temporaries=_norm_transient(plan, batch, seq) + 2 * scalar,
                ),
            )
        )
    first = next(g for g in plan.layers if g.first)
    a_first = group_bytes[id(first)]
    recompute_first = _recompute(plan, first, batch, seq)
    down_first = _sum_saved(first.down_input, batch, seq, r)
    grads_before_first = plan.grad_bytes - plan.grads.get("embeddings", 0) - first.grad_bytes
    candidates.append(
        (
            "first_layer_backward",
            phase(
                activations=a_model + a_first + recompute_first - down_first,
                autocast_cache=first.cache_bytes - plan.first_down_cast,
                gradients=grads_before_first + plan.first_down_grad,
                temporaries=transient + 2 * scalar + plan.dequant_bytes,
            ),
        )
    )
    if "embeddings" in plan.grads:
        # the embedding's backward, last: its (V, H) gradient beside the others; untied, the
        # incoming (B, S, H) gradient is still alive; tied, the new gradient and its sum with
        # lm_head's (out of place) are both alive.
        vh = alloc_bytes(v * spec.hidden_size * reg.grad_bytes, r)
        stream = 4 if reg.autocast else reg.compute_bytes
        if spec.tie_word_embeddings:
            extra = 2 * vh
        else:
            extra = alloc_bytes(tokens * spec.hidden_size * stream, r)
        candidates.append(
            (
                "embedding_backward",
                phase(gradients=plan.grad_bytes, temporaries=extra + 2 * scalar),
            )
        )
    best_name, best = max(candidates, key=lambda item: sum(item[1].values()))
    phases["peak_backward"] = best
    phases["after_backward"] = phase(gradients=plan.grad_bytes)
    phases["optimizer_step"] = phase(gradients=plan.grad_bytes, temporaries=plan.step_temporary)
    phases["after_zero_grad"] = phase()
    phases["forward_peak"] = phase(
        activations=activations,
        autocast_cache=cache_layers + plan.cache_head + plan.cache_bias,
        temporaries=logits
        + upcast
        + _forward_loss_temporaries(plan, batch, seq)
        + plan.dequant_bytes,
    )
    peak_phase = max((*PHASES, "forward_peak"), key=lambda k: sum(phases[k].values()))
    states = plan.state_bytes
    first_step = max(
        max(sum(phases[k].values()) for k in phases if k not in ("optimizer_step",)) - states,
        sum(phases["optimizer_step"].values()),
    )
    acts = {"model": a_model, "layers": a_layers, "head_and_loss": a_head}
    sections: dict[str, int] = {}
    live = best["activations"]
    if best_name in (
        "last_layer_backward",
        "first_layer_backward",
        "final_norm_backward",
        "moe_combine_backward",
    ):
        by_section: dict[str, int] = {}
        for item in plan.model_saved:
            key = _model_section(item.key, ckpt, plan.setup.is_lora)
            by_section[key] = by_section.get(key, 0) + _one(item, batch, seq, r)
        if ckpt:
            first_input = group_bytes[id(first)]
            by_section["embedding"] = by_section.get("embedding", 0) + first_input
        sections = {k: v for k, v in by_section.items() if k != "layers"}
        sections["layers"] = live - sum(sections.values())
        if best_name == "final_norm_backward":
            sections["final_norm"] = norm_input
            sections["layers"] -= norm_input
        sections = {k: v for k, v in sections.items() if v}
    temps = {_BACKWARD_TEMPORARIES[best_name]: best["temporaries"]}
    return StepMemory(phases, peak_phase, first_step, acts, temps, sections)


def _forward_loss_temporaries(plan: TrainingPlan, b: int, s: int) -> int:
    """Live, unsaved tensors while the loss runs (beside the logits and their fp32 copy).

    Under AMP the rotary output is fp32 (cos/sin are), so ``DynamicCache`` holds fp32 copies of
    every layer's k and v (``lazy_initialization`` takes k's dtype) until the output is dropped;
    the model output also holds the final norm's fp32 output; the loss pads the labels to S+1.
    """
    spec, reg, r = plan.spec, plan.regime, plan.round_to
    tokens = b * s
    # the padded labels (B, S+1); at B == 1 they are the saved targets themselves
    out = alloc_bytes(b * (s + 1) * 8, r) if b > 1 else 0
    out += alloc_bytes(4, r)
    if any(t.value == "sliding_attention" for t in spec.layer_types):
        out += alloc_bytes(8, r)  # an int64 scalar the model holds while building its masks
    if reg.autocast:
        out += alloc_bytes(tokens * spec.hidden_size * 4, r)
        rotary = spec.position.value == "rotary"
        if rotary and plan.setup.checkpointing is not Checkpointing.FULL and spec.mla is None:
            out += spec.n_layers * 2 * alloc_bytes(tokens * spec.kv_dim * 4, r)
    return out


def _recompute(plan: TrainingPlan, group: LayerGroup, b: int, s: int) -> int:
    """Activations the recomputed layer saves again, less its input, which checkpointing kept
    already (the first norm saves that very tensor when the stream is fp32, or a LayerNorm)."""
    if plan.setup.checkpointing is not Checkpointing.FULL:
        return 0
    return _sum_saved(group.recompute, b, s, plan.round_to)


_FAST_PLANS: dict[tuple[Any, ...], tuple[ModelSpec, TrainingPlan]] = {}


def training_peak_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The steady-state peak of one step, in bytes (the fast path: no report built).

    Plans are looked up by the spec's identity and the setup's batch-independent fields, which
    skips hashing the whole spec on every call (searches call this thousands of times).
    """
    key = (
        id(spec), setup.precision, setup.optimizer, setup.attention, setup.checkpointing,
        setup.dropout, setup.fp32_grad_accumulation, setup.lora_rank, setup.lora_alpha,
        setup.lora_targets, setup.qlora, setup.freeze_embeddings, setup.freeze_layers,
        setup.target,
    )  # fmt: skip
    cached = _FAST_PLANS.get(key)
    if cached is None or cached[0] is not spec:
        if len(_FAST_PLANS) > 512:
            _FAST_PLANS.clear()
        cached = (spec, training_plan(spec, _plan_key(setup)))
        _FAST_PLANS[key] = cached
    return evaluate(cached[1], setup.batch, setup.seq).peak_bytes


def _plan_key(setup: TrainingSetup) -> TrainingSetup:
    if setup.batch == 1 and setup.seq == 1:
        return setup
    return dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True)


# The report ---------------------------------------------------------------------------------------
def estimate_training(spec: ModelSpec, setup: TrainingSetup, *, method: str = "exact") -> Report:
    """Per-GPU memory of one training step of ``spec`` under ``setup``.

    ``method="exact"`` (default) is the op-by-op accounting above; the textbook methods
    (``memplan.formulas.methods_training``) are selectable by name and labelled as such.
    """
    validate_setup(spec, setup)
    if method != "exact":
        from memplan.formulas.methods_training import method_report

        return method_report(spec, setup, method)
    plan = training_plan(spec, _plan_key(setup))
    mem = evaluate(plan, setup.batch, setup.seq)
    return _report(plan, setup, mem)


def _report(plan: TrainingPlan, setup: TrainingSetup, mem: StepMemory) -> Report:
    spec = plan.spec
    at_peak = mem.phases[mem.peak_phase]
    root = Item("peak", note=f"phase: {_PEAK_PHASE_NAMES[mem.peak_phase]}")
    params = root.add(Item("parameters", source="formulas/training.py param_tensors"))
    for key, value in plan.params.items():
        params.leaf(key, value, f"{_width_label(plan, key)} per parameter, 512 B blocks")
    if at_peak["gradients"]:
        grads = root.add(Item("gradients"))
        if at_peak["gradients"] == plan.grad_bytes:
            for key, value in plan.grads.items():
                grads.leaf(key, value, f"{plan.regime.grad_bytes} B per trainable parameter")
        else:
            grads.leaf("allocated_so_far", at_peak["gradients"], "gradients of the layers behind")
    if plan.state_bytes:
        states = root.add(Item("optimizer_states", note=setup.optimizer.value))
        for key, value in plan.states.items():
            states.leaf(key, value, "per trainable parameter", "formulas/optimizer.py")
    acts = root.add(Item("activations", source=ACT_SOURCE))
    if at_peak["activations"]:
        total = sum(mem.activations.values())
        nll = sum(
            _one(i, setup.batch, setup.seq, plan.round_to)
            for i in plan.head_saved
            if i.key in _NLL_SAVED
        )
        if at_peak["activations"] == total:
            _activation_children(acts, plan, setup, ())
        elif at_peak["activations"] == total - nll:
            _activation_children(acts, plan, setup, _NLL_SAVED)
        elif mem.backward_sections and mem.peak_phase == "peak_backward":
            for key, value in mem.backward_sections.items():
                acts.leaf(key, value, "saved tensors not yet freed by backward")
        else:
            acts.leaf("live", at_peak["activations"], "saved tensors not yet freed by backward")
    if at_peak["autocast_cache"]:
        root.leaf(
            "autocast_cache", at_peak["autocast_cache"], "half copies of linear weights and biases"
        )
    if at_peak["temporaries"]:
        temps = root.add(Item("temporaries"))
        for key, value in _temporaries_at(plan, mem, setup).items():
            temps.leaf(key, value)
    root.leaf("inputs", at_peak["inputs"], "input_ids + labels, int64 (B, S)")
    if at_peak["buffers"]:
        root.leaf("buffers", at_peak["buffers"], "rotary inv_freq tables, embed_scale")
    phases = [
        Phase(name, mem.phase_bytes(name), breakdown=dict(mem.phases[name])) for name in PHASES
    ]
    scalars: dict[str, Any] = {
        "peak_bytes": mem.peak_bytes,
        "peak_phase": _PEAK_PHASE_NAMES[mem.peak_phase],
        "first_step_peak_bytes": mem.first_step_peak,
        "trainable_params": plan.trainable_params,
        "method": "exact",
    }
    return Report(
        kind="training",
        model=spec.name,
        breakdown=root,
        setup=_setup_dict(setup),
        scalars=scalars,
        phases=phases,
        notes=list(plan.notes),
    )


def _width_label(plan: TrainingPlan, key: str) -> str:
    if key == "lora_adapters":
        return "4 B"
    if key == "quantized_nf4":
        return "NF4 (0.5 B + block statistics)"
    return f"{plan.regime.param_bytes} B"


_NLL_SAVED = ("loss/shift_labels", "loss/total_weight")


def _model_section(key: str, ckpt: bool, wrapped: bool = False) -> str:
    """The trace section of a model-level saved tensor: cos/sin are first saved by layer 0's
    rotary multiply (with checkpointing they are layer inputs, filed with the embeddings);
    position_ids, made by the model's own forward, are filed under ``loss``."""
    if key.startswith("rotary/"):
        return "embedding" if ckpt else "layers"
    if key == "checkpoint/position_ids":
        return "other" if wrapped else "loss"  # peft wraps the model: another module path
    return "embedding"


def activation_sections(
    plan: TrainingPlan, batch: int, seq: int, *, exclude: tuple[str, ...] = ()
) -> dict[str, dict[str, int]]:
    """Saved bytes by the trace engine's sections (``embedding``, ``layers``, ``final_norm``,
    ``lm_head``, ``loss``, ``other``), each by tensor key (layers summed over layers)."""
    r = plan.round_to
    out: dict[str, dict[str, int]] = {}

    def add(section: str, key: str, value: int) -> None:
        bucket = out.setdefault(section, {})
        bucket[key] = bucket.get(key, 0) + value

    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    for item in plan.model_saved:
        add(_model_section(item.key, ckpt, plan.setup.is_lora), item.key, _one(item, batch, seq, r))
    for group in plan.layers:
        for item in group.saved:
            value = group.count * _one(item, batch, seq, r)
            if ckpt and group.first and item.key == "checkpoint/layer_input":
                add("embedding", "checkpoint/layer_0_input", value)  # made by the embeddings
            else:
                add("layers", item.key, value)
    for item in plan.head_saved:
        if item.key in exclude:
            continue
        section = item.key.split("/")[0]
        add(section if section in ("final_norm", "lm_head", "loss") else "other", item.key,
            _one(item, batch, seq, r))  # fmt: skip
    return out


def _activation_children(
    acts: Item, plan: TrainingPlan, setup: TrainingSetup, exclude: tuple[str, ...]
) -> None:
    sections = activation_sections(plan, setup.batch, setup.seq, exclude=exclude)
    formulas = {item.key: _formula(item) for item in plan.model_saved + plan.head_saved}
    for group in plan.layers:
        formulas.update((item.key, _formula(item)) for item in group.saved)
    for name in ("embedding", "layers", "final_norm", "lm_head", "loss", "other"):
        if name not in sections:
            continue
        node = acts.add(Item(name, note=f"{plan.spec.n_layers} layers" if name == "layers" else ""))
        if name != "layers":
            for key, value in sections[name].items():
                node.leaf(key.split("/", 1)[-1], value, formulas.get(key, ""))
            continue
        groups: dict[str, Item] = {}
        for key, value in sections[name].items():
            head, _, tail = key.partition("/")
            sub = groups.get(head)
            if sub is None:
                sub = groups[head] = node.add(Item(head))
            sub.leaf(tail or head, value, formulas.get(key, ""))


def _one(item: Saved, b: int, s: int, r: int) -> int:
    return alloc_bytes(item.nbytes(b, s), r)


def _formula(item: Saved) -> str:
    parts = []
    if item.per_token:
        parts.append(f"B*S*{item.per_token}")
    if item.per_score:
        parts.append(f"B*S*S*{item.per_score}")
    if item.per_row:
        parts.append(
            f"B*S{'(pad ' + str(item.align) + ')' if item.align > 1 else ''}*{item.per_row}"
        )
    if item.per_position:
        parts.append(f"S*{item.per_position}")
    if item.fixed:
        parts.append(str(item.fixed))
    return f"({' + '.join(parts)}) x {item.elem_bytes} B"


def _temporaries_at(plan: TrainingPlan, mem: StepMemory, setup: TrainingSetup) -> dict[str, int]:
    value = mem.phases[mem.peak_phase]["temporaries"]
    if mem.peak_phase == "optimizer_step":
        return {"optimizer_step": value}
    if mem.peak_phase == "forward_peak":
        return {"logits_and_loss": value}
    return {next(iter(mem.temporaries)): value}


def _setup_dict(setup: TrainingSetup) -> dict[str, Any]:
    out: dict[str, Any] = {
        "batch": setup.batch,
        "seq": setup.seq,
        "precision": setup.precision.value,
        "optimizer": setup.optimizer.value,
        "attention": setup.attention.value,
        "checkpointing": setup.checkpointing.value,
    }
    if setup.is_lora:
        out["lora"] = (
            f"rank {setup.lora_rank}, alpha {setup.lora_alpha:g}, {','.join(setup.lora_targets)}"
        )
    if setup.qlora:
        out["qlora"] = True
    if setup.freeze_layers:
        out["freeze_layers"] = setup.freeze_layers
    if setup.freeze_embeddings:
        out["freeze_embeddings"] = True
    if setup.target is not Target.CUDA:
        out["target"] = setup.target.value
    return out
