"""The rank-local model: the single-GPU engine's plan for what one rank computes.

Tensor parallelism shrinks heads and widths (``dist_states.local_spec``), context parallelism
the sequence; FSDP and DeepSpeed run the forward in half (``activation_precision``); sequence
parallelism divides the saved tensors of the norms, the residual dropouts and a checkpointed
layer input by ``tp`` (:func:`sp_split`), while the linear layers' inputs stay whole (DTensor
all-gathers them before the matmul and autograd saves the gathered tensor, DIST-NOTES.md).
Plans are found by the identity of the spec and the parallel plan (hashing a whole ModelSpec
per call would cost more than the estimate), as ``training_peak_bytes`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.errors import SetupError
from memplan.estimate.dist_states import activation_precision, local_spec, static_setup
from memplan.estimate.train_kernels import Kernels
from memplan.estimate.train_plan import TrainingPlan, attention_kernels, training_plan
from memplan.estimate.train_step import _sum_saved
from memplan.formulas.activations import Saved
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan
from memplan.specs.training import Precision, TrainingSetup

__all__ = ["LocalStep", "local_step", "local_step_fast", "sp_split"]

_SP_PREFIXES = (
    "input_layernorm/",
    "post_attention_layernorm/",
    "pre_feedforward_layernorm/",
    "post_feedforward_layernorm/",
    "final_norm/",
)
_SP_KEYS = ("self_attn/mask", "mlp/mask", "checkpoint/layer_input", "embeddings/dropout/mask")


def sp_split(key: str) -> bool:
    """Whether sequence parallelism splits this saved tensor over the sequence (the norms,
    the residual dropouts, a checkpointed layer input; not a norm's fixed weight copy)."""
    if key.endswith("one_plus_weight_fp32"):
        return False
    return key.startswith(_SP_PREFIXES) or key in _SP_KEYS


# Not frozen: one is built per estimate, and a frozen dataclass's __init__ costs about
# 0.2 us a field (object.__setattr__ each); nothing changes one once it is built.
@dataclass(slots=True)
class LocalStep:
    """One rank's local model (the single-GPU engine's plan) at (micro-batch, seq / cp)."""

    plan: TrainingPlan
    batch: int
    seq: int
    kernels: Kernels
    """The attention kernels at (batch, seq): the plan's, unless ``seq`` is 1 (a plan takes
    at least two tokens' kernels, ``training_plan``)."""

    @property
    def layer_acts(self) -> int:
        """Saved bytes of all decoder layers (one micro-batch)."""
        r = self.plan.round_to
        return sum(g.count * _sum_saved(g.saved, self.batch, self.seq, r) for g in self.plan.layers)

    @property
    def model_acts(self) -> int:
        """Saved bytes outside the layers before them (rotary tables, embedding dropout)."""
        return _sum_saved(self.plan.model_saved, self.batch, self.seq, self.plan.round_to)

    @property
    def head_acts(self) -> int:
        """Saved bytes of the final norm, lm_head and loss."""
        return _sum_saved(self.plan.head_saved, self.batch, self.seq, self.plan.round_to)


@lru_cache(maxsize=256)
def local_step(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> LocalStep:
    """The rank-local model at the setup's micro-batch and sequence (cached per plan)."""
    return _make_local_step(spec, setup, plan)


_FAST_PLAN: dict[tuple[int, ...], tuple[ModelSpec, TrainingSetup, TrainingPlan]] = {}


def _local_plan(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    batch: int = 1,
    seq: int = 2,
    precision: Precision | None = None,
) -> TrainingPlan:
    """The single-GPU engine's plan of the rank-local model with the attention kernels of its
    own (micro-batch, local sequence), found by the identity of ``spec``, tp, the kernels and
    the plan's setup (``training_plan``'s own cache hashes the whole spec). ``precision``:
    :func:`activation_precision`, when the caller has it."""
    if precision is None:
        precision = activation_precision(setup, plan)
    key = _local_setup(static_setup(setup), precision)
    lspec = local_spec(spec, plan)
    kernels = attention_kernels(lspec, key, batch, max(seq, 2))
    # by identities (hashing the setup and the kernels costs more; kernel values are interned,
    # ``formulas.attention``); a hit is checked against every input of ``training_plan``
    fast_key = (id(spec), plan.tp_degree, id(kernels[0]), id(kernels[1]), id(key))
    hit = _FAST_PLAN.get(fast_key)
    if hit is not None and hit[0] is spec and hit[1] is key and hit[2].kernels == kernels:
        return hit[2]
    if len(_FAST_PLAN) > 1024:
        _FAST_PLAN.clear()
    tplan = training_plan(lspec, key, kernels)
    _FAST_PLAN[fast_key] = (spec, key, tplan)
    return tplan


_LOCAL_SETUPS: dict[tuple[int, Precision], tuple[TrainingSetup, TrainingSetup]] = {}
""":func:`_local_setup` by the identity of the static setup (canonical, ``static_setup``)."""


def _local_setup(static: TrainingSetup, precision: Precision) -> TrainingSetup:
    """The setup of the rank-local plan: ``static`` (batch and sequence 1, from
    ``static_setup``) in the precision the runtime computes in (memoised: building a setup
    validates it, and hashing one costs more than the lookup)."""
    hit = _LOCAL_SETUPS.get((id(static), precision))
    if hit is not None and hit[0] is static:
        return hit[1]
    if len(_LOCAL_SETUPS) > 256:
        _LOCAL_SETUPS.clear()
    local = dataclasses.replace(static, precision=precision)
    _LOCAL_SETUPS[(id(static), precision)] = (static, local)
    return local


def _make_local_step(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, precision: Precision | None = None
) -> LocalStep:
    cp = plan.cp_degree
    seq = setup.seq // cp
    tplan = _local_plan(spec, setup, plan, setup.batch, seq, precision)
    unfused = sorted({k.backend for k in tplan.kernels} & {"eager", "math"}) if cp > 1 else []
    if unfused:
        raise SetupError(
            f"context parallelism runs on fused SDPA kernels (flash, cuDNN, memory-efficient), "
            f"not {unfused[0]}: choose --attention flash or sdpa with half precision"
        )
    b = setup.batch
    kernels = tplan.kernels if seq > 1 else attention_kernels(tplan.spec, tplan.setup, b, seq)
    if plan.sequence_parallel:
        tplan = _sequence_parallel_plan(tplan, b, seq, plan.tp_degree)
    return LocalStep(tplan, b, seq, kernels)


_FAST_LOCAL: dict[tuple[Any, ...], tuple[ModelSpec, ParallelPlan, LocalStep]] = {}


def local_step_fast(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> LocalStep:
    """:func:`local_step` looked up by the identity of ``spec`` and ``plan``."""
    # the local model depends on the plan only through tp, cp, sequence parallelism and the
    # precision the runtime computes in: plans that share them share the step
    precision = activation_precision(setup, plan)
    key = (id(spec), setup, plan.tp_degree, plan.cp_degree, plan.sequence_parallel, precision)
    hit = _FAST_LOCAL.get(key)
    if hit is not None and hit[0] is spec:
        return hit[2]
    if len(_FAST_LOCAL) > 4096:
        _FAST_LOCAL.clear()
    local = _make_local_step(spec, setup, plan, precision)
    _FAST_LOCAL[key] = (spec, plan, local)
    return local


def _sp_item(item: Saved, b: int, seq: int, tp: int) -> Saved:
    """``item`` at ``seq / tp`` of its tokens when sequence parallelism splits it, as a fixed
    size at this (batch, seq): ``b * (seq / tp) * per_token`` elements (seq % tp == 0)."""
    if not (sp_split(item.key) and item.per_token):
        return item
    numel = b * (seq // tp) * item.per_token + seq * item.per_position + item.fixed
    return Saved(item.key, item.elem_bytes, fixed=numel, category=item.category)


def _sequence_parallel_plan(tplan: TrainingPlan, b: int, seq: int, tp: int) -> TrainingPlan:
    """The local plan with the saved tensors sequence parallelism splits divided by ``tp``
    (the single-GPU engine then evaluates every phase and backward candidate with them)."""

    done: dict[int, tuple[Saved, ...]] = {}

    def split(items: tuple[Saved, ...]) -> tuple[Saved, ...]:
        # tuples the layer groups share stay shared (the step sums each one once)
        out = done.get(id(items))
        if out is None:
            out = done[id(items)] = tuple(_sp_item(i, b, seq, tp) for i in items)
        return out

    layers = tuple(
        dataclasses.replace(
            g, saved=split(g.saved), full_saved=split(g.full_saved),
            down_input=split(g.down_input), recompute=split(g.recompute),
        )
        for g in tplan.layers
    )  # fmt: skip
    return dataclasses.replace(
        tplan,
        layers=layers,
        model_saved=split(tplan.model_saved),
        head_saved=split(tplan.head_saved),
        final_norm_input=split(tplan.final_norm_input),
    )
