"""Evaluation of a training plan at (B, S): live bytes per phase (:func:`evaluate`), and the
fast peak-only path searches call thousands of times (:func:`training_peak_bytes`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memplan.estimate.train_plan import LayerGroup, TrainingPlan, training_plan
from memplan.formulas.activations import Saved
from memplan.formulas.training import alloc_bytes
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


BACKWARD_CANDIDATES = (
    "loss_backward",
    "last_layer_backward",
    "moe_combine_backward",
    "final_norm_backward",
    "first_layer_backward",
    "embedding_backward",
)
"""The instants of the backward where live memory can peak, in the order they happen (the
first of equal peaks is the one reported)."""

STATE_CATEGORIES = ("parameters", "optimizer_states", "gradients")
"""Categories set by the model states (:func:`with_states`); the optimizer step's temporaries
are the states' too."""


def phase_gradients(
    total: Any,
    embeddings: Any,
    layers: Any,
    first_layer: Any,
    last_down: Any,
    first_down: Any,
) -> dict[str, Any]:
    """Gradient bytes live in each phase and at each backward high point.

    ``total``: every gradient; ``embeddings``: the input embeddings' (written last);
    ``layers``: the decoder layers'; ``first_layer``: the first layer's; ``last_down`` /
    ``first_down``: the down-projection's gradient of the last / first layer, allocated before
    its MLP's multiply runs. The rest (lm_head, final norm) is written before the layers'
    backward. Plain arithmetic: the per-rank engine and the plan search call it on arrays."""
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


def with_states(
    parts: dict[str, dict[str, Any]],
    params: Any,
    states: Any,
    step_temporary: Any,
    gradients: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """``parts`` (:func:`step_parts`) with the model states in every phase: parameters,
    optimizer states, the phase's gradients, and the optimizer step's temporaries. Plain
    arithmetic (arrays welcome); new dicts, ``parts`` is left as it is."""
    out = {}
    for name, phase in parts.items():
        full = phase.copy()
        full["parameters"] = params
        full["optimizer_states"] = states
        full["gradients"] = gradients[name]
        if name == "optimizer_step":
            full["temporaries"] = full["temporaries"] + step_temporary
        out[name] = full
    return out


def plan_gradients(plan: TrainingPlan) -> dict[str, Any]:
    """:func:`phase_gradients` of a plan's own gradients."""
    first = next(g for g in plan.layers if g.first)
    return phase_gradients(
        plan.grad_bytes,
        plan.grads.get("embeddings", 0),
        sum(g.count * g.grad_bytes for g in plan.layers),
        first.grad_bytes,
        plan.last_down_grad,
        plan.first_down_grad,
    )


def evaluate(plan: TrainingPlan, batch: int, seq: int) -> StepMemory:
    """Live memory of the steady-state step at (batch, seq), per phase and category."""
    parts, acts = _step_parts(plan, batch, seq)
    full = with_states(
        parts, plan.param_bytes, plan.state_bytes, plan.step_temporary, plan_gradients(plan)
    )
    candidates = [(n, full[n]) for n in BACKWARD_CANDIDATES if n in full]
    best_name, best = max(candidates, key=lambda item: sum(item[1].values()))
    phases = {name: full[name] for name in _PHASE_ORDER if name != "peak_backward"}
    phases["peak_backward"] = best
    phases = {name: phases[name] for name in _PHASE_ORDER}
    peak_phase = max((*PHASES, "forward_peak"), key=lambda k: sum(phases[k].values()))
    states = plan.state_bytes
    first_step = max(
        max(sum(phases[k].values()) for k in phases if k not in ("optimizer_step",)) - states,
        sum(phases["optimizer_step"].values()),
    )
    sections = _backward_sections(plan, batch, seq, best_name, best)
    temps = {_BACKWARD_TEMPORARIES[best_name]: best["temporaries"]}
    return StepMemory(phases, peak_phase, first_step, acts, temps, sections)


_PHASE_ORDER = (
    "after_load",
    "end_of_forward",
    "peak_backward",
    "after_backward",
    "optimizer_step",
    "after_zero_grad",
    "forward_peak",
)


def step_parts(plan: TrainingPlan, batch: int, seq: int) -> dict[str, dict[str, int]]:
    """Every phase and backward high point at (batch, seq), without the model states
    (:data:`STATE_CATEGORIES` are 0; :func:`with_states` fills them): what the step itself
    allocates. A backward high point that does not exist for this model is absent."""
    return _step_parts(plan, batch, seq)[0]


def _step_parts(
    plan: TrainingPlan, batch: int, seq: int
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """:func:`step_parts` and the saved bytes by part (model, layers, head and loss)."""
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
    # nll_loss's saved int64 targets and fp32 total_weight, freed when its backward has run
    nll_saved = _sum_saved(plan.nll_saved, batch, seq, r)
    scalar = alloc_bytes(4, r)  # the loss (and, in backward, its gradient)

    base = dict.fromkeys(CATEGORIES, 0)
    base.update(buffers=plan.buffers, inputs=inputs)

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
    phases["loss_backward"] = phase(
        activations=activations - nll_saved,
        autocast_cache=cache,
        temporaries=2 * fp32_logits + 2 * scalar,
    )
    transient = _layer_transient(plan, batch, seq)
    # The last layer's backward starts with every layer still saved; inside its MLP the
    # down-projection has released its saved input (its gradient: phase_gradients).
    last = plan.layers[-1]
    recompute_last = _recompute(plan, last, batch, seq)
    down_input = _sum_saved(last.down_input, batch, seq, r)
    phases["last_layer_backward"] = phase(
        activations=a_model + a_layers + recompute_last - down_input,
        autocast_cache=(last.cache_bytes if ckpt else cache_layers) - plan.last_down_cast,
        temporaries=transient + 2 * scalar + plan.dequant_bytes,
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
        phases["moe_combine_backward"] = phase(
            activations=a_model + a_layers,
            autocast_cache=0 if ckpt else cache_layers,
            temporaries=3 * wide + narrow + out_grad + 2 * scalar,
        )
    if spec.final_norm and spec.norm_kind is NormKind.RMSNORM:
        # the final norm's backward: lm_head's gradient is out, the norm's fp32 input still saved
        norm_input = _sum_saved(plan.final_norm_input, batch, seq, r)
        phases["final_norm_backward"] = phase(
            activations=a_model + a_layers + norm_input,
            autocast_cache=0 if ckpt else cache_layers,
            temporaries=_norm_transient(plan, batch, seq) + 2 * scalar,
        )
    first = next(g for g in plan.layers if g.first)
    a_first = group_bytes[id(first)]
    recompute_first = _recompute(plan, first, batch, seq)
    down_first = _sum_saved(first.down_input, batch, seq, r)
    phases["first_layer_backward"] = phase(
        activations=a_model + a_first + recompute_first - down_first,
        autocast_cache=first.cache_bytes - plan.first_down_cast,
        temporaries=transient + 2 * scalar + plan.dequant_bytes,
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
        phases["embedding_backward"] = phase(temporaries=extra + 2 * scalar)
    phases["after_backward"] = phase()
    phases["optimizer_step"] = phase()
    phases["after_zero_grad"] = phase()
    phases["forward_peak"] = phase(
        activations=activations,
        autocast_cache=cache_layers + plan.cache_head + plan.cache_bias,
        temporaries=logits
        + upcast
        + _forward_loss_temporaries(plan, batch, seq)
        + plan.dequant_bytes,
    )
    return phases, {"model": a_model, "layers": a_layers, "head_and_loss": a_head}


def _backward_sections(
    plan: TrainingPlan, batch: int, seq: int, best_name: str, best: dict[str, int]
) -> dict[str, int]:
    """Activations by trace section at the backward peak when it lies in the layers."""
    if best_name not in (
        "last_layer_backward",
        "first_layer_backward",
        "final_norm_backward",
        "moe_combine_backward",
    ):
        return {}
    r = plan.round_to
    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    by_section: dict[str, int] = {}
    for item in plan.model_saved:
        key = _model_section(item.key, ckpt, plan.setup.is_lora)
        by_section[key] = by_section.get(key, 0) + _one(item, batch, seq, r)
    if ckpt:
        first = next(g for g in plan.layers if g.first)
        by_section["embedding"] = by_section.get("embedding", 0) + _sum_saved(
            first.saved, batch, seq, r
        )
    sections = {k: v for k, v in by_section.items() if k != "layers"}
    sections["layers"] = best["activations"] - sum(sections.values())
    if best_name == "final_norm_backward":
        norm_input = _sum_saved(plan.final_norm_input, batch, seq, r)
        sections["final_norm"] = norm_input
        sections["layers"] -= norm_input
    return {k: v for k, v in sections.items() if v}


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
