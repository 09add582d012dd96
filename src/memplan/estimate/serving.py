"""``serving_report(spec, setup, gpu) -> Report``: vLLM's KV cache capacity on a GPU.

The arithmetic is vLLM's own (:mod:`memplan.formulas.serving`); what vLLM *measures* at start-up
(the weights it loaded, the activation peak of its profiling run, non-torch memory) memplan
computes: the weights exactly, the activation peak as a labelled estimate. With pipeline
parallelism each stage is sized as its workers size themselves and the engine keeps the
smallest stage's block count (``get_kv_cache_configs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.errors import SetupError
from memplan.estimate.fit import fit_on_gpu, fit_scalars
from memplan.estimate.serving_weights import stage_holds, stage_weights_bytes, vllm_weights_item
from memplan.formulas import serving as vllm
from memplan.formulas.dtypes import float_dtype_bytes
from memplan.formulas.kv_cache import kv_dtype_bytes
from memplan.formulas.overheads import outside_tensors_item
from memplan.formulas.weights import linear_layers, normalize_format
from memplan.report import Item, Report
from memplan.specs.hardware import Gpu
from memplan.specs.model import MlpKind, ModelSpec
from memplan.units import GIB, bytes_mark

__all__ = [
    "ServingSetup",
    "StageMemory",
    "check_weight_format",
    "profile_activation_item",
    "serving_report",
    "stage_holds",
    "stage_weights_bytes",
    "vllm_weights_item",
]

_QUANT_GROUP = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingSetup:
    """A ``vllm serve`` configuration (flag names as vLLM spells them)."""

    tp_degree: int = 1
    pp_degree: int = 1
    pp_partition: tuple[int, ...] = ()
    """Decoder layers per stage (vLLM's ``VLLM_PP_LAYER_PARTITION``); empty: vLLM's split."""
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
        for name in ("tp_degree", "pp_degree", "block_size"):
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


def profile_activation_item(
    spec: ModelSpec,
    tokens: int,
    rows: int,
    act_bytes: int,
    tp_degree: int,
    *,
    sampler: bool = True,
    receives: bool = False,
) -> Item:
    """Estimated torch peak of vLLM's profiling run (a dummy forward of ``tokens`` tokens,
    then the sampler over ``rows`` requests): the largest layer transient plus the logits;
    ``sampler=False`` for pipeline stages other than the last (``gpu_model_runner.py``
    ``profile_run`` runs the sampler only where ``get_pp_group().is_last_rank``);
    ``receives`` for stages other than the first, which keep a buffer for the tensors they
    receive (``_dummy_run``: ``make_empty_intermediate_tensors(batch_size=max_num_tokens)``,
    ``hidden_states`` and ``residual`` as ``llama.py`` declares them, in the model dtype).

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
    if receives:
        root.leaf(
            "intermediate_tensors",
            2 * tokens * h * act_bytes,
            f"hidden_states and residual received: 2 x {tokens} tokens x {h}",
            "vllm/v1/worker/gpu_model_runner.py _dummy_run",
        )
    if sampler:
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


@dataclass(frozen=True, slots=True)
class StageMemory:
    """What one pipeline stage's workers measure and size at start-up."""

    stage: vllm.PipelineStage
    weights: Item
    profile: Item
    layout: vllm.KvCacheLayout
    """The whole model's groups projected onto the stage: its ``group_size``."""
    available: int
    own_blocks: int
    """``available // page // group_size`` before the engine takes the minimum."""
    needed: int
    """KV bytes one ``max_model_len`` request needs on this stage (the start-up check)."""

    @property
    def kv_ok(self) -> bool:
        return self.needed <= self.available


@dataclass(frozen=True, slots=True)
class _Sizes:
    fmt: str
    act_bytes: int
    batched: int
    rows: int
    max_len: int
    page: int
    requested: float


def _stage_memory(
    spec: ModelSpec, setup: ServingSetup, stage: vllm.PipelineStage, z: _Sizes
) -> StageMemory:
    weights = vllm_weights_item(spec, z.fmt, setup.tp_degree, z.act_bytes, stage)
    profile = profile_activation_item(
        spec,
        z.batched,
        z.rows,
        z.act_bytes,
        setup.tp_degree,
        sampler=stage.last,
        receives=not stage.first,
    )
    available = int(z.requested - int(weights.total + profile.total + setup.non_torch_bytes))
    whole = vllm.kv_cache_layout(spec)
    layout = vllm.KvCacheLayout(vllm.stage_group_size(spec, stage.start, stage.stop), whole.groups)
    needed = vllm.needed_bytes(layout, z.max_len, z.batched, setup.block_size, z.page)
    blocks = vllm.num_blocks(available, z.page, layout)
    return StageMemory(stage, weights, profile, layout, available, blocks, needed)


def _limiting(stages: list[StageMemory]) -> StageMemory:
    """The stage that limits the engine: the first whose start-up check fails (vLLM raises
    there), else the one with the fewest blocks (the engine keeps the minimum)."""
    failing = [sm for sm in stages if not sm.kv_ok]
    return failing[0] if failing else min(stages, key=lambda sm: sm.own_blocks)


def _stage_tree(sm: StageMemory, blocks: int, z: _Sizes, setup: ServingSetup) -> Item:
    """One stage's GPU memory once the engine has set every worker to ``blocks`` blocks."""
    note = f"{sm.stage.label}" if setup.pp_degree > 1 else ""
    root = Item("gpu_memory", unit="bytes", note=note)
    root.add(sm.weights)
    root.add(sm.profile)
    if setup.non_torch_bytes:
        root.leaf("non_torch_memory", setup.non_torch_bytes, "given (--non-torch-memory)")
    kv = root.add(Item("kv_cache", unit="bytes", note=vllm.VLLM_SOURCE))
    kv.leaf(
        "blocks",
        blocks * z.page * sm.layout.group_size,
        f"{blocks:,} blocks x {z.page:,} B page x {sm.layout.group_size} layers per group",
        vllm.VLLM_SOURCE,
    )
    root.leaf(
        "unused",
        max(int(z.requested) - int(root.total), 0),
        "remainder of the requested memory (less than one block per layer)"
        if blocks == sm.own_blocks
        else f"remainder of the requested memory (the engine keeps the smallest stage's "
        f"{blocks:,} blocks; this stage could hold {sm.own_blocks:,})",
    )
    return root


def _stage_groups(stages: list[StageMemory]) -> list[list[StageMemory]]:
    """Stages whose figures are the same, together (in stage order)."""
    groups: dict[tuple[int, ...], list[StageMemory]] = {}
    for sm in stages:
        key = (int(sm.weights.total), int(sm.profile.total), sm.layout.group_size, sm.available)
        groups.setdefault(key, []).append(sm)
    return list(groups.values())


def _stage_entry(same: list[StageMemory], tree: Item, blocks: int, page: int) -> dict[str, object]:
    """The JSON entry of a group of identical stages."""
    sm = same[0]
    kv = blocks * page * sm.layout.group_size
    return {
        "stages": [s.stage.index for s in same],
        "layers": [[s.stage.start, s.stage.stop] for s in same],
        "n_layers": len(sm.stage.layers),
        "embedding": any(s.stage.first for s in same),
        "lm_head": any(s.stage.last for s in same),
        "weights_bytes": int(sm.weights.total),
        "profile_activation_bytes": int(sm.profile.total),
        "available_kv_cache_bytes": sm.available,
        "layers_per_group": sm.layout.group_size,
        "own_num_gpu_blocks": sm.own_blocks,
        "kv_cache_bytes": kv,
        "kv_cache_needed_bytes": sm.needed,
        "vllm_kv_check": sm.kv_ok,
        "peak_bytes": int(sm.weights.total + sm.profile.total) + kv,
        "breakdown": tree.to_dict(),
    }


def serving_report(
    spec: ModelSpec, setup: ServingSetup, gpu: Gpu, *, cuda_context_bytes: int | None = None
) -> Report:
    """vLLM's capacity on ``setup.tp_degree x setup.pp_degree`` identical GPUs.

    Each pipeline stage is sized as its workers size it (its weights, its profiling peak, its
    layers' share of the KV cache groups), and the engine keeps the smallest stage's block
    count (``get_kv_cache_configs``). The top-level figures are the limiting stage's
    (:func:`_limiting`); ``stages`` lists every distinct stage. ``peak_bytes`` is what torch
    allocates once vLLM runs (weights, the KV cache blocks, the activation peak of its
    profiling run), as in every command; ``requested_bytes`` the ``gpu_memory_utilization``
    share vLLM may fill. The verdict (``fits``) needs vLLM's own start-up check on every stage
    (one request of ``max_model_len`` tokens in the cache) and the requested memory beside
    the CUDA context on the GPU (:func:`memplan.estimate.fit.fit_on_gpu`)."""
    vllm.check_tp_degree(spec, setup.tp_degree)
    pipeline = vllm.pipeline_stages(spec, setup.pp_degree, setup.pp_partition)
    fmt = setup.weights or activation_dtype(spec, setup.dtype, None)
    fmt = check_weight_format(spec, fmt, setup.tp_degree)
    act = activation_dtype(spec, setup.dtype, setup.weights)
    act_bytes = float_dtype_bytes(act)
    max_len, batched, seqs = _defaults(setup, spec, gpu)
    kv_bytes = kv_dtype_bytes(setup.kv_cache_dtype, act)
    z = _Sizes(
        fmt,
        act_bytes,
        batched,
        min(seqs, batched),
        max_len,
        vllm.page_size_bytes(spec, setup.block_size, kv_bytes, setup.tp_degree),
        vllm.requested_memory_bytes(gpu.memory_bytes, setup.gpu_memory_utilization),
    )
    stages = [_stage_memory(spec, setup, stage, z) for stage in pipeline]
    blocks = min(sm.own_blocks for sm in stages)
    worst = _limiting(stages)
    layout, page, requested, available = worst.layout, z.page, z.requested, worst.available
    tokens = vllm.kv_cache_tokens(blocks, layout, setup.block_size)
    concurrency = vllm.max_concurrency(blocks, layout, max_len, batched, setup.block_size, page)
    needed = worst.needed
    root = _stage_tree(worst, blocks, z, setup)
    notes = [
        f"vLLM: GPU KV cache size: {tokens:,} tokens",
        f"vLLM: Maximum concurrency for {max_len:,} tokens per request: {concurrency:.2f}x",
        f"requested memory = {bytes_mark(gpu.memory_bytes)} x {setup.gpu_memory_utilization}"
        f" = {bytes_mark(requested)}; the CUDA context comes on top of it",
        "the profiling run's activation peak is memplan's estimate; vLLM measures it",
        *_pipeline_notes(stages, worst, blocks),
        *setup.notes,
    ]
    if spec.linear_attention is not None:
        notes.append(
            f"{spec.model_type}: vLLM's hybrid cache (linear-attention states in pages shared "
            "with the attention layers) is not modelled; every layer is counted as a "
            "full-attention layer, which overstates the KV cache"
        )
    scalars: dict[str, object] = {}
    if not worst.kv_ok:
        notes.append(_not_enough_message(layout, available, max_len, batched, setup, page, needed))
        scalars["estimated_max_model_len"] = min(
            vllm.estimate_max_model_len(
                sm.layout, max(sm.available, 0), max_len, batched, setup.block_size, page
            )
            for sm in stages
        )
    device = fit_on_gpu(
        gpu.memory_bytes,
        int(requested),
        outside_tensors_item(gpu, cuda_context_bytes=cuda_context_bytes, n_workspaces=0),
        "vLLM's requested memory (gpu_memory_utilization x total)",
    )
    kv_ok = all(sm.kv_ok for sm in stages)
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
    tensors = int(worst.weights.total + worst.profile.total + blocks * page * layout.group_size)
    sections: dict[str, Item] = {}
    entries = []
    for same in _stage_groups(stages):
        tree = root if worst in same else _stage_tree(same[0], blocks, z, setup)
        entries.append(_stage_entry(same, tree, blocks, page))
        if setup.pp_degree > 1 and worst not in same:
            sections[_group_label(same)] = tree
    if setup.pp_degree > 1:
        scalars["stages"] = entries
        scalars["limiting_stage"] = worst.stage.index
    return Report(
        kind="serve-capacity",
        model=spec.name,
        breakdown=root,
        setup={
            "gpu": gpu.name,
            "tp": setup.tp_degree,
            **vllm.pipeline_setup([sm.stage for sm in stages]),
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
            "weights_bytes": int(worst.weights.total),
            **verdict,
            **scalars,
        },
        notes=notes,
        sections=sections,
    )


def _group_label(same: list[StageMemory]) -> str:
    """``stage 2 (layers 16-23)`` or ``stages 1, 2 (8 layers each)``."""
    if len(same) == 1:
        return same[0].stage.label
    ids = ", ".join(str(sm.stage.index) for sm in same)
    return f"stages {ids} ({len(same[0].stage.layers)} layers each)"


def _pipeline_notes(stages: list[StageMemory], worst: StageMemory, blocks: int) -> list[str]:
    """How the stages were split and sized, when there are several."""
    if len(stages) == 1:
        return []
    counts = ",".join(str(len(sm.stage.layers)) for sm in stages)
    return [
        f"pipeline parallelism: layers split [{counts}] as vLLM's get_pp_indices "
        "(vllm/distributed/utils.py; VLLM_PP_LAYER_PARTITION = --pp-partition overrides it); "
        "each stage sizes its blocks from its own memory and layers, and the engine keeps the "
        f"smallest: {blocks:,} blocks, set by {worst.stage.label} "
        "(vllm/v1/core/kv_cache_utils.py get_kv_cache_configs); the breakdown above is that "
        "stage's; the other stages follow it",
    ]


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
