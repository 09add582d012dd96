"""``inference_memory(spec, setup) -> InferenceMemory``: the live bytes of ``generate``, by phase.

The same phases as the trace engine's inference mode (``memplan trace --infer``):
``after_load`` (weights, buffers, the cache's counters), ``prefill_peak``, ``after_prefill``
(the prompt's KV cache and the first token), ``decode_peak`` (the last decode step, the one
with the longest cache), ``after_decode``. The two peaks come from replaying the forward op by
op (:mod:`memplan.formulas.forward_memory`); everything is in allocated bytes (CUDA target:
each storage rounded up to 512 B), the quantity ``torch.cuda.max_memory_allocated`` reports.
Memory outside the tensors (CUDA context, library workspaces) is not in these figures: see
:mod:`memplan.estimate.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from memplan.estimate.serving import stage_holds, stage_weights_bytes
from memplan.estimate.train_kernels import kernel_device
from memplan.formulas.attention import AttentionKernel, generate_attention_kernel
from memplan.formulas.dtypes import float_dtype_bytes
from memplan.formulas.forward_memory import (
    ForwardShape,
    Replay,
    forward_replay,
    kv_row_bytes,
    layer_runs,
)
from memplan.formulas.kv_cache import (
    cache_counter_bytes,
    cached_tokens,
    layer_window,
    linear_state_bytes,
)
from memplan.formulas.replay_attention import linear_states
from memplan.formulas.serving import PipelineStage, pipeline_stages, vllm_kv_heads_per_rank
from memplan.formulas.training import alloc_bytes, buffer_allocations, param_tensors
from memplan.formulas.weights import DTYPE_BYTES, normalize_format, weights_bytes
from memplan.report import INFERENCE_PHASES
from memplan.specs.inference import InferenceSetup
from memplan.specs.model import ModelSpec

__all__ = [
    "INFERENCE_PHASES",
    "InferenceMemory",
    "activation_bytes",
    "attention_kernels",
    "inference_memory",
    "inference_peak_bytes",
    "stages_of",
]

_TOKEN_BYTES = 8  # the greedy token, (batch, 1) int64


def activation_bytes(fmt: str) -> int:
    """Bytes of an activation element: the weights' float width, 2 for quantized formats."""
    return float_dtype_bytes(normalize_format(fmt))


@dataclass(frozen=True, slots=True)
class InferenceMemory:
    """Live bytes of one generate call (per rank with tensor parallelism)."""

    fixed: dict[str, int]
    """``parameters``, ``buffers`` and ``cache_counters`` (live from the start)."""
    phases: dict[str, int]
    """Live bytes at each of :data:`INFERENCE_PHASES` (``decode_peak`` 0 without decoding)."""
    peak_phase: str
    """``prefill`` or ``decode``."""
    at_peak: Replay
    """The replay of the forward that holds the peak (its ``at_peak``: tensor -> bytes)."""
    kv_end_bytes: int
    """The cache after the last step: its tensors' bytes (not rounded) and counters."""

    @property
    def peak_bytes(self) -> int:
        return max(self.phases["prefill_peak"], self.phases["decode_peak"])


def attention_kernels(
    spec: ModelSpec, setup: InferenceSetup, fmt: str, *, past: int, q_len: int
) -> tuple[AttentionKernel, AttentionKernel]:
    """The kernels of full-attention and sliding-window layers in one forward: the rule both
    engines share (:func:`memplan.formulas.attention.generate_attention_kernel`), on the GPU
    whose kernels the trace emulates by default; ``eager`` for soft-capped logits
    (transformers' default for Gemma 2) or when asked."""
    attention = setup.attention
    if spec.attn_logit_softcapping is not None:
        attention = "eager"
    device, _ = kernel_device(None)
    dtype = {"fp32": "float32", "fp16": "float16"}.get(normalize_format(fmt), "bfloat16")
    return tuple(  # type: ignore[return-value]
        generate_attention_kernel(
            spec,
            attention,
            device,
            dtype=dtype,
            batch=setup.batch,
            q_len=q_len,
            past=past,
            sliding=sliding,
            static_cache=setup.cache == "static",
            cache_len=setup.total_len,
        )
        for sliding in (False, True)
    )


def _round_to(setup: InferenceSetup) -> int:
    return 512 if setup.target == "cuda" else 1


def stages_of(spec: ModelSpec, setup: InferenceSetup) -> tuple[PipelineStage, ...]:
    """The pipeline stages of ``setup`` (one for ``pp_degree`` 1), layers split as vLLM's
    ``get_pp_indices`` or ``setup.pp_partition``."""
    return pipeline_stages(spec, setup.pp_degree, setup.pp_partition)


def _whole(spec: ModelSpec) -> PipelineStage:
    return PipelineStage(0, 0, spec.n_layers, True, True)


def parameter_bytes(
    spec: ModelSpec, setup: InferenceSetup, fmt: str, stage: PipelineStage | None = None
) -> int:
    """Weights of one rank (of one pipeline ``stage``): plain dtypes tensor by tensor, each
    allocation rounded; quantized formats from their packed layouts
    (:mod:`memplan.formulas.weights`)."""
    return _parameter_bytes(spec, fmt, setup.tp_degree, _round_to(setup), stage or _whole(spec))


@lru_cache(maxsize=256)
def _parameter_bytes(
    spec: ModelSpec, fmt: str, tp_degree: int, round_to: int, stage: PipelineStage
) -> int:
    if fmt in ("fp32", "fp16", "bf16") and tp_degree == 1:
        width = int(DTYPE_BYTES[fmt])
        return sum(
            alloc_bytes(t.numel * width, round_to)
            for t in param_tensors(spec)
            if stage_holds(spec, stage, t.layer, t.role, t.name)
        )
    if stage.first and stage.last:
        total = int(weights_bytes(spec, fmt).total)
    else:
        total = stage_weights_bytes(spec, fmt, stage)
    return -(total // -tp_degree)


def _fixed_bytes(
    spec: ModelSpec, setup: InferenceSetup, fmt: str, stage: PipelineStage
) -> dict[str, int]:
    """Parameters of the stage; the model's buffers on the first stage (the rotary
    ``inv_freq`` lives in the model's ``rotary_emb``); the cache counters of its layers."""
    r = _round_to(setup)
    counters = _counters(spec, setup.cache, stage.start, stage.stop) // 8
    buffers = buffer_allocations(spec) if stage.first else ()
    return {
        "parameters": parameter_bytes(spec, setup, fmt, stage),
        "buffers": sum(alloc_bytes(n, r) for n in buffers),
        "cache_counters": counters * alloc_bytes(8, r),
    }


@lru_cache(maxsize=256)
def _counters(spec: ModelSpec, cache: str, start: int = 0, stop: int | None = None) -> int:
    """The cache's int64 counters of layers ``[start, stop)``: one per layer of a
    StaticCache, one per sliding layer of a DynamicCache."""
    stop = spec.n_layers if stop is None else stop
    if (start, stop) == (0, spec.n_layers):
        return cache_counter_bytes(spec, cache)
    per_layer = (
        1 if cache == "static" else int(layer_window(spec, i) is not None)
        for i in range(start, stop)
    )
    return 8 * sum(per_layer)


def _shape(
    spec: ModelSpec, setup: InferenceSetup, fmt: str, kv_bytes: int, *, past: int, q_len: int
) -> ForwardShape:
    act = activation_bytes(fmt)
    return ForwardShape(
        batch=setup.batch,
        q_len=q_len,
        past=past,
        act=act,
        kv_bytes=kv_bytes,
        kernels=attention_kernels(spec, setup, fmt, past=past, q_len=q_len),
        cache=setup.cache,
        max_cache_len=setup.total_len,
        logits_all=setup.logits == "all" and past == 0,
        tp_degree=setup.tp_degree,
        kv_heads=vllm_kv_heads_per_rank(spec, setup.tp_degree),
    )


def _cached(spec: ModelSpec, setup: InferenceSetup, index: int, seen: int, decoded: bool) -> int:
    """Tokens layer ``index``'s cache storage holds after ``seen`` tokens."""
    return cached_tokens(
        seen,
        layer_window(spec, index),
        cache=setup.cache,
        decoded=decoded,
        max_cache_len=setup.total_len,
    )


def _replay(
    spec: ModelSpec,
    setup: InferenceSetup,
    shape: ForwardShape,
    seen: int,
    decoded: bool,
    detail: bool,
    stage: PipelineStage,
) -> Replay:
    """One forward (the stage's share) replayed on top of the cache of ``seen`` tokens (none
    in the prefill)."""
    replay = Replay(round_to=_round_to(setup), keep_log=detail)
    if seen:
        k_row, v_row = kv_row_bytes(spec, shape)
        for start, stop, _ in layer_runs(spec, stage.start, stage.stop):
            if spec.is_linear_attention(start):
                linear_states(spec, shape, replay, start, stop - start)
                continue
            tokens = _cached(spec, setup, start, seen, decoded)
            replay.new(f"kv/{start}/k", k_row * tokens, "kv_cache", stop - start)
            replay.new(f"kv/{start}/v", v_row * tokens, "kv_cache", stop - start)
    whole = stage.first and stage.last
    return forward_replay(spec, shape, replay, None if whole else stage)


def _kv_bytes(
    spec: ModelSpec,
    setup: InferenceSetup,
    shape: ForwardShape,
    seen: int,
    decoded: bool,
    *,
    round_to: int,
    stage: PipelineStage,
) -> int:
    """The cache's tensors of the stage's layers after ``seen`` tokens (each rounded up to
    ``round_to``)."""
    k_row, v_row = kv_row_bytes(spec, shape)
    total = 0
    for start, stop, _ in layer_runs(spec, stage.start, stage.stop):
        if spec.is_linear_attention(start):
            conv, recurrent = linear_state_bytes(spec, shape.batch, shape.act, round_to)
            total += (stop - start) * (conv + recurrent)
            continue
        tokens = _cached(spec, setup, start, seen, decoded)
        per_layer = alloc_bytes(k_row * tokens, round_to) + alloc_bytes(v_row * tokens, round_to)
        total += (stop - start) * per_layer
    return total


def inference_memory(
    spec: ModelSpec,
    setup: InferenceSetup,
    fmt: str,
    kv_bytes: int,
    *,
    detail: bool = True,
    stage: PipelineStage | None = None,
) -> InferenceMemory:
    """Live bytes at each phase of ``generate`` (greedy, ``setup.gen_len`` new tokens) on the
    GPU of one pipeline ``stage`` (default: the whole model on one GPU); ``detail=False``
    skips what only the breakdown at the peak needs (for searches)."""
    stage = stage or _whole(spec)
    fixed = _fixed_bytes(spec, setup, fmt, stage)
    base = sum(fixed.values())
    prompt, steps = setup.prompt_len, max(setup.gen_len - 1, 0)
    first = _shape(spec, setup, fmt, kv_bytes, past=0, q_len=prompt)
    prefill = _replay(spec, setup, first, 0, False, detail, stage)
    # the next token: made on the last stage, fed to the first; none on the stages between
    token = alloc_bytes(setup.batch * _TOKEN_BYTES, _round_to(setup))
    token *= int(stage.first or stage.last)
    step = _shape(spec, setup, fmt, kv_bytes, past=prompt + steps - 1, q_len=1)
    r = _round_to(setup)
    kv_prompt = _kv_bytes(spec, setup, step, prompt, False, round_to=r, stage=stage)
    end = prompt + steps
    kv_end = _kv_bytes(spec, setup, step, end, steps > 0, round_to=r, stage=stage)
    kv_end_tensors = _kv_bytes(spec, setup, step, end, steps > 0, round_to=1, stage=stage)
    counters = _counters(spec, setup.cache, stage.start, stage.stop)
    phases = {
        "after_load": base,
        "prefill_peak": base + prefill.peak,
        "after_prefill": base + kv_prompt + token,
        "decode_peak": 0,
        "after_decode": base + kv_end + token,
    }
    at_peak, peak_phase = prefill, "prefill"
    if steps:
        last = _replay(spec, setup, step, end - 1, steps > 1, detail, stage)
        phases["decode_peak"] = base + last.peak
        if last.peak > prefill.peak:
            at_peak, peak_phase = last, "decode"
    return InferenceMemory(fixed, phases, peak_phase, at_peak, kv_end_tensors + counters)


def inference_peak_bytes(spec: ModelSpec, setup: InferenceSetup, fmt: str, kv_bytes: int) -> int:
    """The peak of ``generate`` in allocated bytes, on the stage with the highest (for
    searches over batch or length)."""
    return max(
        inference_memory(spec, setup, fmt, kv_bytes, detail=False, stage=stage).peak_bytes
        for stage in stages_of(spec, setup)
    )
