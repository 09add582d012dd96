"""Matmul FLOPs of a forward pass and a training step, per component, from the model spec.

A matmul of (m, k) by (k, n) costs ``2 m n k`` FLOPs (one multiply and one add per term);
norms, activations, softmax and other elementwise work are left out, as in
``torch.utils.flop_counter`` and in the MFU literature (PaLM, appendix B; Chinchilla,
appendix F). ``T = batch x query tokens`` is the number of rows each projection sees.

The attention core (``Q K^T`` and ``P V``) is given under one of two conventions, named in the
tree:

* ``matmul``: the FLOPs of the matmuls as an eager implementation runs them, over every
  (query, key) pair in the call, masked or not. This is what ``FlopCounterMode`` counts for
  eager attention and for the fused CUDA kernels (no causal halving).
* ``causal``: only the pairs a causal (and sliding-window) mask keeps, ``S (S + 1) / 2`` per
  head for a prefill of S tokens: the work a causal flash kernel really does.

Training: the backward pass costs twice the forward's matmuls (one matmul for the input
gradient, one for the weight gradient), so a step is ``3 x forward`` model FLOPs; full
activation recomputation runs the forward once more (``4 x``): the extra forward counts in
hardware FLOPs (HFU), not in model FLOPs (MFU) (Korthikanti et al. 2022, section 6; PaLM
appendix B).
"""

from __future__ import annotations

from functools import lru_cache

from memplan.errors import SetupError
from memplan.formulas.kv_cache import layer_window
from memplan.report import Item
from memplan.specs.model import MlpKind, ModelSpec

__all__ = [
    "ATTENTION_CONVENTIONS",
    "attention_core_flops",
    "attention_pairs",
    "forward_flops",
    "forward_flops_item",
    "linear_flops",
    "seed004_forward_flops",
    "training_step_flops",
]

ATTENTION_CONVENTIONS = ("matmul", "causal")


def linear_flops(rows: int, n_in: int, n_out: int) -> int:
    """``2 x rows x n_in x n_out``: one (rows, n_in) @ (n_in, n_out) matmul."""
    return 2 * rows * n_in * n_out


def attention_pairs(
    q_len: int, past_len: int, window: int | None, convention: str, *, cached: bool
) -> int:
    """(query, key) pairs per sequence and head.

    ``matmul``: ``q_len x keys in the call``; the keys are all ``past + q`` tokens except for a
    dynamic sliding-window layer in decode, which passes at most ``window - 1`` cached tokens
    (``DynamicSlidingWindowLayer.update``). ``causal``: the pairs the mask keeps, query ``p``
    (absolute position) seeing ``min(p + 1, window)`` keys.
    """
    if convention == "matmul":
        kept_past = past_len
        if window is not None and cached and past_len > 0:
            kept_past = min(past_len, window - 1)
        return q_len * (kept_past + q_len)
    if convention != "causal":
        raise SetupError(f"attention convention must be one of {ATTENTION_CONVENTIONS}")
    if window is None:
        # sum over p in [past, past + q) of (p + 1)
        return q_len * past_len + q_len * (q_len + 1) // 2
    # sum of min(x, window) for x = p + 1 in [past + 1, past + q]
    low, high = past_len + 1, past_len + q_len
    top = min(high, window)
    below = (low + top) * (top - low + 1) // 2 if top >= low else 0
    return below + window * max(0, high - max(low - 1, window))


def _head_dims(spec: ModelSpec) -> tuple[int, int]:
    """(q/k head width, v head width)."""
    if spec.mla is not None:
        return spec.mla.qk_head_dim, spec.mla.v_head_dim
    return spec.head_dim, spec.head_dim


def attention_core_flops(
    spec: ModelSpec, batch: int, q_len: int, past_len: int, convention: str, index: int = 0
) -> int:
    """``Q K^T`` plus ``P V`` of one layer: ``2 B H pairs (d_qk + d_v)``."""
    d_qk, d_v = _head_dims(spec)
    pairs = attention_pairs(
        q_len, past_len, layer_window(spec, index), convention, cached=past_len > 0
    )
    return 2 * batch * spec.n_heads * pairs * (d_qk + d_v)


def _projection_items(spec: ModelSpec, rows: int, kv_rows: int) -> list[Item]:
    """q, k, v, o (or MLA's) projections of one layer for ``rows`` query tokens.

    ``kv_rows``: MLA in transformers 5.23 up-projects (``kv_b_proj``) the whole cached latent
    at every step (``DeepseekV2Attention.expand_kv``), i.e. past + new tokens."""
    h = spec.hidden_size
    if spec.mla is None:
        q, kv = spec.q_dim, spec.kv_dim
        return [
            Item("q_proj", linear_flops(rows, h, q), "flops", f"2*T*{h}*{q}"),
            Item("k_proj", linear_flops(rows, h, kv), "flops", f"2*T*{h}*{kv}"),
            Item("v_proj", linear_flops(rows, h, kv), "flops", f"2*T*{h}*{kv}"),
            Item("o_proj", linear_flops(rows, q, h), "flops", f"2*T*{q}*{h}"),
        ]
    m = spec.mla
    heads = spec.n_heads
    if m.q_lora_rank is None:
        q_flops = linear_flops(rows, h, heads * m.qk_head_dim)
    else:
        q_flops = linear_flops(rows, h, m.q_lora_rank)
        q_flops += linear_flops(rows, m.q_lora_rank, heads * m.qk_head_dim)
    kv_b = linear_flops(kv_rows, m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim))
    return [
        Item("q_proj", q_flops, "flops", "q_proj, or q_a_proj + q_b_proj"),
        Item(
            "kv_a_proj",
            linear_flops(rows, h, m.kv_lora_rank + m.qk_rope_head_dim),
            "flops",
            "2*T*h*(kv_lora_rank + rope)",
        ),
        Item("kv_b_proj", kv_b, "flops", "2*(past+T)*kv_lora_rank*H*(nope+v)"),
        Item("o_proj", linear_flops(rows, heads * m.v_head_dim, h), "flops", "2*T*H*v*h"),
    ]


def _mlp_flops(spec: ModelSpec, rows: int, width: int) -> int:
    matrices = 3 if spec.mlp_kind is MlpKind.GATED else 2
    return matrices * linear_flops(rows, spec.hidden_size, width)


def _ffn_item(spec: ModelSpec, index: int, rows: int) -> Item:
    """Dense MLP, or MoE: router + top-k routed experts + shared experts."""
    if not spec.is_moe_layer(index) or spec.moe is None:
        return Item("mlp", _mlp_flops(spec, rows, spec.intermediate_size), "flops", "dense MLP")
    moe = spec.moe
    node = Item("moe", unit="flops")
    node.leaf("router", linear_flops(rows, spec.hidden_size, moe.n_experts), "2*T*h*E")
    node.leaf(
        "experts",
        moe.top_k * _mlp_flops(spec, rows, moe.expert_intermediate_size),
        f"top_k={moe.top_k} experts per token",
    )
    if moe.shared_intermediate_size:
        node.leaf("shared_experts", _mlp_flops(spec, rows, moe.shared_intermediate_size))
    if moe.shared_expert_gate:
        node.leaf("shared_expert_gate", linear_flops(rows, spec.hidden_size, 1))
    return node


def forward_flops_item(
    spec: ModelSpec,
    *,
    batch: int,
    q_len: int,
    past_len: int = 0,
    convention: str = "causal",
    logits: str = "all",
) -> Item:
    """Matmul FLOPs of one forward over ``q_len`` new tokens after ``past_len`` cached ones.

    ``logits``: ``all`` positions (training, a plain forward) or the ``last`` only
    (transformers' generate passes ``logits_to_keep=1``; vLLM computes the sampled rows)."""
    if logits not in ("all", "last"):
        raise SetupError(f"logits must be 'all' or 'last', got {logits!r}")
    rows = batch * q_len
    kv_rows = batch * (past_len + q_len)
    root = Item("forward", unit="flops", note=f"attention core convention: {convention}")
    layers = root.add(Item("layers", unit="flops"))
    projections = layers.add(Item("attention_projections", unit="flops"))
    core = layers.add(Item("attention_core", unit="flops", note=convention))
    ffn = layers.add(Item("ffn", unit="flops"))
    for count, index in _layer_kinds(spec):
        for item in _projection_items(spec, rows, kv_rows):
            _accumulate(projections, item, count)
        core_flops = attention_core_flops(spec, batch, q_len, past_len, convention, index)
        qk_pv = Item("qk_and_pv", core_flops, "flops", "2*B*H*pairs*(d_qk+d_v)")
        _accumulate(core, qk_pv, count)
        _accumulate(ffn, _ffn_item(spec, index, rows), count)
    logit_rows = rows if logits == "all" else batch
    root.leaf(
        "lm_head",
        linear_flops(logit_rows, spec.hidden_size, spec.vocab_size),
        f"2*{'T' if logits == 'all' else 'B'}*h*V",
    )
    return root


def _layer_kinds(spec: ModelSpec) -> list[tuple[int, int]]:
    """(how many layers, the first of them) per kind of layer, in the order they first come:
    a layer's FLOPs depend on its index only through its window and whether it is an MoE
    layer, so each kind is counted once and times its layers."""
    kinds: dict[tuple[int | None, bool], list[int]] = {}
    for index in range(spec.n_layers):
        kind = (layer_window(spec, index), spec.is_moe_layer(index))
        kinds.setdefault(kind, [0, index])[0] += 1
    return [(count, index) for count, index in kinds.values()]


def _accumulate(parent: Item, item: Item, times: int = 1) -> None:
    """Add ``times`` x ``item`` (a fresh item) into ``parent``: merge into the child of the same
    key (summing leaves)."""
    for existing in parent.children:
        if existing.key == item.key:
            if item.children:
                for child in item.children:
                    _accumulate(existing, child, times)
            else:
                existing.value += times * item.value
            return
    parent.add(_scaled(item, times))


def _scaled(item: Item, times: int) -> Item:
    """``item`` (a fresh item) with every leaf's value times ``times``, in place."""
    if item.children:
        for child in item.children:
            _scaled(child, times)
    else:
        item.value *= times
    return item


@lru_cache(maxsize=4096)
def forward_flops(spec: ModelSpec, *, batch: int, seq: int, convention: str = "causal") -> int:
    """Total matmul FLOPs of one forward over ``batch x seq`` tokens (logits at all positions);
    cached (a plan search and its scalar checks ask for the same few batches again and again)."""
    item = forward_flops_item(spec, batch=batch, q_len=seq, convention=convention)
    return int(item.total)


def training_step_flops(
    spec: ModelSpec, *, batch: int, seq: int, convention: str = "causal", recompute: bool = False
) -> tuple[int, int]:
    """(model FLOPs, hardware FLOPs) of one step: ``3 x forward``; ``+1 forward`` recomputed."""
    forward = forward_flops(spec, batch=batch, seq=seq, convention=convention)
    model = 3 * forward
    return model, model + (forward if recompute else 0)


def seed004_forward_flops(spec: ModelSpec, *, batch: int, seq: int) -> int:
    """Seed 004's formula, as written: ``2 B S d (4 d + 2 S + 3 d_ff)`` per forward.

    It counts one layer's projections (4 d^2), attention core (2 S d) and a 3-matrix MLP, with
    no ``n_layers`` factor and no lm_head; kept selectable to reproduce the seed's numbers
    (GPT-2 XL: 9.05969664e10 x batch)."""
    d, ff = spec.hidden_size, spec.intermediate_size
    return 2 * batch * seq * d * (4 * d + 2 * seq + 3 * ff)
