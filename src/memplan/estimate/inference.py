"""``inference_report(spec, setup, gpu) -> Report``: memory and latency of ``generate``.

Memory (root ``peak``; keys shared with the trace engine): ``parameters`` (weights in their
dtype or quantization format), ``buffers``, ``kv_cache`` (transformers' DynamicCache or
StaticCache, exact), ``temporaries`` (the prefill's largest transient: an estimate), and
``overheads`` (CUDA context, cuBLAS workspace: labelled lines). With tensor parallelism the
figures are per rank (weights and KV heads split, communication buffers not counted).

Latency (section ``latency``): prefill and decode under the roofline
(:mod:`memplan.formulas.time`) with explicit efficiency factors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.estimate.serving import check_weight_format
from memplan.formulas import serving as vllm
from memplan.formulas.buffers import buffer_breakdown
from memplan.formulas.dtypes import float_dtype_bytes
from memplan.formulas.flops import forward_flops_item
from memplan.formulas.kv_cache import kv_cache_item, kv_dtype_bytes
from memplan.formulas.overheads import overheads_item
from memplan.formulas.time import (
    DEFAULT_BANDWIDTH_EFFICIENCY,
    DEFAULT_COMPUTE_EFFICIENCY,
    ridge_batch,
    roofline_step_s,
)
from memplan.formulas.weights import normalize_format, weights_bytes
from memplan.report import Item, Phase, Report
from memplan.specs.hardware import Gpu
from memplan.specs.inference import InferenceSetup
from memplan.specs.model import MlpKind, ModelSpec

__all__ = [
    "Efficiency",
    "activation_bytes",
    "check_setup",
    "compute_dtype_for",
    "inference_report",
    "latency_item",
    "prefill_temporaries_item",
    "temporaries_item",
]


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of the peak that prefill compute and decode reads reach (overridable)."""

    compute: float = DEFAULT_COMPUTE_EFFICIENCY
    bandwidth: float = DEFAULT_BANDWIDTH_EFFICIENCY

    def __post_init__(self) -> None:
        for name in ("compute", "bandwidth"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 1):  # False for NaN too
                raise SetupError(f"{name} efficiency must be in (0, 1], got {value}")


def compute_dtype_for(fmt: str) -> str:
    """The dtype the matmuls run in: the weights' for plain dtypes; fp16 for GPTQ/AWQ kernels
    (dequantized fp16 GEMMs); bf16 for bitsandbytes; fp8 and int8 for those formats."""
    key = normalize_format(fmt)
    return {
        "gptq-int4": "fp16",
        "awq-int4": "fp16",
        "bnb-nf4": "bf16",
        "bnb-nf4-nodq": "bf16",
        "bnb-int8": "int8",
        "int4": "bf16",
    }.get(key, key)


def activation_bytes(fmt: str) -> int:
    """Bytes of an activation element: the weights' float width, 2 for quantized formats."""
    return float_dtype_bytes(normalize_format(fmt))


def temporaries_item(
    spec: ModelSpec,
    setup: InferenceSetup,
    act: int,
    *,
    batch: int,
    q_len: int,
    context: int,
    key: str = "temporaries",
) -> Item:
    """The largest transient of one forward over ``q_len`` new tokens with ``context`` keys (an
    estimate; the trace engine measures it). Candidates, the largest wins:

    * a layer's hidden and residual plus its MLP intermediates (``act(gate)``, ``up``, their
      product: ``3 B q I``);
    * the logits (``all`` positions or the ``last``; generate keeps an fp32 copy of the last);
    * MLA in transformers 5.23 (``DeepseekV2Attention.expand_kv``): the whole cached latent
      up-projected, ``B ctx H (nope + v)`` plus a new key tensor ``B ctx H (nope + rope)``;
    * eager attention (Gemma-2's default): scores ``B H q ctx`` in the activation dtype and
      their fp32 softmax.
    """
    b, h, tp = batch, spec.hidden_size, setup.tp_degree
    width = spec.intermediate_size
    if spec.moe is not None:
        width = max(width, spec.moe.expert_intermediate_size)
    mlp_factor = 3 if spec.mlp_kind is MlpKind.GATED else 2
    residual = 2 * b * q_len * h * act
    logit_rows = b * q_len if setup.logits == "all" and q_len > 1 else b
    candidates = {
        "layer_mlp": (
            residual + mlp_factor * b * q_len * width * act // tp,
            f"(2 B q h + {mlp_factor} B q I) x {act} B",
        ),
        "logits": (
            logit_rows * spec.vocab_size * act + b * spec.vocab_size * 4 + b * q_len * h * act,
            f"{logit_rows} rows x V x {act} B + fp32 copy of the last",
        ),
    }
    if spec.mla is not None:
        m = spec.mla
        expanded = b * context * spec.n_heads * (2 * m.qk_nope_head_dim + m.qk_rope_head_dim)
        expanded += b * context * spec.n_heads * m.v_head_dim
        candidates["mla_expanded_kv"] = (
            residual + expanded * act // tp,
            "B ctx H (2 nope + rope + v) x act: kv_b_proj output and the key tensor",
        )
    if setup.attention == "eager" or spec.model_type.startswith("gemma2"):
        scores = b * spec.n_heads * q_len * context * (2 * act + 4) // tp
        candidates["eager_scores"] = (residual + scores, "B H q ctx x (2 act + 4) B")
    name, (value, formula) = max(candidates.items(), key=lambda kv: kv[1][0])
    root = Item(key, unit="bytes", note="estimate")
    root.leaf(name, value, formula, "memplan estimate (transformers 5.23 modeling code)")
    return root


def prefill_temporaries_item(spec: ModelSpec, setup: InferenceSetup, act: int) -> Item:
    """The prefill's largest transient (see :func:`temporaries_item`)."""
    return temporaries_item(
        spec,
        setup,
        act,
        batch=setup.batch,
        q_len=setup.prompt_len,
        context=setup.prompt_len,
    )


def _decode_context(setup: InferenceSetup) -> int:
    """The mean context length over the decode steps (prompt + gen/2)."""
    return setup.prompt_len + max(setup.gen_len - 1, 0) // 2


def latency_item(
    spec: ModelSpec,
    setup: InferenceSetup,
    gpu: Gpu,
    weight_bytes: float,
    kv_bytes_per_element: int,
    efficiency: Efficiency,
) -> tuple[Item, dict[str, object]]:
    """Prefill and decode times under the roofline, and the scalars derived from them."""
    fmt = compute_dtype_for(setup.weights)
    peak = gpu.peak_flops_per_s(fmt) * setup.tp_degree
    bandwidth = gpu.bandwidth_bytes_per_s() * setup.tp_degree
    heads = vllm.vllm_kv_heads_per_rank(spec, setup.tp_degree) * setup.tp_degree
    prefill_flops = forward_flops_item(
        spec, batch=setup.batch, q_len=setup.prompt_len, convention="causal", logits="last"
    ).total
    prefill = roofline_step_s(
        prefill_flops, weight_bytes, peak, bandwidth, efficiency.compute, efficiency.bandwidth
    )
    context = _decode_context(setup)

    def decode_at(batch: int) -> tuple[float, float]:
        flops = forward_flops_item(
            spec, batch=batch, q_len=1, past_len=context, convention="causal", logits="last"
        ).total
        kv = kv_cache_item(
            spec,
            batch=batch,
            n_tokens=context + 1,
            dtype_bytes=kv_bytes_per_element,
            views=True,
            kv_heads=heads,
        ).total
        return flops, kv

    flops, kv_read = decode_at(setup.batch)
    step = roofline_step_s(
        flops, weight_bytes + kv_read, peak, bandwidth, efficiency.compute, efficiency.bandwidth
    )
    steps = max(setup.gen_len - 1, 0)
    flops_one, kv_one = decode_at(1)
    ridge = ridge_batch(
        weight_bytes, kv_one, flops_one, peak, bandwidth, efficiency.compute, efficiency.bandwidth
    )
    root = Item("latency", unit="s")
    root.leaf(
        "prefill",
        prefill.seconds,
        f"{prefill_flops:.4g} FLOP / ({peak / 1e12:g} TFLOP/s x {efficiency.compute}) "
        f"[{prefill.regime}]",
    )
    root.leaf(
        "decode",
        steps * step.seconds,
        f"{steps} steps x max({flops:.3g} FLOP compute, {weight_bytes + kv_read:.4g} B / "
        f"({bandwidth / 1e9:g} GB/s x {efficiency.bandwidth})) [{step.regime}]",
    )
    scalars: dict[str, object] = {
        "ttft_s": prefill.seconds,
        "time_per_output_token_s": step.seconds,
        "prefill_tokens_per_s": setup.batch * setup.prompt_len / prefill.seconds,
        "decode_tokens_per_s": setup.batch / step.seconds,
        "e2e_s": prefill.seconds + steps * step.seconds,
        "prefill_regime": prefill.regime,
        "decode_regime": step.regime,
        "decode_ridge_batch": ridge,
        "compute_efficiency": efficiency.compute,
        "bandwidth_efficiency": efficiency.bandwidth,
    }
    return root, scalars


def inference_report(
    spec: ModelSpec,
    setup: InferenceSetup,
    gpu: Gpu | None = None,
    *,
    efficiency: Efficiency | None = None,
    cuda_context_bytes: int | None = None,
) -> Report:
    """Peak memory of ``generate`` (per rank) and, with a GPU that has figures, its latency."""
    vllm.check_tp_degree(spec, setup.tp_degree)
    check_setup(setup, spec)
    fmt = check_weight_format(spec, setup.weights, setup.tp_degree)
    act = activation_bytes(fmt)
    kv_element = kv_dtype_bytes(setup.kv_dtype, "fp32" if act == 4 else "bf16")
    heads = vllm.vllm_kv_heads_per_rank(spec, setup.tp_degree)
    total_weights = int(weights_bytes(spec, fmt).total)
    weights_rank = -(total_weights // -setup.tp_degree)
    end_tokens = setup.prompt_len + max(setup.gen_len - 1, 0)
    static_len = setup.total_len if setup.cache == "static" else None

    def kv(batch: int, n_tokens: int, decoded: bool) -> Item:
        return kv_cache_item(
            spec,
            batch=batch,
            n_tokens=n_tokens,
            dtype_bytes=kv_element,
            cache=setup.cache,
            decoded=decoded,
            max_cache_len=static_len,
            kv_heads=heads,
        )

    buffers = buffer_breakdown(spec)
    overheads = overheads_item(gpu.name if gpu else None, cuda_context_bytes)
    fixed = weights_rank + buffers.total + overheads.total

    def peaks(batch: int) -> tuple[Item, Item, Item, Item]:
        """KV after the prefill, the prefill's temporaries, KV at the end, the last decode
        step's temporaries, at ``batch``."""
        at_batch = dataclasses.replace(setup, batch=batch)
        return (
            kv(batch, setup.prompt_len, decoded=False),
            prefill_temporaries_item(spec, at_batch, act),
            kv(batch, end_tokens, decoded=setup.gen_len > 1),
            temporaries_item(spec, at_batch, act, batch=batch, q_len=1, context=end_tokens),
        )

    def peak_bytes(batch: int) -> float:
        kv_prefill, temp_prefill, kv_end, temp_decode = peaks(batch)
        return fixed + max(kv_prefill.total + temp_prefill.total, kv_end.total + temp_decode.total)

    kv_prefill, temporaries, kv_end, decode_temporaries = peaks(setup.batch)
    prefill_peak = fixed + kv_prefill.total + temporaries.total
    end_peak = fixed + kv_end.total + decode_temporaries.total

    root = Item("peak", unit="bytes")
    root.leaf(
        "parameters",
        weights_rank,
        f"{fmt}: {total_weights:,} B" + (f" / tp {setup.tp_degree}" if setup.tp_degree > 1 else ""),
        "memplan.formulas.weights",
    )
    if buffers.total:
        root.add(buffers)
    if prefill_peak >= end_peak:
        root.add(kv_prefill)
        root.add(temporaries)
    else:
        root.add(kv_end)
        root.add(decode_temporaries)
    root.add(overheads)
    peak = int(root.total)
    phases = [
        Phase("after_load", int(fixed)),
        Phase("end_of_prefill", int(prefill_peak), f"KV cache of {setup.prompt_len} tokens"),
        Phase("end_of_generation", int(end_peak), f"KV cache of {end_tokens} tokens"),
    ]
    scalars: dict[str, object] = {
        "peak_bytes": peak,
        "peak_phase": "end_of_prefill" if prefill_peak >= end_peak else "end_of_generation",
        "kv_cache_bytes": int(kv_end.total),
        "weights_bytes": weights_rank,
    }
    notes = [
        f"KV cache: {setup.cache} cache, {kv_element} B per element; after generating "
        f"{setup.gen_len} tokens it holds {end_tokens} (the last token is never fed back)",
        "temporaries are memplan's estimate of a forward's largest transient (the trace measures it)",
    ]
    sections: dict[str, Item] = {}
    if gpu is not None:
        scalars["gpu_memory_bytes"] = gpu.memory_bytes
        scalars["headroom_bytes"] = gpu.memory_bytes - peak
        scalars["max_batch_size"] = _max_batch(peak_bytes, gpu.memory_bytes)
        if peak > gpu.memory_bytes:
            notes.append(f"does not fit: {peak:,} B needed on a {gpu.memory_bytes:,} B {gpu.name}")
        if gpu.memory_bandwidth_bytes_per_s is not None and gpu.tflops:
            latency, extra = latency_item(
                spec, setup, gpu, total_weights, kv_element, efficiency or Efficiency()
            )
            sections["latency"] = latency
            scalars.update(extra)
    return Report(
        kind="infer",
        model=spec.name,
        breakdown=root,
        setup={
            "batch": setup.batch,
            "prompt_len": setup.prompt_len,
            "gen_len": setup.gen_len,
            "weights": fmt,
            "kv_dtype": setup.kv_dtype,
            "cache": setup.cache,
            "logits": setup.logits,
            "tp": setup.tp_degree,
            "gpu": gpu.name if gpu else None,
        },
        scalars=scalars,
        phases=phases,
        notes=notes,
        sections=sections,
    )


def _max_batch(peak_of: Callable[[int], float], memory_bytes: int) -> int:
    """The largest batch whose peak fits in ``memory_bytes`` (0 when batch 1 does not)."""
    if peak_of(1) > memory_bytes:
        return 0
    low, high = 1, 2
    while peak_of(high) <= memory_bytes and high < 1 << 24:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if peak_of(middle) <= memory_bytes:
            low = middle
        else:
            high = middle
    return low


def check_setup(setup: InferenceSetup, spec: ModelSpec) -> None:
    """Reject a prompt plus generation longer than the model's positions."""
    if setup.total_len > spec.max_position_embeddings:
        raise SetupError(
            f"prompt + generation ({setup.total_len} tokens) is beyond {spec.name}'s "
            f"{spec.max_position_embeddings} positions"
        )
