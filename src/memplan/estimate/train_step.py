"""Evaluation of a training plan at (B, S): live bytes per phase (:func:`evaluate`), and the
fast peak-only path searches call thousands of times (:func:`training_peak_bytes`).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

from memplan.estimate.train_kernels import Kernels
from memplan.estimate.train_plan import (
    LayerGroup,
    TrainingPlan,
    attention_kernels,
    training_plan,
)
from memplan.formulas.activations import Saved
from memplan.formulas.allocator import alloc_bytes
from memplan.report import TRAINING_CATEGORIES, TRAINING_PHASES
from memplan.specs.model import MlpKind, ModelSpec, NormKind
from memplan.specs.training import Checkpointing, TrainingSetup

PHASES = TRAINING_PHASES
CATEGORIES = TRAINING_CATEGORIES


_BACKWARD_TEMPORARIES = {
    "loss_backward": "loss_gradients_fp32",
    "final_norm_backward": "final_norm_backward_fp32",
    "last_layer_backward": "mlp_backward_gradients",
    "first_layer_backward": "layer_backward_gradients",
    "embedding_backward": "embedding_backward",
    "moe_combine_backward": "moe_combine_backward_fp32",
}
"""How the temporaries at each backward high point are labelled."""


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
    """Sum of ``item.nbytes(b, s)`` rounded per allocation (:func:`_saved_sums` of one tuple)."""
    return _saved_sums((_sized(items, round_to),), b, s, round_to)[0]


def _saved_sums(sized: tuple[_Sized, ...], b: int, s: int, round_to: int) -> list[int]:
    """The saved bytes of each compiled tuple (:func:`_sized`) at (b, s), rounded per
    allocation (the hot loop): the linear form of the tensors no allocation rounds, then each
    distinct size of the others (alloc_bytes inlined: every size is >= 0)."""
    bs = b * s
    bss = bs * s
    rows_b1 = bs + b if b == 1 else bs  # a (B, S+1) parent kept alive at B == 1
    out = []
    for fixed, position, token, token_b1, by_token, general in sized:
        total = fixed + s * position + bs * token
        if b == 1:
            total += token_b1
        for count, fixed_bytes, position_bytes, token_bytes, whole_b1 in by_token:
            n = fixed_bytes + s * position_bytes + (rows_b1 if whole_b1 else bs) * token_bytes
            if n:
                total += count * (-(-n // round_to) * round_to)
        for (
            count,
            elem,
            base,
            per_position,
            per_token,
            whole_b1,
            score,
            align_s,
            row,
            align,
        ) in general:
            n = base + s * per_position + (rows_b1 if whole_b1 else bs) * per_token
            if score:
                keys = -(-s // align_s) * align_s
                n += (bss if keys == s else bs * keys) * score
            if row:
                n += b * (-(-s // align) * align) * row
            if n:
                total += count * (-(-n * elem // round_to) * round_to)
        out.append(total)
    return out


_ByToken = tuple[int, int, int, int, bool]
"""A distinct size, rounded per allocation, of tensors with no score or row term: (how many,
fixed bytes, bytes per position, bytes per token, whole_buffer_at_batch_1)."""
_Rounded = tuple[int, int, int, int, int, bool, int, int, int, int]
"""A distinct size of the other rounded tensors: (how many, element bytes, fixed,
per_position, per_token, whole_buffer_at_batch_1, per_score, score_align, per_row, align)."""
_Sized = tuple[int, int, int, int, tuple[_ByToken, ...], tuple[_Rounded, ...]]
_SIZES: dict[int, tuple[tuple[Saved, ...], int, _Sized]] = {}
_size_fields = operator.attrgetter(
    *(f.name for f in dataclasses.fields(Saved) if f.name not in ("key", "category"))
)


def _sized(items: tuple[Saved, ...], round_to: int) -> _Sized:
    """``items`` compiled for :func:`_saved_sums`, kept per tuple object (plans are cached):

    - bytes of the tensors no allocation rounds (each term of their size a multiple of
      ``round_to`` bytes, no score or row term), as a linear form: fixed bytes, bytes per
      position, bytes per token, and the bytes a batch of 1 adds (``whole_buffer_at_batch_1``);
    - the others once per distinct size (every field but the key and the category; a layer
      saves several tensors of one shape) with how many: as byte coefficients
      (:data:`_ByToken`) without a score or row term, else their fields (:data:`_Rounded`)."""
    hit = _SIZES.get(id(items))
    if hit is not None and hit[0] is items and hit[1] == round_to:
        return hit[2]
    if len(_SIZES) > 4096:
        _SIZES.clear()
    fixed = position = token = token_b1 = 0
    counts: dict[tuple[object, ...], list[Any]] = {}
    for it in items:
        e = it.elem_bytes
        terms = (it.fixed * e, it.per_position * e, it.per_token * e)
        if not (it.per_score or it.per_row or any(t % round_to for t in terms)):
            fixed += terms[0]
            position += terms[1]
            token += terms[2]
            token_b1 += terms[2] if it.whole_buffer_at_batch_1 else 0
            continue
        counts.setdefault(_size_fields(it), [0, it])[0] += 1
    by_token = tuple(
        (count, it.fixed * it.elem_bytes, it.per_position * it.elem_bytes,
         it.per_token * it.elem_bytes, it.whole_buffer_at_batch_1)
        for count, it in counts.values()
        if not (it.per_score or it.per_row)
    )  # fmt: skip
    general = tuple(
        (count, it.elem_bytes, it.fixed, it.per_position, it.per_token,
         it.whole_buffer_at_batch_1, it.per_score, it.score_align, it.per_row, it.align)
        for count, it in counts.values()
        if it.per_score or it.per_row
    )  # fmt: skip
    sized = (fixed, position, token, token_b1, by_token, general)
    _SIZES[id(items)] = (items, round_to, sized)
    return sized


def _transient_widths(plan: TrainingPlan) -> tuple[int, int, int]:
    """Gradients in flight at the peak of a layer's backward, inside the MLP's gated multiply,
    per token: (bytes of the layer's output gradient, how many (B, S, I) gradients, bytes of
    one per token); :func:`_layer_transient` sizes them at (B, S).

    ``down_proj``'s backward has produced the gradient of its input (B, S, I) and released its
    saved input; the multiply's backward then makes the gradients of both factors, beside the
    layer's output gradient (stream width) that the residual path still holds.
    """
    spec, reg = plan.spec, plan.regime
    stream = 4 if reg.autocast else reg.compute_bytes
    width = spec.intermediate_size
    if spec.moe is not None:
        width = spec.moe.expert_intermediate_size * spec.moe.top_k
    branches = 3 if spec.mlp_kind is MlpKind.GATED else 2
    grad_bytes = reg.compute_bytes
    if spec.activation == "gelu_new":
        branches = 4  # its tanh formula's backward holds four (B, S, I) gradients at once
        grad_bytes = 4 if reg.autocast else grad_bytes  # pow runs in fp32 under autocast
    return spec.hidden_size * stream, branches, width * grad_bytes


def _layer_transient(widths: tuple[int, int, int], tokens: int, r: int) -> int:
    """:func:`_transient_widths` at ``tokens`` = B * S, one allocation each."""
    stream, branches, width = widths
    return alloc_bytes(tokens * stream, r) + branches * alloc_bytes(tokens * width, r)


def _norm_transient(plan: TrainingPlan, b: int, s: int) -> int:
    """Peak temporaries of an RMSNorm's backward: it runs in fp32 (x.to(float32)), and the
    gradients of ``x * rsqrt`` and of ``pow`` meet five fp32 (B, S, H) tensors at once."""
    return 5 * alloc_bytes(b * s * plan.spec.hidden_size * 4, plan.round_to)


# Not frozen: one is built per estimate, and a frozen dataclass's __init__ costs about
# 0.2 us a field (object.__setattr__ each); nothing changes one once it is built.
@dataclass(slots=True)
class _At:
    """What every phase and backward-peak candidate reads at one (batch, seq)."""

    plan: TrainingPlan
    batch: int
    seq: int
    a_model: int
    """Activations saved outside the layers (rotary cos/sin, position ids, dropout masks)."""
    a_layers: int
    a_head: int
    """Final norm, lm_head input, the loss's log-softmax and targets."""
    cache_layers: int
    """Autocast's half weight copies the layers' matmuls hold."""
    first_layer: int
    """Saved bytes of the first decoder layer."""
    saved: list[int]
    """Saved bytes of the plan's tuples at (batch, seq), by :class:`_PlanSums` slot
    (``_NLL``, ``_NORM_INPUT``, the layers' down-projection inputs and recomputed tensors)."""
    scalar: int
    """The loss (and, in backward, its gradient): one fp32 scalar."""
    base: dict[str, int]
    """Every category, 0 but the buffers, the inputs and (with states) the parameters and
    optimizer states: each phase is ``{**base, ...}`` with the step's own categories."""
    ckpt: bool
    """Full activation checkpointing."""
    tokens: int
    grads_head: int
    """Gradients written before the layers' backward: lm_head and the final norm."""
    layer_transient: int
    """:func:`_layer_transient` at (batch, seq)."""
    sums: _PlanSums

    def alloc(self, nbytes: int) -> int:
        return alloc_bytes(nbytes, self.plan.round_to)


_NO_BYTES = dict.fromkeys(CATEGORIES, 0)
"""Every category at 0, in order (copied: cheaper than building one per estimate)."""

_MODEL, _HEAD, _NLL, _NORM_INPUT, _FIRST_DOWN, _LAST_DOWN, _FIRST_RECOMPUTE, _LAST_RECOMPUTE = (
    range(8)
)
"""Slots of :attr:`_PlanSums.sized` (and of :attr:`_At.saved`); the layers' tuples follow."""


@dataclass(frozen=True, slots=True)
class _PlanSums:
    """What :func:`_at` reads of a plan whatever (batch, seq), summed once per plan object."""

    param_bytes: int
    state_bytes: int
    cache_layers: int
    scalar: int
    ckpt: bool
    grads_head: int
    first: LayerGroup
    """The first decoder layer's group."""
    sized: tuple[_Sized, ...]
    """The saved tuples every estimate sums (:func:`_sized`), by slot: the model's, the
    head's, the loss targets, the final norm's input, the first and last layers'
    down-projection inputs and what backward's recomputation of them saves again, less the
    layer input checkpointing kept already (the first norm saves that very tensor when the
    stream is fp32, or a LayerNorm; none without full checkpointing), then each distinct tuple
    of the layer groups."""
    layer_slots: tuple[tuple[int, int], ...]
    """(count, slot of its saved tuple) per layer group."""
    first_slot: int
    transient: tuple[int, int, int]
    """:func:`_transient_widths`."""
    loss: _LossWidths
    """:func:`_loss_widths`."""


_PLAN_SUMS: dict[int, tuple[TrainingPlan, _PlanSums]] = {}


def _plan_sums(plan: TrainingPlan) -> _PlanSums:
    """:class:`_PlanSums` of ``plan``, kept per plan object (plans are cached)."""
    hit = _PLAN_SUMS.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    if len(_PLAN_SUMS) > 4096:
        _PLAN_SUMS.clear()
    r = plan.round_to
    layers_grad = sum(g.count * g.grad_bytes for g in plan.layers)
    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    first, last = _first_layer(plan), plan.layers[-1]
    tuples = [
        plan.model_saved, plan.head_saved, plan.nll_saved, plan.final_norm_input,
        first.down_input, last.down_input,
        first.recompute if ckpt else (), last.recompute if ckpt else (),
    ]  # fmt: skip
    slots: dict[int, int] = {}  # groups that share their saved tuple sum it once
    for g in plan.layers:
        if id(g.saved) not in slots:
            slots[id(g.saved)] = len(tuples)
            tuples.append(g.saved)
    sums = _PlanSums(
        param_bytes=plan.param_bytes,
        state_bytes=plan.state_bytes,
        cache_layers=sum(g.count * g.cache_bytes for g in plan.layers),
        scalar=alloc_bytes(4, r),
        ckpt=ckpt,
        grads_head=plan.grad_bytes - layers_grad - plan.grads.get("embeddings", 0),
        first=first,
        sized=tuple(_sized(t, r) for t in tuples),
        layer_slots=tuple((g.count, slots[id(g.saved)]) for g in plan.layers),
        first_slot=slots[id(first.saved)],
        transient=_transient_widths(plan),
        loss=_loss_widths(plan),
    )
    _PLAN_SUMS[id(plan)] = (plan, sums)
    return sums


def _at(plan: TrainingPlan, batch: int, seq: int, states: bool = True) -> _At:
    """What the phases read at (batch, seq); ``states=False``: parameters and optimizer states
    left at 0 (:func:`parts_at`)."""
    r = plan.round_to
    sums = _plan_sums(plan)
    saved = _saved_sums(sums.sized, batch, seq, r)
    base = _NO_BYTES.copy()
    base["buffers"] = plan.buffers
    base["inputs"] = 2 * alloc_bytes(batch * seq * 8, r)  # input_ids and labels, int64
    if states:
        base["parameters"] = sums.param_bytes
        base["optimizer_states"] = sums.state_bytes
    return _At(
        plan,
        batch,
        seq,
        saved[_MODEL],
        sum(count * saved[slot] for count, slot in sums.layer_slots),
        saved[_HEAD],
        sums.cache_layers,
        saved[sums.first_slot],
        saved,
        sums.scalar,
        base,
        sums.ckpt,
        batch * seq,
        sums.grads_head,
        _layer_transient(sums.transient, batch * seq, r),
        sums,
    )


def _forward_cache(at: _At) -> int:
    """Autocast copies held through the forward's end: with full checkpointing the layers'
    saved tensors (their half weights included) are dropped in the forward; the casts live in
    autocast's cache only until the region ends, and come back one layer at a time when
    backward recomputes it."""
    return at.plan.cache_head + (0 if at.ckpt else at.cache_layers)


def _end_of_forward(at: _At) -> dict[str, int]:
    """Everything saved for backward, the autocast copies the graph holds, the loss."""
    return {
        **at.base,
        "activations": at.a_model + at.a_layers + at.a_head,
        "autocast_cache": _forward_cache(at),
        "temporaries": at.scalar,
    }


def _loss_backward(at: _At) -> dict[str, int] | None:
    """Inside log_softmax's backward: nll_loss has released its int64 targets; its fp32
    (B*S, V) gradient and log_softmax's own are both alive beside the saved output."""
    fp32_logits = at.alloc(at.tokens * at.plan.spec.vocab_size * 4)
    return {
        **at.base,
        "activations": at.a_model + at.a_layers + at.a_head - at.saved[_NLL],
        "autocast_cache": _forward_cache(at),
        "temporaries": 2 * fp32_logits + 2 * at.scalar,
    }


def _last_layer_backward(at: _At) -> dict[str, int] | None:
    """The last layer's MLP multiply: every layer still saved; the down-projection has released
    its saved input (and its half weight copy), its weight gradient is out, and the multiply's
    gradients are in flight (:func:`_layer_transient`)."""
    plan = at.plan
    last = plan.layers[-1]
    return {
        **at.base,
        "activations": at.a_model + at.a_layers + at.saved[_LAST_RECOMPUTE] - at.saved[_LAST_DOWN],
        "autocast_cache": (last.cache_bytes if at.ckpt else at.cache_layers) - plan.last_down_cast,
        "gradients": at.grads_head + plan.last_down_grad,
        "temporaries": at.layer_transient + 2 * at.scalar + plan.dequant_bytes,
    }


def _moe_combine_backward(at: _At) -> dict[str, int] | None:
    """The last MoE block's combine: proj_out (half) * routing weights (fp32) is fp32, so its
    backward holds three fp32 (B*S*k, H) gradients and the half one for proj_out, beside the
    block's output gradient. None unless the last layer is an MoE layer."""
    plan, spec = at.plan, at.plan.spec
    if spec.moe is None or not spec.is_moe_layer(spec.n_layers - 1):
        return None
    k, hidden = spec.moe.top_k, spec.hidden_size
    wide = at.alloc(at.tokens * k * hidden * 4)
    half = 4 if plan.regime.autocast else plan.regime.compute_bytes
    narrow = at.alloc(at.tokens * k * hidden * half)
    out_grad = at.alloc(at.tokens * hidden * half)
    return {
        **at.base,
        "activations": at.a_model + at.a_layers,
        "autocast_cache": 0 if at.ckpt else at.cache_layers,
        "gradients": at.grads_head,
        "temporaries": 3 * wide + narrow + out_grad + 2 * at.scalar,
    }


def _final_norm_backward(at: _At) -> dict[str, int] | None:
    """The final RMSNorm's backward: lm_head's gradient is out, the norm's fp32 input still
    saved, five fp32 (B, S, H) temporaries (:func:`_norm_transient`). None without one."""
    spec = at.plan.spec
    if not (spec.final_norm and spec.norm_kind is NormKind.RMSNORM):
        return None
    return {
        **at.base,
        "activations": at.a_model + at.a_layers + at.saved[_NORM_INPUT],
        "autocast_cache": 0 if at.ckpt else at.cache_layers,
        "gradients": at.grads_head,
        "temporaries": _norm_transient(at.plan, at.batch, at.seq) + 2 * at.scalar,
    }


def _first_layer(plan: TrainingPlan) -> LayerGroup:
    return next(g for g in plan.layers if g.first)


def _first_layer_backward(at: _At) -> dict[str, int] | None:
    """The first layer's MLP multiply: only the first layer's activations are left, every
    other layer's gradients are written (the embeddings' not yet)."""
    plan = at.plan
    first = at.sums.first
    return {
        **at.base,
        "activations": at.a_model
        + at.first_layer
        + at.saved[_FIRST_RECOMPUTE]
        - at.saved[_FIRST_DOWN],
        "autocast_cache": first.cache_bytes - plan.first_down_cast,
        "gradients": plan.grad_bytes - plan.grads.get("embeddings", 0) - first.grad_bytes
        + plan.first_down_grad,
        "temporaries": at.layer_transient + 2 * at.scalar + plan.dequant_bytes,
    }  # fmt: skip


def _embedding_backward(at: _At) -> dict[str, int] | None:
    """The embedding's backward, last: its (V, H) gradient beside the others; untied, the
    incoming (B, S, H) gradient is still alive; tied, the new gradient and its sum with
    lm_head's (out of place) are both alive. None when the embeddings are frozen."""
    plan, spec = at.plan, at.plan.spec
    if "embeddings" not in plan.grads:
        return None
    if spec.tie_word_embeddings:
        extra = 2 * at.alloc(spec.vocab_size * spec.hidden_size * plan.regime.grad_bytes)
    else:
        stream = 4 if plan.regime.autocast else plan.regime.compute_bytes
        extra = at.alloc(at.tokens * spec.hidden_size * stream)
    return {**at.base, "gradients": plan.grad_bytes, "temporaries": extra + 2 * at.scalar}


_BACKWARD_CANDIDATES = (
    ("loss_backward", _loss_backward),
    ("last_layer_backward", _last_layer_backward),
    ("moe_combine_backward", _moe_combine_backward),
    ("final_norm_backward", _final_norm_backward),
    ("first_layer_backward", _first_layer_backward),
    ("embedding_backward", _embedding_backward),
)
"""The instants of the backward where live memory can peak, in the order they happen."""


BACKWARD_CANDIDATES = tuple(name for name, _ in _BACKWARD_CANDIDATES)
"""The backward high points' names, in order (the first of equal peaks is the one reported)."""


def phase_gradients(
    total: Any,
    embeddings: Any,
    layers: Any,
    first_layer: Any,
    last_down: Any,
    first_down: Any,
) -> dict[str, Any]:
    """Gradient bytes live in each phase and at each backward high point, as the candidates
    above count them: ``total`` every gradient, ``embeddings`` the input embeddings' (written
    last), ``layers`` the decoder layers', ``first_layer`` the first layer's, ``last_down`` /
    ``first_down`` the down-projections' of the last / first layer. Plain arithmetic: the
    per-rank engine and the plan search call it with a rank's (sharded) sizes, on arrays."""
    head = total - layers - embeddings
    return {
        "after_load": 0,
        "end_of_forward": 0,
        "forward_peak": 0,
        "loss_backward": 0,
        "last_layer_backward": head + last_down,
        "moe_combine_backward": head,
        "final_norm_backward": head,
        "first_layer_backward": total - embeddings - first_layer + first_down,
        "embedding_backward": total,
        "after_backward": total,
        "optimizer_step": total,
        "after_zero_grad": 0,
    }


def step_at(plan: TrainingPlan, batch: int, seq: int, kernels: Kernels | None = None) -> _At:
    """What :func:`parts_at` reads at (batch, seq): the plan of the attention kernels there
    (``kernels`` when the caller chose them already), model states left out."""
    if kernels is None:
        kernels = attention_kernels(plan.spec, plan.setup, batch, seq)
    if kernels != plan.kernels:  # as evaluate does
        plan = dataclasses.replace(training_plan(plan.spec, plan.setup, kernels),
                                   grads=plan.grads)  # fmt: skip
    return _at(plan, batch, seq, states=False)


def parts_at(at: _At) -> dict[str, dict[str, int]]:
    """Every phase and backward high point at :func:`step_at`'s (batch, seq) without the model
    states (parameters, optimizer states, gradients and the step's temporaries are 0; the
    per-rank engine puts a rank's in, ``dist_rank.single_stage_phases``): what the step itself
    allocates, from the same candidates :func:`evaluate` takes. A high point this model does
    not have is absent. The phases with nothing of the step's own (after load, after backward,
    the optimizer step, after zero_grad) are one dict: read them, do not change them."""
    idle = at.base.copy()
    parts: dict[str, dict[str, int]] = {"after_load": idle, "end_of_forward": _end_of_forward(at)}
    for name, fn in _BACKWARD_CANDIDATES:
        phase = fn(at)
        if phase is not None:
            phase["gradients"] = 0
            parts[name] = phase
    parts["after_backward"] = idle
    parts["optimizer_step"] = idle
    parts["after_zero_grad"] = idle
    parts["forward_peak"] = _forward_peak(at)
    return parts


def _forward_peak(at: _At) -> dict[str, int]:
    """While the loss runs in the forward: every activation, all autocast copies (biases too),
    the half logits and their fp32 copy, and :func:`_forward_loss_temporaries`."""
    plan, spec = at.plan, at.plan.spec
    logits = at.alloc(at.tokens * spec.vocab_size * plan.regime.compute_bytes)
    upcast = at.alloc(at.tokens * spec.vocab_size * 4) if plan.regime.compute_bytes != 4 else 0
    return {
        **at.base,
        "activations": at.a_model + at.a_layers + at.a_head,
        "autocast_cache": at.cache_layers + plan.cache_head + plan.cache_bias,
        "temporaries": logits
        + upcast
        + _forward_loss_temporaries(plan, at.sums.loss, at.batch, at.seq)
        + plan.dequant_bytes,
    }


def _backward_sections(at: _At, best_name: str, best: dict[str, int]) -> dict[str, int]:
    """Activations by trace section at the backward peak when it lies in the layers."""
    if best_name not in (
        "last_layer_backward", "first_layer_backward", "final_norm_backward",
        "moe_combine_backward",
    ):  # fmt: skip
        return {}
    plan = at.plan
    by_section: dict[str, int] = {}
    for item in plan.model_saved:
        key = _model_section(item.key, at.ckpt, plan.setup.is_lora)
        by_section[key] = by_section.get(key, 0) + _one(item, at.batch, at.seq, plan.round_to)
    if at.ckpt:
        first_input = at.first_layer
        by_section["embedding"] = by_section.get("embedding", 0) + first_input
    sections = {k: v for k, v in by_section.items() if k != "layers"}
    sections["layers"] = best["activations"] - sum(sections.values())
    if best_name == "final_norm_backward":
        sections["final_norm"] = at.saved[_NORM_INPUT]
        sections["layers"] -= sections["final_norm"]
    return {k: v for k, v in sections.items() if v}


def evaluate(plan: TrainingPlan, batch: int, seq: int) -> StepMemory:
    """Live memory of the steady-state step at (batch, seq), per phase and category."""
    kernels = attention_kernels(plan.spec, plan.setup, batch, seq)
    if kernels != plan.kernels:  # a mask or a kernel limit changes with (batch, seq)
        plan = training_plan(plan.spec, plan.setup, kernels)
    at = _at(plan, batch, seq)
    phases: dict[str, dict[str, int]] = {
        "after_load": at.base.copy(),
        "end_of_forward": _end_of_forward(at),
    }
    candidates = [(name, fn(at)) for name, fn in _BACKWARD_CANDIDATES]
    best_name, best = max(
        ((name, phase) for name, phase in candidates if phase is not None),
        key=lambda item: sum(item[1].values()),
    )
    phases["peak_backward"] = best
    phases["after_backward"] = {**at.base, "gradients": plan.grad_bytes}
    phases["optimizer_step"] = {
        **at.base,
        "gradients": plan.grad_bytes,
        "temporaries": plan.step_temporary,
    }
    phases["after_zero_grad"] = at.base.copy()
    phases["forward_peak"] = _forward_peak(at)
    peak_phase = max((*PHASES, "forward_peak"), key=lambda k: sum(phases[k].values()))
    first_step = max(
        max(sum(v.values()) for k, v in phases.items() if k != "optimizer_step") - plan.state_bytes,
        sum(phases["optimizer_step"].values()),
    )
    acts = {"model": at.a_model, "layers": at.a_layers, "head_and_loss": at.a_head}
    temps = {_BACKWARD_TEMPORARIES[best_name]: best["temporaries"]}
    sections = _backward_sections(at, best_name, best)
    return StepMemory(phases, peak_phase, first_step, acts, temps, sections)


_LossWidths = tuple[int, int, int, int, bool]


def _loss_widths(plan: TrainingPlan) -> _LossWidths:
    """Live, unsaved tensors while the loss runs (beside the logits and their fp32 copy),
    :func:`_forward_loss_temporaries` sizes them: (fixed bytes, fp32 bytes per token of the
    final norm's output, how many fp32 K/V copies and their bytes per token, whether Llama 4's
    half K/V are held).

    Under AMP the rotary output is fp32 (cos/sin are), so ``DynamicCache`` holds fp32 copies of
    every layer's k and v (``lazy_initialization`` takes k's dtype) until the output is dropped;
    the model output also holds the final norm's fp32 output; the loss pads the labels to S+1
    (:func:`_forward_loss_temporaries`).
    """
    spec, reg, r = plan.spec, plan.regime, plan.round_to
    fixed = alloc_bytes(4, r)
    if any(t.value in ("sliding_attention", "chunked_attention") for t in spec.layer_types):
        fixed += alloc_bytes(8, r)  # an int64 scalar the model holds while building its masks
    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    norm_out = spec.hidden_size * 4 if reg.autocast and not spec.loss_after_text_model else 0
    half_cache = spec.rotary_complex and not ckpt
    copies = 0
    if not half_cache and reg.autocast:
        rotary = spec.position.value == "rotary"
        if rotary and not ckpt and spec.mla is None:
            copies = spec.n_layers * 2
    return fixed, norm_out, copies, spec.kv_dim * 4, half_cache


def _forward_loss_temporaries(plan: TrainingPlan, widths: _LossWidths, b: int, s: int) -> int:
    """:func:`_loss_widths` at (b, s); the padded labels (B, S+1), which at B == 1 are the
    saved targets themselves."""
    r = plan.round_to
    tokens = b * s
    fixed, norm_out, copies, kv, half_cache = widths
    out = fixed + (alloc_bytes(b * (s + 1) * 8, r) if b > 1 else 0)
    out += alloc_bytes(tokens * norm_out, r) + copies * alloc_bytes(tokens * kv, r)
    if half_cache:
        out += _half_cache_temporaries(plan, tokens)
    return out


def _half_cache_temporaries(plan: TrainingPlan, tokens: int) -> int:
    """Llama 4 rotates q and k as complex numbers and casts them back, so ``DynamicCache``
    holds the half k and v: the kernel saves those very tensors unless it was given
    ``repeat_kv`` copies (a masked layer with grouped heads); then they are unsaved."""
    spec, r = plan.spec, plan.round_to
    out = 0
    for i in range(spec.n_layers):
        kernel = plan.kernels[1 if spec.slides(i) else 0]
        if kernel.gqa == "repeat_kv" and spec.n_kv_heads > 1:
            out += 2 * alloc_bytes(tokens * spec.kv_dim * plan.regime.compute_bytes, r)
    return out


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
        setup.target, setup.gpu,
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


def _model_section(key: str, ckpt: bool, wrapped: bool = False) -> str:
    """The trace section of a model-level saved tensor: cos/sin are first saved by layer 0's
    rotary multiply (with checkpointing they are layer inputs, filed with the embeddings);
    position_ids, made by the model's own forward, are filed under ``loss``."""
    if key.startswith("rotary/"):
        return "embedding" if ckpt else "layers"
    if key == "checkpoint/position_ids":
        return "other" if wrapped else "loss"  # peft wraps the model: another module path
    return "embedding"


def _one(item: Saved, b: int, s: int, r: int) -> int:
    return alloc_bytes(item.nbytes(b, s), r)
