"""``serving_report(spec, setup, gpu) -> Report``: vLLM's KV cache capacity on a GPU.

The arithmetic is vLLM's own (:mod:`memplan.formulas.serving`); what vLLM *measures* at start-up
(the weights it loaded, the activation peak of its profiling run, non-torch memory) memplan
computes: the weights exactly, the activation peak as a labelled estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.errors import SetupError
from memplan.estimate.fit import fit_on_gpu, fit_scalars
from memplan.formulas import serving as vllm
from memplan.formulas.allocator import cuda_block_bytes
from memplan.formulas.dtypes import float_dtype_bytes
from memplan.formulas.kv_cache import kv_dtype_bytes
from memplan.formulas.overheads import outside_tensors_item
from memplan.formulas.weights import linear_layers, normalize_format, weights_bytes
from memplan.report import Item, Report
from memplan.specs.hardware import Gpu
from memplan.specs.model import MlpKind, ModelSpec, NormKind
from memplan.units import GIB, bytes_mark

__all__ = [
    "ServingSetup",
    "check_weight_format",
    "profile_activation_item",
    "serving_report",
    "vllm_weights_item",
]

_VOCAB_PADDING = 64
"""``vllm/model_executor/layers/vocab_parallel_embedding.py``: DEFAULT_VOCAB_PADDING_SIZE."""
_QUANT_GROUP = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingSetup:
    """A ``vllm serve`` configuration (flag names as vLLM spells them)."""

    tp_degree: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    """None: the model's ``max_position_embeddings`` (vLLM's derived max_model_len)."""
    max_num_batched_tokens: int | None = None
    """None: ``vllm serve``'s default, 8192 on GPUs with at least 70 GiB other than the A100,
    else 2048 (``vllm/engine/arg_utils.py`` ``EngineArgs.get_batch_defaults``)."""
    max_num_seqs: int | None = None
    """None: ``vllm serve``'s default, 1024 on those large GPUs, else 256 (same source)."""
    block_size: int = vllm.DEFAULT_BLOCK_SIZE
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    """Activation/weight dtype: auto = the checkpoint's (fp32 checkpoints served in bf16)."""
    weights: str | None = None
    """A quantization format (awq-int4, gptq-int4, fp8, ...); None: ``dtype``."""
    non_torch_bytes: int = 0
    """Non-torch memory vLLM measures during profiling (NCCL, ...): given, default 0."""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SetupError(
                f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        for name in ("tp_degree", "block_size"):
            if getattr(self, name) < 1:
                raise SetupError(f"{name.replace('_', '-')} must be a positive integer")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise SetupError(f"--max-num-seqs must be positive, got {self.max_num_seqs}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise SetupError(f"--max-model-len must be positive, got {self.max_model_len}")


def activation_dtype(spec: ModelSpec, dtype: str, weights: str | None) -> str:
    """The dtype vLLM computes in: given, or the checkpoint's (fp32 -> bf16); fp16 for
    GPTQ/AWQ kernels."""
    if dtype != "auto":
        return dtype
    if weights and normalize_format(weights) in ("gptq-int4", "awq-int4"):
        return "fp16"
    return {"float16": "fp16", "bfloat16": "bf16"}.get(spec.dtype, "bf16")


def check_weight_format(spec: ModelSpec, fmt: str, tp_degree: int = 1) -> str:
    """The normalised format; a clear error when the model's shapes cannot use it (GPTQ/AWQ
    need every linear layer's input width per rank divisible by the group size, 128)."""
    key = normalize_format(fmt)
    if key in ("gptq-int4", "awq-int4"):
        for lin in linear_layers(spec):
            if lin.n_in % _QUANT_GROUP:
                raise SetupError(
                    f"{spec.name}: {key} needs input widths divisible by {_QUANT_GROUP}; "
                    f"{lin.key} has {lin.n_in}"
                )
            if lin.n_out % 8:
                raise SetupError(
                    f"{spec.name}: {key} packs 8 outputs per int32; {lin.key} has {lin.n_out}"
                )
    return key


def _norm_bytes(spec: ModelSpec, act_bytes: int) -> int:
    """Norm weights (replicated on every tensor-parallel rank)."""
    width = 2 if spec.norm_kind is NormKind.LAYERNORM and spec.norm_bias else 1
    n_norms = spec.n_layers * spec.n_layer_norms + int(spec.final_norm)
    return n_norms * width * spec.hidden_size * act_bytes


def vllm_weights_item(spec: ModelSpec, fmt: str, tp_degree: int, act_bytes: int) -> Item:
    """Weights one rank loads ("Model loading took X GiB"): the checkpoint's tensors (sharded
    by TP, norms replicated), vocab padding to a multiple of 64, the rotary cos/sin cache."""
    root = Item("weights", unit="bytes")
    total = int(weights_bytes(spec, fmt).total)
    norms = _norm_bytes(spec, act_bytes)
    sharded = total - norms
    root.leaf(
        "model_weights",
        -(sharded // -tp_degree) + norms,
        f"{fmt}: {total:,} B"
        + (f", sharded over tp={tp_degree} (norms replicated)" if tp_degree > 1 else ""),
        "memplan.formulas.weights",
    )
    padded = -(spec.vocab_size // -_VOCAB_PADDING) * _VOCAB_PADDING
    tables = 1 if spec.tie_word_embeddings else 2
    extra_rows = padded - spec.vocab_size
    if extra_rows:
        root.leaf(
            "vocab_padding",
            tables * extra_rows * spec.hidden_size * act_bytes // tp_degree,
            f"vocab {spec.vocab_size} padded to {padded}",
            "vllm vocab_parallel_embedding.py pad_vocab_size",
        )
    rounding = _allocator_rounding_bytes(spec, fmt, tp_degree, act_bytes, padded)
    if rounding:
        root.leaf(
            "allocator_rounding",
            rounding,
            "large tensors not a multiple of 2 MiB count their whole segment",
            "c10/cuda/CUDACachingAllocator.cpp (memplan.formulas.allocator.cuda_block_bytes)",
        )
    rotary = _rotary_dim(spec)
    if rotary:
        root.leaf(
            "rotary_cos_sin_cache",
            spec.max_position_embeddings * rotary * act_bytes,
            f"{spec.max_position_embeddings} positions x {rotary} (cos, sin) x {act_bytes} B",
            "vllm rotary_embedding.py RotaryEmbedding.cos_sin_cache",
        )
    return root


def _vllm_tensors(spec: ModelSpec, tp: int, width: int, padded_vocab: int) -> list[tuple[int, int]]:
    """(count, bytes) of vLLM's large weight tensors on one rank (fused qkv_proj and
    gate_up_proj, FusedMoE's w13/w2), for plain-dtype, non-MLA models."""
    h = spec.hidden_size
    kv_rank = max(1, spec.n_kv_heads // tp) * spec.head_dim
    q_rank = spec.q_dim // tp
    tables = 1 if spec.tie_word_embeddings else 2
    out = [(tables, -(padded_vocab // -tp) * h * width)]
    n = spec.n_layers
    out += [(n, (q_rank + 2 * kv_rank) * h * width), (n, q_rank * h * width)]
    gated = 2 if spec.mlp_kind is MlpKind.GATED else 1
    n_moe = sum(1 for i in range(n) if spec.is_moe_layer(i))
    if n - n_moe:
        inner = spec.intermediate_size // tp
        out += [(n - n_moe, gated * inner * h * width), (n - n_moe, inner * h * width)]
    if n_moe and spec.moe is not None:
        moe = spec.moe
        inner = moe.expert_intermediate_size // tp
        out += [
            (n_moe, moe.n_experts * gated * inner * h * width),
            (n_moe, moe.n_experts * inner * h * width),
        ]
    return out


def _allocator_rounding_bytes(
    spec: ModelSpec, fmt: str, tp: int, width: int, padded_vocab: int
) -> int:
    """What the caching allocator adds to the large weight tensors (plain dtypes, no MLA)."""
    if spec.mla is not None or fmt not in ("bf16", "fp16", "fp32"):
        return 0
    return sum(
        count * (cuda_block_bytes(size) - size)
        for count, size in _vllm_tensors(spec, tp, width, padded_vocab)
    )


def _rotary_dim(spec: ModelSpec) -> int:
    if spec.position.value != "rotary":
        return 0
    if spec.mla is not None:
        return spec.mla.qk_rope_head_dim
    return spec.rotary_dim or spec.head_dim


def profile_activation_item(
    spec: ModelSpec, tokens: int, rows: int, act_bytes: int, tp_degree: int
) -> Item:
    """Estimated torch peak of vLLM's profiling run (a dummy forward of ``tokens`` tokens,
    then the sampler over ``rows`` requests): the largest layer transient plus the logits.

    Layer transient: hidden and residual (``2 T h``) plus the MLP's ``gate_up`` output and
    activation (``3 T I / tp``; MoE: ``top_k`` experts' worth). Logits: fp32 logits and
    probabilities (``2 x rows x V x 4``). An estimate: vLLM measures this figure."""
    root = Item("profile_activation_peak", unit="bytes", note="estimate")
    h = spec.hidden_size
    width = spec.intermediate_size
    if spec.moe is not None:
        width = max(width, spec.moe.top_k * spec.moe.expert_intermediate_size)
    matrices = 3 if spec.mlp_kind is MlpKind.GATED else 2
    mlp = matrices * tokens * width * act_bytes // tp_degree
    root.leaf("hidden_and_residual", 2 * tokens * h * act_bytes, f"2 x {tokens} tokens x {h}")
    root.leaf("mlp_intermediate", mlp, f"{matrices} x {tokens} x {width} / tp")
    root.leaf("logits_fp32", 2 * rows * spec.vocab_size * 4, f"2 x {rows} rows x V x 4 B")
    return root


def _defaults(setup: ServingSetup, spec: ModelSpec, gpu: Gpu) -> tuple[int, int, int]:
    """max_model_len, max_num_batched_tokens and max_num_seqs as ``vllm serve`` sets them."""
    max_len = setup.max_model_len or spec.max_position_embeddings
    if max_len > spec.max_position_embeddings:
        raise SetupError(
            f"--max-model-len {max_len} is beyond {spec.name}'s "
            f"{spec.max_position_embeddings} positions (vLLM refuses it unless "
            f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)"
        )
    large = gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower()
    batched = setup.max_num_batched_tokens or (8192 if large else 2048)
    seqs = setup.max_num_seqs or (1024 if large else 256)
    return max_len, batched, seqs


def serving_report(
    spec: ModelSpec, setup: ServingSetup, gpu: Gpu, *, cuda_context_bytes: int | None = None
) -> Report:
    """vLLM's capacity on one rank of ``setup.tp_degree`` identical GPUs.

    ``peak_bytes`` is what torch allocates once vLLM runs (weights, the KV cache blocks, the
    activation peak of its profiling run), as in every command; ``requested_bytes`` the
    ``gpu_memory_utilization`` share vLLM may fill. The verdict (``fits``) needs both vLLM's
    own start-up check (one request of ``max_model_len`` tokens in the cache) and the requested
    memory beside the CUDA context on the GPU (:func:`memplan.estimate.fit.fit_on_gpu`)."""
    vllm.check_tp_degree(spec, setup.tp_degree)
    fmt = setup.weights or activation_dtype(spec, setup.dtype, None)
    fmt = check_weight_format(spec, fmt, setup.tp_degree)
    act = activation_dtype(spec, setup.dtype, setup.weights)
    act_bytes = float_dtype_bytes(act)
    max_len, batched, seqs = _defaults(setup, spec, gpu)
    kv_bytes = kv_dtype_bytes(setup.kv_cache_dtype, act)
    rows = min(seqs, batched)

    requested = vllm.requested_memory_bytes(gpu.memory_bytes, setup.gpu_memory_utilization)
    weights = vllm_weights_item(spec, fmt, setup.tp_degree, act_bytes)
    profile = profile_activation_item(spec, batched, rows, act_bytes, setup.tp_degree)
    non_kv = int(weights.total + profile.total + setup.non_torch_bytes)
    available = int(requested - non_kv)

    layout = vllm.kv_cache_layout(spec)
    page = vllm.page_size_bytes(spec, setup.block_size, kv_bytes, setup.tp_degree)
    blocks = vllm.num_blocks(available, page, layout)
    tokens = vllm.kv_cache_tokens(blocks, layout, setup.block_size)
    concurrency = vllm.max_concurrency(blocks, layout, max_len, batched, setup.block_size, page)
    needed = vllm.needed_bytes(layout, max_len, batched, setup.block_size, page)

    root = Item("gpu_memory", unit="bytes")
    root.add(weights)
    root.add(profile)
    if setup.non_torch_bytes:
        root.leaf("non_torch_memory", setup.non_torch_bytes, "given (--non-torch-memory)")
    kv = root.add(Item("kv_cache", unit="bytes", note=vllm.VLLM_SOURCE))
    kv.leaf(
        "blocks",
        blocks * page * layout.group_size,
        f"{blocks:,} blocks x {page:,} B page x {layout.group_size} layers per group",
        vllm.VLLM_SOURCE,
    )
    root.leaf(
        "unused",
        max(int(requested) - int(root.total), 0),
        "remainder of the requested memory (less than one block per layer)",
    )
    notes = [
        f"vLLM: GPU KV cache size: {tokens:,} tokens",
        f"vLLM: Maximum concurrency for {max_len:,} tokens per request: {concurrency:.2f}x",
        f"requested memory = {bytes_mark(gpu.memory_bytes)} x {setup.gpu_memory_utilization}"
        f" = {bytes_mark(requested)}; the CUDA context comes on top of it",
        "the profiling run's activation peak is memplan's estimate; vLLM measures it",
        *setup.notes,
    ]
    scalars: dict[str, object] = {}
    if needed > available:
        notes.append(_not_enough_message(layout, available, max_len, batched, setup, page, needed))
        scalars["estimated_max_model_len"] = vllm.estimate_max_model_len(
            layout, max(available, 0), max_len, batched, setup.block_size, page
        )
    device = fit_on_gpu(
        gpu.memory_bytes,
        int(requested),
        outside_tensors_item(gpu, cuda_context_bytes=cuda_context_bytes, n_workspaces=0),
        "vLLM's requested memory (gpu_memory_utilization x total)",
    )
    kv_ok = needed <= available
    if not device.fits:
        notes.append(
            "vLLM would fail at start-up: the requested memory and the CUDA context exceed "
            "the GPU's memory; lower --gpu-memory-utilization"
        )
    verdict = fit_scalars(device)
    verdict.update(
        fits=device.fits and kv_ok,
        vllm_kv_check=kv_ok,
        limit=device.limit if not device.fits else "vLLM's KV cache check (max_model_len)",
    )
    tensors = int(weights.total + profile.total + blocks * page * layout.group_size)
    return Report(
        kind="serve-capacity",
        model=spec.name,
        breakdown=root,
        setup={
            "gpu": gpu.name,
            "tp": setup.tp_degree,
            "gpu_memory_utilization": setup.gpu_memory_utilization,
            "max_model_len": max_len,
            "max_num_batched_tokens": batched,
            "max_num_seqs": seqs,
            "block_size": setup.block_size,
            "weights": fmt,
            "kv_cache_dtype": setup.kv_cache_dtype,
            "vllm": vllm.VLLM_SOURCE,
        },
        scalars={
            "peak_bytes": tensors,
            "requested_bytes": int(requested),
            "available_kv_cache_bytes": available,
            "num_gpu_blocks": blocks,
            "page_size_bytes": page,
            "kv_cache_tokens": tokens,
            "max_concurrency": round(concurrency, 4),
            "kv_cache_needed_bytes": needed,
            "weights_bytes": int(weights.total),
            **verdict,
            **scalars,
        },
        notes=notes,
    )


def _not_enough_message(
    layout: vllm.KvCacheLayout,
    available: int,
    max_len: int,
    batched: int,
    setup: ServingSetup,
    page: int,
    needed: int,
) -> str:
    """The ValueError vLLM raises (``_check_enough_kv_cache_memory``), with its estimate."""
    if available <= 0:
        return "vLLM would fail: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`."
    estimate = vllm.estimate_max_model_len(
        layout, available, max_len, batched, setup.block_size, page
    )
    hint = (
        f"Based on the available memory, the estimated maximum model length is {estimate}. "
        if estimate > 0
        else ""
    )
    return (
        f"vLLM would fail: To serve at least one request with the models's max seq len "
        f"({max_len}), ({bytes_mark(needed)} KV cache is needed, which is larger than the "
        f"available KV cache memory ({bytes_mark(available)}). {hint}Try increasing "
        f"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
    )
