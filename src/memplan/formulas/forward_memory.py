"""Live memory of one inference forward, op by op, as transformers 5.23 + torch 2.13 run it on CUDA.

A forward of ``generate`` (the prefill over the prompt, or one decode step) is replayed as the
sequence of tensors its ops allocate and free, in program order, under ``torch.no_grad``: each
op's output is a new storage (views are free), and a storage is freed when the last Python
reference to it goes (an op's inputs, a reassigned variable, a returned frame's locals). The
replay's highest level is the forward's peak and the live set there is its breakdown:
``temporaries`` by tensor, ``kv_cache`` (the cache layers' tensors at that moment) and
``inputs`` (the prompt's token ids). The trace engine records the same forward from the real
model (``memplan trace --infer``); tests hold the two equal.

What a forward keeps alive besides the op in flight, and why (``modeling_llama.py``):

* ``inputs_embeds``, the rotary ``cos`` and ``sin`` (batch x q x rotary width, in the
  activation dtype): locals of the model's forward until it returns;
* the decoder layer's input: the model's ``hidden_states`` until the layer returns (the
  first layer's input is ``inputs_embeds`` itself);
* the residual after attention, the norm output feeding the MLP, the MLP's intermediates;
* the KV cache: a ``DynamicCache`` grows each layer by ``torch.cat`` (the prefill copies the
  new keys and values; a decode step holds a layer's old and new tensors for a moment); a
  ``StaticCache`` allocates each layer's full-length tensors at its first update.

The attention kernels are the ones both engines take from
:func:`memplan.formulas.attention.generate_attention_kernel` (transformers' mask and GQA
handling, then PyTorch's ``select_sdp_backend``), passed in as ``kernels``; each kernel's
outputs follow its meta function in torch 2.13 (``_meta_registrations.py``). The masks
transformers builds (a sliding layer past its window, a StaticCache's decode step, eager) are
not replayed yet: those cases are strict xfails in ``tests/test_inference_exact.py``. Sizes are rounded per allocation
(``round_to``: 512 B, the CUDA caching allocator's block, or 1 for CPU semantics).
"""

from __future__ import annotations

from functools import lru_cache

from memplan.formulas.kv_cache import layer_window
from memplan.formulas.replay_attention import attention, cache_growth, linear_states
from memplan.formulas.replay_mlp import mlp
from memplan.formulas.replay_ops import (
    FP32_BYTES,
    INT64_BYTES,
    ForwardShape,
    Replay,
    kv_row_bytes,
    norm,
)
from memplan.formulas.serving import PipelineStage
from memplan.specs.model import ModelSpec

__all__ = [
    "REPLAYED_FAMILIES",
    "ForwardShape",
    "Replay",
    "forward_replay",
    "kv_row_bytes",
    "layer_runs",
]

REPLAYED_FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "mistral3",
        "qwen2",
        "qwen3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "deepseek_v2",
    }
)
"""Model types whose forward the replay follows op by op, held to the trace in
``tests/test_inference_exact.py``. Others are replayed with the Llama layout (their own
projections, norms, activations or routers differ): see ``docs/accuracy.md`` for the gaps."""


def forward_replay(
    spec: ModelSpec, shape: ForwardShape, replay: Replay, stage: PipelineStage | None = None
) -> Replay:
    """Replay one forward on ``replay`` (which holds the cache of ``shape.past`` tokens as
    ``kv/<first layer of its run>/k`` and ``.../v``, see :func:`layer_runs`, when
    ``past > 0``); returns it.

    Layers of one kind (dense or MoE, full or sliding attention) run the same ops on the same
    shapes, and each leaves only its cache's growth behind, so the level a layer starts from
    never falls from one layer to the next: the highest point of a kind is in its last layer.
    Layer 0 (whose input is ``inputs_embeds`` itself) and the last layer of each kind are
    replayed op by op; the runs of layers between them only grow their caches.

    ``stage``: one pipeline stage's share of the forward: its layers; the prologue (token ids,
    embeddings) only on the first, where a later stage starts from the hidden states it
    receives (``stage_input``) and builds its own rotary tables; the epilogue (final norm,
    logits, the next token) only on the last, where an earlier stage ends holding the hidden
    states it hands on."""
    first = stage is None or stage.first
    last = stage is None or stage.last
    start, stop = (0, spec.n_layers) if stage is None else (stage.start, stage.stop)
    if first:
        _prologue(spec, shape, replay)
        stream = "inputs_embeds"
    else:
        replay.new("stage_input", shape.tokens * spec.hidden_size * shape.act)
        _tables(spec, shape, replay)
        stream = "stage_input"
    for run_start, run_stop, replayed in layer_runs(spec, start, stop):
        output = f"layer_output/{run_stop - 1}"
        if replayed:
            _decoder_layer(spec, shape, replay, run_start, stream, output)
            if stream != "inputs_embeds":
                replay.free(stream)
        elif spec.is_linear_attention(run_start):
            linear_states(spec, shape, replay, run_start, run_stop - run_start)
            replay.rename(stream, output)
        else:
            cache_growth(spec, shape, replay, run_start, run_stop - run_start)
            replay.rename(stream, output)
        stream = output
    if last:
        _epilogue(spec, shape, replay, stream)
    else:
        tables = ("cos", "sin", "freqs_cis", "sliding_mask")
        done = ("inputs_embeds", *tables, "cache_position", "input_ids")
        replay.free(*(name for name in done if name in replay.live))
    return replay


@lru_cache(maxsize=256)
def layer_runs(
    spec: ModelSpec, start: int = 0, stop: int | None = None
) -> tuple[tuple[int, int, bool], ...]:
    """(start, stop, replayed) over the layers ``[start, stop)`` (default: all): each replayed
    layer alone (the first and the last layer of each kind), the others in maximal runs of one
    kind."""
    stop = spec.n_layers if stop is None else stop
    last: dict[tuple[bool, int | None, bool], int] = {}
    for index in range(start, stop):
        last[_kind(spec, index)] = index
    replayed = {start} | set(last.values())
    runs: list[tuple[int, int, bool]] = []
    for index in range(start, stop):
        if index in replayed:
            runs.append((index, index + 1, True))
        elif runs and not runs[-1][2] and _kind(spec, runs[-1][0]) == _kind(spec, index):
            runs[-1] = (runs[-1][0], index + 1, False)
        else:
            runs.append((index, index + 1, False))
    return tuple(runs)


def _kind(spec: ModelSpec, index: int) -> tuple[bool, int | None, bool]:
    return spec.is_moe_layer(index), layer_window(spec, index), spec.is_linear_attention(index)


# Prologue and epilogue -------------------------------------------------------------------------
def _prologue(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Token ids, ``cache_position``, the embeddings and the rotary tables (model forward)."""
    t = shape.tokens
    r.new("input_ids", t * INT64_BYTES, "inputs" if shape.past == 0 else "temporaries")
    r.new("cache_position", shape.q_len * INT64_BYTES)
    r.new("inputs_embeds", t * spec.hidden_size * shape.act)
    _tables(spec, shape, r)


def _tables(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """The sliding-window mask where transformers builds one, and the rotary tables."""
    if _builds_sliding_mask(spec):
        _sliding_mask(shape, r)
    if spec.mla is not None:
        _complex_rotary_table(spec, shape, r)
    else:
        _rotary_tables(spec, shape, r)


def _builds_sliding_mask(spec: ModelSpec) -> bool:
    """``Qwen2MoeModel`` builds a sliding-window mask in every forward, used by no layer when
    ``use_sliding_window`` is false: its config then sets ``sliding_window = 0``, which no
    key count is below, so ``masking_utils`` cannot skip it (transformers 5.23)."""
    config = spec.hf_config or {}
    return spec.model_type == "qwen2_moe" and not config.get("use_sliding_window", False)


def _sliding_mask(shape: ForwardShape, r: Replay) -> None:
    """``create_sliding_window_causal_mask`` -> ``sdpa_mask``: index vectors over the batch,
    the heads, the queries and the keys, then the (1, 1, q, keys) bool mask composed in steps
    (causal and sliding-window conditions); the last one stays until the forward returns."""
    q, keys = shape.q_len, shape.past + shape.q_len
    cells = q * keys
    r.new("mask/batch_index", shape.batch * INT64_BYTES)
    r.new("mask/head_index", INT64_BYTES)
    r.new("mask/q_arange", q * INT64_BYTES)
    r.new("mask/q_index", q * INT64_BYTES)
    r.free("mask/q_arange")
    r.new("mask/kv_arange", keys * INT64_BYTES)
    r.new("mask/kv_index", keys * INT64_BYTES)
    r.free("mask/kv_arange")
    r.new("mask/flag", 1)
    r.new("mask/q_column", q * INT64_BYTES)
    r.new("mask/step1", cells)
    r.free("mask/q_column")
    r.new("mask/step2", cells)
    r.free("mask/step1", "mask/flag")
    r.new("mask/step3", cells)
    r.new("sliding_mask", cells)
    r.free("mask/step3", "mask/step2")
    r.free("mask/batch_index", "mask/head_index", "mask/q_index", "mask/kv_index")


def _rotary_tables(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``LlamaRotaryEmbedding.forward``: fp32 position x inv_freq, cat, cos and sin (times
    ``attention_scaling``), cast to the activation dtype (no copy in fp32)."""
    rot = spec.rotary_dim or spec.head_dim
    t = shape.tokens
    r.new("rope/positions_fp32", t * FP32_BYTES)
    r.new("rope/freqs", t * (rot // 2) * FP32_BYTES)
    r.free("rope/positions_fp32")
    r.new("rope/emb", t * rot * FP32_BYTES)
    for name in ("cos", "sin"):
        r.new(f"rope/{name}_raw", t * rot * FP32_BYTES)
        r.new(f"rope/{name}_fp32", t * rot * FP32_BYTES)
        r.free(f"rope/{name}_raw")
    if shape.act == FP32_BYTES:
        r.rename("rope/cos_fp32", "cos")
        r.rename("rope/sin_fp32", "sin")
        r.free("rope/freqs", "rope/emb")
        return
    r.new("cos", t * rot * shape.act)
    r.new("sin", t * rot * shape.act)
    r.free("rope/freqs", "rope/emb", "rope/cos_fp32", "rope/sin_fp32")


def _complex_rotary_table(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``DeepseekV2RotaryEmbedding.forward``: ``freqs_cis = polar(ones, freqs) x scaling``, a
    complex64 (B, q, rope / 2) table shared by all layers."""
    assert spec.mla is not None
    half = shape.tokens * (spec.mla.qk_rope_head_dim // 2)
    r.new("rope/positions_fp32", shape.tokens * FP32_BYTES)
    r.new("rope/freqs", half * FP32_BYTES)
    r.free("rope/positions_fp32")
    r.new("rope/ones", half * FP32_BYTES)
    r.new("rope/polar", half * 2 * FP32_BYTES)
    r.free("rope/ones")
    r.new("freqs_cis", half * 2 * FP32_BYTES)
    r.free("rope/polar", "rope/freqs")


def _epilogue(spec: ModelSpec, shape: ForwardShape, r: Replay, stream: str) -> None:
    """Final norm, the model forward's return (its locals freed), lm_head, generate's fp32
    copy of the last logits row, the argmax."""
    b, v = shape.batch, spec.vocab_size
    norm(spec, shape, r, stream, "final_norm")
    if stream != "inputs_embeds":
        r.free(stream)
    tables = ("cos", "sin", "freqs_cis", "sliding_mask")
    r.free(*(name for name in ("inputs_embeds", *tables) if name in r.live))
    rows = shape.tokens if shape.logits_all else b
    r.new("logits", rows * v * shape.act)
    r.free("final_norm")
    r.new("next_token_logits_fp32", b * v * FP32_BYTES)
    r.free("logits")
    r.new("next_token", b * INT64_BYTES)
    r.free("next_token_logits_fp32", *(n for n in ("cache_position", "input_ids") if n in r.live))


# Decoder layer ---------------------------------------------------------------------------------
def _decoder_layer(
    spec: ModelSpec, shape: ForwardShape, r: Replay, index: int, source: str, output: str
) -> None:
    """Pre-norm residual layer: ``h + attn(norm(h))``, then ``+ mlp(norm(.))``."""
    norm(spec, shape, r, source, "attn_in")
    attention(spec, shape, r, index)
    r.free("attn_in")
    width = spec.hidden_size * shape.act
    r.new("residual", shape.tokens * width)
    r.free("attn_out")
    norm(spec, shape, r, "residual", "mlp_in")
    mlp(spec, shape, r, index)
    r.free("mlp_in")
    r.new(output, shape.tokens * width)
    r.free("mlp_out", "residual")
