"""vLLM's KV cache arithmetic: pages, blocks, tokens, concurrency, the max_model_len check.

Follows the vLLM v1 engine source (read at commit 001cabc1 of vllm-project/vllm, the
v0.11/v0.12 line):

* ``vllm/v1/worker/gpu_worker.py`` ``determine_available_memory``:
  ``available = total_memory x gpu_memory_utilization - (weights + torch peak increase of the
  profiling run + non-torch increase)``.
* ``vllm/v1/kv_cache_interface.py``: ``AttentionSpec.page_size_bytes = 2 x block_size x
  num_kv_heads x head_size x dtype bytes``; MLA: ``block_size x 1 x (kv_lora_rank + rope) x
  bytes``; ``FullAttentionSpec.max_memory_usage_bytes = cdiv(max_model_len, block) x page``;
  ``SlidingWindowSpec``: ``(cdiv(min(window - 1 + max_num_batched_tokens, max_model_len),
  block) + 1) x page``.
* ``vllm/v1/core/kv_cache_utils.py``: layer grouping (``get_kv_cache_groups``),
  ``get_num_blocks = available // page // group_size``, the log lines "GPU KV cache size: N
  tokens" (``num_blocks // n_groups x block_size``) and "Maximum concurrency for L tokens per
  request: X" (``num_blocks / cdiv(sum of per-group needs, page)``), and
  ``_check_enough_kv_cache_memory``'s error with the largest max_model_len that fits
  (binary search).
* Tensor parallelism (``ModelConfig.get_num_kv_heads``): each rank holds
  ``max(1, n_kv_heads // tp)`` KV heads; heads are replicated when tp > n_kv_heads. The MLA
  latent is replicated on every rank.
* Pipeline parallelism: ``vllm/distributed/utils.py`` ``get_pp_indices`` splits the decoder
  layers (``num_layers // pp`` each, the remainder one more each on the stages before the
  last, counted back from the second to last; ``VLLM_PP_LAYER_PARTITION`` overrides it).
  ``get_kv_cache_configs`` groups the layers of the whole model, projects the groups onto each
  worker's layers (``_project_kv_cache_groups_to_worker``), checks each worker's memory, sizes
  each worker's blocks from its own available memory and its projected group size, then sets
  every worker's ``num_blocks`` to the smallest among them.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.kv_cache import layer_window
from memplan.specs.model import ModelSpec

__all__ = [
    "BLOCK_SIZES",
    "DEFAULT_BLOCK_SIZE",
    "VLLM_SOURCE",
    "KvCacheLayout",
    "PipelineStage",
    "cdiv",
    "check_pp_degree",
    "check_tp_degree",
    "estimate_max_model_len",
    "kv_cache_layout",
    "kv_cache_tokens",
    "max_concurrency",
    "max_memory_usage_bytes",
    "needed_bytes",
    "num_blocks",
    "page_size_bytes",
    "pipeline_setup",
    "pipeline_stages",
    "pp_layer_ranges",
    "requested_memory_bytes",
    "stage_group_size",
    "vllm_head_size",
    "vllm_kv_heads_per_rank",
    "vllm_layer_window",
]

VLLM_SOURCE = "vLLM v1 (vllm-project/vllm @ 001cabc1): kv_cache_utils.py, kv_cache_interface.py"
DEFAULT_BLOCK_SIZE = 16
"""vLLM's default ``--block-size`` for CUDA attention backends."""
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
"""The ``--block-size`` values vLLM accepts (``vllm/config/cache.py``: ``BlockSize =
Literal[1, 8, 16, 32, 64, 128, 256]``)."""


def cdiv(a: int, b: int) -> int:
    """Ceiling division, as ``vllm.utils.math_utils.cdiv``."""
    return -(a // -b)


def check_tp_degree(spec: ModelSpec, tp_degree: int) -> None:
    """The checks vLLM's config and ``QKVParallelLinear`` make on the tensor-parallel degree."""
    if tp_degree < 1:
        raise SetupError(f"--tp must be a positive integer, got {tp_degree}")
    if spec.n_heads % tp_degree:
        raise SetupError(
            f"{spec.name}: the number of attention heads ({spec.n_heads}) must be divisible by "
            f"the tensor-parallel degree ({tp_degree})"
        )
    kv = spec.n_kv_heads
    if spec.mla is None and tp_degree > kv and tp_degree % kv:
        raise SetupError(
            f"{spec.name}: with more ranks ({tp_degree}) than KV heads ({kv}) the "
            f"tensor-parallel degree must be a multiple of the KV heads"
        )
    if spec.mla is None and tp_degree <= kv and kv % tp_degree:
        raise SetupError(
            f"{spec.name}: the KV heads ({kv}) must be divisible by the tensor-parallel "
            f"degree ({tp_degree})"
        )


def check_pp_degree(spec: ModelSpec, pp_degree: int, partition: tuple[int, ...] = ()) -> None:
    """The pipeline-parallel degree and an explicit partition (``--pp-partition``, vLLM's
    ``VLLM_PP_LAYER_PARTITION``) against the model's decoder layers."""
    n = spec.n_layers
    if pp_degree < 1:
        raise SetupError(f"--pp must be a positive integer, got {pp_degree}")
    if pp_degree > n:
        raise SetupError(
            f"{spec.name}: --pp {pp_degree} is more pipeline stages than its {n} decoder "
            f"layers; give --pp {n} or fewer"
        )
    if not partition:
        return
    if len(partition) != pp_degree:
        raise SetupError(
            f"--pp-partition names {len(partition)} stages but --pp is {pp_degree}; give "
            f"one layer count per stage"
        )
    if any(count < 1 for count in partition):
        raise SetupError("--pp-partition: every stage needs at least one decoder layer")
    if sum(partition) != n:
        raise SetupError(
            f"--pp-partition sums to {sum(partition)} layers but {spec.name} has {n}; the "
            f"counts must add up to the decoder layers"
        )


def pp_layer_ranges(
    n_layers: int, pp_degree: int, partition: tuple[int, ...] = ()
) -> tuple[tuple[int, int], ...]:
    """(start, stop) of each pipeline stage's decoder layers, as vLLM's ``get_pp_indices``:
    ``n // pp`` layers each, and the remainder ``r`` one more each on stages ``pp - 2``, ``pp
    - 3``, ..., ``pp - 1 - r`` (the last stage, which holds the final norm and lm_head, never
    gets one; the first gets one only when ``r = pp - 1``). ``partition``: explicit counts
    (``VLLM_PP_LAYER_PARTITION``)."""
    counts = list(partition) or [n_layers // pp_degree] * pp_degree
    if not partition:
        for back in range(2, n_layers % pp_degree + 2):
            counts[-back] += 1
    ranges, start = [], 0
    for count in counts:
        ranges.append((start, start + count))
        start += count
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class PipelineStage:
    """One pipeline stage: decoder layers ``[start, stop)``; the first holds the embedding,
    the last the final norm and lm_head (and, with tied embeddings, its own copy of the
    embedding: ``vllm/model_executor/models/llama.py`` ``LlamaModel.__init__`` builds
    ``embed_tokens`` on the first rank or, tied, the last)."""

    index: int
    start: int
    stop: int
    first: bool
    last: bool

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)

    @property
    def label(self) -> str:
        """``stage 1 (layers 16-31, lm_head)``."""
        ends = [name for name, held in (("embedding", self.first), ("lm_head", self.last)) if held]
        span = (
            f"layers {self.start}-{self.stop - 1}"
            if self.stop - self.start > 1
            else (f"layer {self.start}")
        )
        return f"stage {self.index} ({', '.join([span, *ends])})"


def pipeline_stages(
    spec: ModelSpec, pp_degree: int = 1, partition: tuple[int, ...] = ()
) -> tuple[PipelineStage, ...]:
    """The stages of a ``pp_degree`` pipeline (checked), one for ``pp_degree`` 1."""
    check_pp_degree(spec, pp_degree, partition)
    ranges = pp_layer_ranges(spec.n_layers, pp_degree, partition)
    last = len(ranges) - 1
    return tuple(
        PipelineStage(i, start, stop, i == 0, i == last) for i, (start, stop) in enumerate(ranges)
    )


def pipeline_setup(stages: list[PipelineStage]) -> dict[str, object]:
    """The report's setup entries for a pipeline: ``pp`` and ``pp_layers`` (``11,11,10``);
    none for a single stage."""
    if len(stages) < 2:
        return {}
    return {"pp": len(stages), "pp_layers": ",".join(str(len(s.layers)) for s in stages)}


def vllm_kv_heads_per_rank(spec: ModelSpec, tp_degree: int) -> int:
    """KV heads one rank caches: ``max(1, n_kv_heads // tp)``; MLA: one latent "head"."""
    if spec.mla is not None:
        return 1
    return max(1, spec.n_kv_heads // tp_degree)


def vllm_head_size(spec: ModelSpec) -> int:
    """``head_size`` of the KV cache spec: head_dim, or MLA's ``kv_lora_rank + rope``."""
    if spec.mla is not None:
        return spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim
    return spec.head_dim


def page_size_bytes(spec: ModelSpec, block_size: int, dtype_bytes: int, tp_degree: int) -> int:
    """One block of one layer: ``2 x block x kv_heads x head_size x bytes`` (MLA: no 2x)."""
    heads = vllm_kv_heads_per_rank(spec, tp_degree)
    factor = 1 if spec.mla is not None else 2
    return factor * block_size * heads * vllm_head_size(spec) * dtype_bytes


def requested_memory_bytes(total_memory_bytes: int, utilization: float) -> float:
    """``total_memory x gpu_memory_utilization`` (``Worker.init_device``)."""
    if not 0 < utilization <= 1:
        raise SetupError(f"--gpu-memory-utilization must be in (0, 1], got {utilization}")
    return total_memory_bytes * utilization


@dataclass(frozen=True, slots=True)
class KvCacheLayout:
    """How vLLM groups the layers: ``groups`` lists each group's window (None: full)."""

    group_size: int
    """Layers per group (padded groups count as full)."""
    groups: tuple[int | None, ...]


def vllm_layer_window(spec: ModelSpec, index: int) -> int | None:
    """The window vLLM gives layer ``index``: only where ``layer_types`` marks it sliding
    (``vllm/model_executor/models/llama.py``, ``qwen2.py``, ``gemma2.py`` read
    ``config.layer_types``); a model-wide ``sliding_window`` alone (Phi-3, Mistral v0.1) is
    served as full attention, unlike transformers' DynamicCache."""
    if not spec.layer_types:
        return None
    return layer_window(spec, index)


def kv_cache_layout(spec: ModelSpec) -> KvCacheLayout:
    """``get_kv_cache_groups``: one group when every layer has the same spec; else groups of
    ``group_size`` layers per attention type (``_get_kv_cache_groups_uniform_page_size``)."""
    counts: dict[int | None, int] = {}
    for index in range(spec.n_layers):
        window = vllm_layer_window(spec, index)
        counts[window] = counts.get(window, 0) + 1
    if len(counts) == 1:
        (window,) = counts
        return KvCacheLayout(spec.n_layers, (window,))
    smallest, largest = min(counts.values()), max(counts.values())
    group_size = largest if largest < smallest * 1.5 else smallest
    groups: list[int | None] = []
    for window, n in counts.items():
        groups.extend([window] * cdiv(n, group_size))
    return KvCacheLayout(group_size, tuple(groups))


def _group_layers(spec: ModelSpec, layout: KvCacheLayout) -> tuple[tuple[int, ...], ...]:
    """The layers of each of ``layout.groups`` (in that order): per attention type, in layer
    order, ``layers[i::n_groups]`` for the type's ``i``-th group, as
    ``_get_kv_cache_groups_uniform_page_size`` assigns them (so that pipeline stages share
    the groups evenly); one group of every layer when all layers are alike."""
    by_window: dict[int | None, list[int]] = {}
    for index in range(spec.n_layers):
        by_window.setdefault(vllm_layer_window(spec, index), []).append(index)
    if len(by_window) == 1:
        return (tuple(range(spec.n_layers)),)
    out: list[tuple[int, ...]] = []
    for layers in by_window.values():
        n_groups = cdiv(len(layers), layout.group_size)
        out.extend(tuple(layers[i::n_groups]) for i in range(n_groups))
    return tuple(out)


def stage_group_size(spec: ModelSpec, start: int, stop: int) -> int:
    """Layers per group on the worker holding decoder layers ``[start, stop)``: the largest
    group once the whole model's groups are projected onto those layers
    (``_project_kv_cache_groups_to_worker``, then ``max(len(group.layer_names))`` in
    ``get_kv_cache_config_from_groups``). The whole model: ``kv_cache_layout(spec).group_size``."""
    layout = kv_cache_layout(spec)
    return max(
        sum(1 for index in group if start <= index < stop) for group in _group_layers(spec, layout)
    )


def max_memory_usage_bytes(
    window: int | None, max_model_len: int, max_num_batched_tokens: int, block: int, page: int
) -> int:
    """One layer's worst case for one request (``KVCacheSpec.max_memory_usage_bytes``)."""
    if window is None:
        return cdiv(max_model_len, block) * page
    tokens = min(window - 1 + max_num_batched_tokens, max_model_len)
    return (cdiv(tokens, block) + 1) * page


def _needed_bytes(
    layout: KvCacheLayout, max_model_len: int, max_num_batched_tokens: int, block: int, page: int
) -> int:
    """``_max_memory_usage_bytes_from_groups``: group_size x page x blocks one request needs."""
    blocks = sum(
        cdiv(max_memory_usage_bytes(w, max_model_len, max_num_batched_tokens, block, page), page)
        for w in layout.groups
    )
    return layout.group_size * page * blocks


def num_blocks(available_bytes: int, page: int, layout: KvCacheLayout) -> int:
    """``get_num_blocks``: ``available // page // group_size`` (never negative)."""
    return max(int(available_bytes // page // layout.group_size), 0)


def kv_cache_tokens(blocks: int, layout: KvCacheLayout, block: int) -> int:
    """ "GPU KV cache size: N tokens": ``num_blocks // n_groups x block_size``."""
    return blocks // len(layout.groups) * block


def max_concurrency(
    blocks: int,
    layout: KvCacheLayout,
    max_model_len: int,
    max_num_batched_tokens: int,
    block: int,
    page: int,
) -> float:
    """ "Maximum concurrency for L tokens per request": blocks over the blocks one request needs."""
    per_request = _needed_bytes(layout, max_model_len, max_num_batched_tokens, block, page)
    return blocks / cdiv(per_request, page * layout.group_size)


def needed_bytes(
    layout: KvCacheLayout, max_model_len: int, max_num_batched_tokens: int, block: int, page: int
) -> int:
    """KV cache bytes one request of ``max_model_len`` tokens needs (the check's figure)."""
    return _needed_bytes(layout, max_model_len, max_num_batched_tokens, block, page)


def estimate_max_model_len(
    layout: KvCacheLayout,
    available_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    block: int,
    page: int,
) -> int:
    """The largest length in ``[1, max_model_len]`` whose need fits (vLLM's binary search)."""

    def fits(length: int) -> bool:
        return _needed_bytes(layout, length, max_num_batched_tokens, block, page) <= (
            available_bytes
        )

    if not fits(1):
        return 0
    left, right, result = 1, max_model_len, 1
    while left <= right:
        mid = (left + right) // 2
        if fits(mid):
            result, left = mid, mid + 1
        else:
            right = mid - 1
    return result
