"""``inference_report(spec, setup, gpu) -> Report``: memory and latency of ``generate``.

Memory (root ``peak``, the allocated bytes at the peak; keys shared with the trace engine):
``parameters`` (weights in their dtype or quantization format), ``buffers``, ``kv_cache``
(transformers' DynamicCache or StaticCache, as live at the peak), ``temporaries`` (every tensor
the forward holds there, by name) and ``inputs`` (the prompt's token ids). The phases and their
peaks come from replaying the prefill and the last decode step op by op
(:mod:`memplan.estimate.inference_memory`). ``peak_bytes`` is that peak: the tensors'
allocated bytes, as in ``train`` and ``trace``. The CUDA context and the cuBLAS workspace are
named lines of their own (section ``outside_tensors``), counted with the tensors in the fit
verdict (:mod:`memplan.estimate.fit`). With tensor parallelism the figures are per rank
(weights, heads and widths split; communication buffers not counted).

Latency (section ``latency``): prefill and decode under the roofline
(:mod:`memplan.formulas.time`) with explicit efficiency factors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.estimate.fit import Fit, fit_on_gpu, fit_scalars, largest
from memplan.estimate.inference_memory import (
    InferenceMemory,
    activation_bytes,
    inference_memory,
    inference_peak_bytes,
    stages_of,
)
from memplan.estimate.serving import check_weight_format, stage_weights_bytes
from memplan.formulas import serving as vllm
from memplan.formulas.flops import forward_flops_item
from memplan.formulas.forward_memory import REPLAYED_FAMILIES
from memplan.formulas.kv_cache import kv_cache_item, kv_dtype_bytes
from memplan.formulas.overheads import outside_tensors_item
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
from memplan.specs.model import ModelSpec

__all__ = [
    "Efficiency",
    "InferenceFit",
    "activation_bytes",
    "check_setup",
    "compute_dtype_for",
    "fit_inference",
    "inference_report",
    "latency_item",
    "memory_item",
]

_MAX_BATCH = 1 << 24
_SOURCE = "memplan.formulas.forward_memory (transformers 5.23 modeling code, torch 2.13 kernels)"


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
    (dequantized fp16 GEMMs); bf16 for bitsandbytes and for gpt-oss's MXFP4 experts
    (transformers' ``Mxfp4GptOssExperts`` multiply bf16 activations; the other layers are
    bf16); fp8 and int8 for those formats (the fp8 checkpoints' block and row-wise scaled
    GEMMs included)."""
    key = normalize_format(fmt)
    return {
        "gptq-int4": "fp16",
        "awq-int4": "fp16",
        "bnb-nf4": "bf16",
        "bnb-nf4-nodq": "bf16",
        "bnb-int8": "int8",
        "int4": "bf16",
        "mxfp4": "bf16",
        "fp8-block": "fp8",
        "fp8-rowwise": "fp8",
    }.get(key, key)


@dataclass(frozen=True, slots=True)
class _Formats:
    """The weight format and the widths it implies."""

    weights: str
    act: int
    kv: int


def _formats(spec: ModelSpec, setup: InferenceSetup) -> _Formats:
    vllm.check_tp_degree(spec, setup.tp_degree)
    vllm.check_pp_degree(spec, setup.pp_degree, setup.pp_partition)
    check_setup(setup, spec)
    fmt = check_weight_format(spec, setup.weights, setup.tp_degree)
    act = activation_bytes(fmt)
    return _Formats(fmt, act, kv_dtype_bytes(setup.kv_dtype, "fp32" if act == 4 else "bf16"))


def _display(name: str) -> str:
    """A replay name as a breakdown key (``layer_output/14`` is the next layer's input)."""
    if name.startswith("layer_output/"):
        return f"layer_{int(name.split('/')[1]) + 1}_input"
    return name.replace("/", ".")


def memory_item(
    spec: ModelSpec,
    setup: InferenceSetup,
    fmt: str,
    mem: InferenceMemory,
    stage: vllm.PipelineStage | None = None,
) -> Item:
    """The ``peak`` tree: what is allocated at the peak of ``generate`` (on one pipeline
    stage's GPU)."""
    where = f"{stage.label}, " if stage is not None and setup.pp_degree > 1 else ""
    root = Item("peak", unit="bytes", note=f"{where}phase: {mem.peak_phase}")
    if stage is not None and setup.pp_degree > 1:
        total = stage_weights_bytes(spec, fmt, stage)
    else:
        total = int(weights_bytes(spec, fmt).total)
    split = f" / tp {setup.tp_degree}" if setup.tp_degree > 1 else ""
    root.leaf(
        "parameters",
        mem.fixed["parameters"],
        f"{fmt}: {total:,} B{split}, each tensor in 512 B blocks",
        "memplan.formulas.weights, formulas.training.param_tensors",
    )
    if mem.fixed["buffers"]:
        root.leaf("buffers", mem.fixed["buffers"], "rotary inv_freq etc., 512 B blocks")
    live = mem.at_peak.at_peak()
    kv = sum(size for size, category in live.values() if category == "kv_cache")
    counters = mem.fixed["cache_counters"]
    root.leaf(
        "kv_cache",
        kv + counters,
        f"{setup.cache} cache as live at the {mem.peak_phase} peak"
        + (f" (+ {counters:,} B of int64 counters)" if counters else ""),
        "transformers 5.23 cache_utils.py",
    )
    temporaries = root.add(Item("temporaries", unit="bytes", source=_SOURCE))
    for name, (size, category) in sorted(live.items(), key=lambda kv: -kv[1][0]):
        if category == "temporaries" and size:
            temporaries.leaf(_display(name), size)
    inputs = sum(size for size, category in live.values() if category == "inputs")
    if inputs:
        root.leaf("inputs", inputs, "the prompt's token ids, int64")
    return root


def phases_of(mem: InferenceMemory, setup: InferenceSetup) -> list[Phase]:
    """The trace engine's phases (``memplan.trace.__init__``)."""
    end = setup.prompt_len + max(setup.gen_len - 1, 0)
    notes = {
        "after_prefill": f"KV cache of {setup.prompt_len} tokens",
        "decode_peak": "the last decode step" if setup.gen_len > 1 else "no decode step",
        "after_decode": f"KV cache of {end} tokens",
    }
    return [Phase(name, value, notes.get(name, "")) for name, value in mem.phases.items()]


def _limit(mem: InferenceMemory) -> str:
    """What holds the peak, in words."""
    totals = mem.at_peak.by_category()
    totals["parameters"] = mem.fixed["parameters"]
    biggest = max(totals, key=lambda key: totals[key])
    share = 100 * totals[biggest] / max(mem.peak_bytes, 1)
    return f"the {mem.peak_phase} ({biggest} {share:.0f}% of the peak)"


def stage_memories(
    spec: ModelSpec, setup: InferenceSetup, formats: _Formats
) -> list[tuple[vllm.PipelineStage, InferenceMemory]]:
    """Each pipeline stage with the live bytes of ``generate`` on its GPU."""
    return [
        (stage, inference_memory(spec, setup, formats.weights, formats.kv, stage=stage))
        for stage in stages_of(spec, setup)
    ]


def _worst_stage(
    spec: ModelSpec, setup: InferenceSetup, formats: _Formats
) -> tuple[vllm.PipelineStage, InferenceMemory]:
    """The stage with the highest peak (the first of equals)."""
    return max(stage_memories(spec, setup, formats), key=lambda pair: pair[1].peak_bytes)


@dataclass(frozen=True, slots=True)
class InferenceFit:
    """A generate call's verdict on one GPU, and the inverse questions at its setup."""

    fit: Fit
    max_batch_size: int
    """Largest batch at the setup's prompt and generation lengths (0: not even 1)."""
    max_prompt_len: int
    """Longest prompt at the setup's batch and generation length (0: not even 1 token)."""


def fit_inference(
    spec: ModelSpec,
    setup: InferenceSetup,
    gpu: Gpu,
    *,
    cuda_context_bytes: int | None = None,
) -> InferenceFit:
    """The verdict for ``setup`` on ``gpu``; the largest batch and the longest prompt that
    fit there (bisections over the same replay)."""
    formats = _formats(spec, setup)
    stage, mem = _worst_stage(spec, setup, formats)
    outside = outside_tensors_item(gpu, cuda_context_bytes=cuda_context_bytes)
    where = f"{stage.label}: " if setup.pp_degree > 1 else ""
    verdict = fit_on_gpu(gpu.memory_bytes, mem.peak_bytes, outside, where + _limit(mem))

    def fits(batch: int, prompt_len: int) -> bool:
        changed = dataclasses.replace(setup, batch=batch, prompt_len=prompt_len)
        peak = inference_peak_bytes(spec, changed, formats.weights, formats.kv)
        return peak <= verdict.usable_bytes

    prompt_limit = spec.max_position_embeddings - setup.gen_len
    return InferenceFit(
        fit=verdict,
        max_batch_size=largest(lambda b: fits(b, setup.prompt_len), _MAX_BATCH, setup.batch),
        max_prompt_len=(
            largest(lambda p: fits(setup.batch, p), prompt_limit, setup.prompt_len)
            if prompt_limit > 0
            else 0
        ),
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
    """Peak memory of ``generate`` (per rank) and, with a GPU, the fit verdict and (when the
    GPU has figures) the latency."""
    formats = _formats(spec, setup)
    pairs = stage_memories(spec, setup, formats)
    stage, mem = max(pairs, key=lambda pair: pair[1].peak_bytes)
    outside = outside_tensors_item(gpu, cuda_context_bytes=cuda_context_bytes)
    scalars: dict[str, object] = {
        "peak_bytes": mem.peak_bytes,
        "peak_phase": mem.peak_phase,
        "kv_cache_bytes": mem.kv_end_bytes,
        "weights_bytes": mem.fixed["parameters"],
        **{f"{child.key}_bytes": int(child.total) for child in outside.children},
    }
    sections: dict[str, Item] = {"outside_tensors": outside}
    notes = _notes(spec, setup, formats)
    if setup.pp_degree > 1:
        scalars["peak_stage"] = stage.index
        scalars["stages"] = [_stage_entry(st, m) for st, m in pairs]
        for st, m in pairs:
            if st is not stage:
                sections[st.label] = memory_item(spec, setup, formats.weights, m, st)
    if gpu is not None:
        found = fit_inference(spec, setup, gpu, cuda_context_bytes=cuda_context_bytes)
        scalars.update(gpu=gpu.name, **fit_scalars(found.fit))
        scalars.update(max_batch_size=found.max_batch_size, max_prompt_len=found.max_prompt_len)
        missing = _missing_peak(gpu, formats.weights)
        if missing:
            notes.append(missing)
        elif gpu.memory_bandwidth_bytes_per_s is not None and gpu.tflops:
            weights_total = int(weights_bytes(spec, formats.weights).total)
            latency, extra = latency_item(
                spec, setup, gpu, weights_total, formats.kv, efficiency or Efficiency()
            )
            sections["latency"] = latency
            scalars.update(extra)
    return Report(
        kind="infer",
        model=spec.name,
        breakdown=memory_item(spec, setup, formats.weights, mem, stage),
        setup=_setup_dict(setup, formats, gpu, [st for st, _ in pairs]),
        scalars=scalars,
        phases=phases_of(mem, setup),
        notes=notes,
        sections=sections,
    )


def _missing_peak(gpu: Gpu, weights: str) -> str | None:
    """The note when ``gpu`` has figures but none for the dtype the matmuls run in (GB200 has
    no fp32 peak, a T4 no bf16): the memory answer stands, the time is not estimated."""
    dtype = compute_dtype_for(weights)
    if not gpu.tflops or dtype in gpu.tflops:
        return None
    known = ", ".join(sorted(gpu.tflops))
    return (
        f"time not estimated: no peak {dtype} TFLOP/s known for {gpu.name} (known: {known}); "
        f"--weights with one of those, or --tflops, to estimate it"
    )


def _stage_entry(stage: vllm.PipelineStage, mem: InferenceMemory) -> dict[str, object]:
    """One stage's figures in the JSON (``stages``)."""
    return {
        "stage": stage.index,
        "layers": [stage.start, stage.stop],
        "embedding": stage.first,
        "lm_head": stage.last,
        "peak_bytes": mem.peak_bytes,
        "peak_phase": mem.peak_phase,
        "weights_bytes": mem.fixed["parameters"],
        "kv_cache_bytes": mem.kv_end_bytes,
        "phases": dict(mem.phases),
    }


def _setup_dict(
    setup: InferenceSetup,
    formats: _Formats,
    gpu: Gpu | None,
    stages: list[vllm.PipelineStage],
) -> dict[str, object]:
    return {
        "batch": setup.batch,
        "prompt_len": setup.prompt_len,
        "gen_len": setup.gen_len,
        "weights": formats.weights,
        "kv_dtype": setup.kv_dtype,
        "cache": setup.cache,
        "logits": setup.logits,
        "attention": setup.attention,
        "tp": setup.tp_degree,
        **vllm.pipeline_setup(stages),
        "gpu": gpu.name if gpu else None,
    }


def _notes(spec: ModelSpec, setup: InferenceSetup, formats: _Formats) -> list[str]:
    end = setup.prompt_len + max(setup.gen_len - 1, 0)
    notes = [
        f"KV cache: {setup.cache} cache, {formats.kv} B per element; after generating "
        f"{setup.gen_len} tokens it holds {end} (the last token is never fed back)",
        "peak_bytes counts the tensors (allocated bytes, as torch.cuda.max_memory_allocated); "
        "the CUDA context and the cuBLAS workspace are the outside_tensors lines",
    ]
    if spec.model_type not in REPLAYED_FAMILIES:
        notes.append(
            f"{spec.model_type}: the forward is replayed with the Llama layout; this family's "
            "own ops (projections, norms, activations, eager scores) are not followed one by "
            "one, so the temporaries line is an approximation (docs/accuracy.md: its gap)"
        )
    n_linear = spec.n_layers - spec.n_attention_layers
    if n_linear:
        notes.append(
            f"linear attention not replayed: the {n_linear} Gated DeltaNet layers' states are "
            "in kv_cache (conv state and fp32 recurrent state, any length), but their chunked "
            "delta rule's temporaries are not replayed, so the prefill peak is understated "
            "(docs/accuracy.md: the gap; `memplan trace --infer` follows them)"
        )
    if formats.weights not in ("fp32", "fp16", "bf16"):
        notes.append(
            f"{formats.weights}: the forward is replayed in the {formats.act}-byte compute "
            "dtype; the kernels' dequantization buffers are not modelled"
        )
    if setup.tp_degree > 1:
        notes.append(
            "tensor parallelism: heads and widths split per rank; all-reduce buffers and the "
            "replicated activations' exact layout are not modelled (the trace runs one GPU)"
        )
    if setup.pp_degree > 1:
        notes.append(
            "pipeline parallelism: decoder layers split as vLLM's get_pp_indices "
            "(vllm/distributed/utils.py; --pp-partition overrides it), one GPU per stage; "
            "each stage holds its layers' weights and KV cache; the embedding and the model's "
            "buffers are on the first, the final norm and lm_head (tied: a copy of the "
            "embedding, as vLLM) on the last; each stage's forward is replayed on its own "
            "layers: a later stage starts from the hidden states it receives (and builds its "
            "own rotary tables), only the last computes the logits; send/recv buffers are not "
            "modelled; peak_bytes and the verdict are the stage with the highest peak; "
            "latency: the stages run one after another for each token"
        )
    return notes


def check_setup(setup: InferenceSetup, spec: ModelSpec) -> None:
    """Reject a prompt plus generation longer than the model's positions."""
    if setup.total_len > spec.max_position_embeddings:
        raise SetupError(
            f"prompt + generation ({setup.total_len} tokens) is beyond {spec.name}'s "
            f"{spec.max_position_embeddings} positions"
        )
