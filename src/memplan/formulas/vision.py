"""Parameters and buffers of a multimodal checkpoint's vision tower and projector.

One function per encoder lists the tensors transformers 5.23 builds (``modeling_siglip.py``,
``modeling_pixtral.py``, ``modeling_llama4.py``) and the projector into the text model
(``Gemma3MultiModalProjector``, ``Mistral3MultiModalProjector``,
``Llama4MultiModalProjector``), tensor by tensor (the training engine rounds each allocation).
Text inputs never run these modules: they are parameters of the loaded model all the same
(weights to store; in training, tensors that get no gradient and so no optimizer state).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import prod

from memplan.report import Item
from memplan.specs.model import ModelSpec
from memplan.specs.vision import VisionKind, VisionSpec

__all__ = [
    "VisionTensor",
    "vision_buffer_items",
    "vision_items",
    "vision_params",
    "vision_tensors",
]

_SRC = {
    VisionKind.SIGLIP: "transformers 5.23 modeling_siglip.py + modeling_gemma3.py (projector)",
    VisionKind.PIXTRAL: "transformers 5.23 modeling_pixtral.py + modeling_mistral3.py (projector)",
    VisionKind.LLAMA4: "transformers 5.23 modeling_llama4.py (Llama4VisionModel, projector)",
}
_FP32, _INT64, _COMPLEX64 = 4, 8, 8


@dataclass(frozen=True, slots=True)
class VisionTensor:
    """One parameter of the vision tower or the projector."""

    name: str
    shape: tuple[int, ...]
    group: str
    """``vision_tower`` or ``multi_modal_projector``."""
    part: str
    """The breakdown line it is summed into (``layers``, ``patch_embedding``, ...)."""

    @property
    def numel(self) -> int:
        return prod(self.shape)


Shapes = Iterator[tuple[str, str, tuple[int, ...]]]
"""(part, name, shape) of each tensor."""


def _linear(part: str, name: str, n_out: int, n_in: int, bias: bool) -> Shapes:
    yield part, f"{name}.weight", (n_out, n_in)
    if bias:
        yield part, f"{name}.bias", (n_out,)


def _layernorm(part: str, name: str, width: int) -> Shapes:
    yield part, f"{name}.weight", (width,)
    yield part, f"{name}.bias", (width,)


def _encoder_layer(
    prefix: str, v: VisionSpec, names: tuple[str, ...], norms: tuple[str, str]
) -> Shapes:
    """A pre-norm layer with biased q/k/v/o and fc1/fc2 (SigLIP, Llama 4 vision)."""
    h, i = v.hidden_size, v.intermediate_size
    for name in names:
        yield from _linear("layers", f"{prefix}.self_attn.{name}", h, h, True)
    yield from _layernorm("layers", f"{prefix}.{norms[0]}", h)
    yield from _linear("layers", f"{prefix}.mlp.fc1", i, h, True)
    yield from _linear("layers", f"{prefix}.mlp.fc2", h, i, True)
    yield from _layernorm("layers", f"{prefix}.{norms[1]}", h)


def _siglip(v: VisionSpec) -> Shapes:
    """SigLIP: conv patch embedding with bias, learned positions, pre-norm layers, a final
    LayerNorm, and the optional attention-pooling head (probe, nn.MultiheadAttention,
    LayerNorm, MLP)."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    yield "patch_embedding", "embeddings.patch_embedding.weight", (h, c, p, p)
    yield "patch_embedding", "embeddings.patch_embedding.bias", (h,)
    yield "position_embedding", "embeddings.position_embedding.weight", (v.n_patches, h)
    attn = ("k_proj", "v_proj", "q_proj", "out_proj")
    for k in range(v.n_layers):
        yield from _encoder_layer(f"encoder.layers.{k}", v, attn, ("layer_norm1", "layer_norm2"))
    yield from _layernorm("post_layernorm", "post_layernorm", h)
    if v.pooling_head:
        yield "head", "head.probe", (1, 1, h)
        yield "head", "head.attention.in_proj_weight", (3 * h, h)
        yield "head", "head.attention.in_proj_bias", (3 * h,)
        yield from _linear("head", "head.attention.out_proj", h, h, True)
        yield from _layernorm("head", "head.layernorm", h)
        yield from _linear("head", "head.mlp.fc1", i, h, True)
        yield from _linear("head", "head.mlp.fc2", h, i, True)


def _pixtral(v: VisionSpec) -> Shapes:
    """Pixtral: conv patch embedding without bias, an RMSNorm, RMSNorm'd layers with bias-free
    q/k/v/o and a gated (gate, up, down) MLP."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    yield "patch_conv", "patch_conv.weight", (h, c, p, p)
    yield "ln_pre", "ln_pre.weight", (h,)
    for k in range(v.n_layers):
        prefix = f"transformer.layers.{k}"
        yield "layers", f"{prefix}.attention_norm.weight", (h,)
        for name, n_out, n_in in (("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)):
            yield from _linear("layers", f"{prefix}.feed_forward.{name}", n_out, n_in, False)
        for name in ("k_proj", "v_proj", "q_proj", "o_proj"):
            yield from _linear("layers", f"{prefix}.attention.{name}", h, h, False)
        yield "layers", f"{prefix}.ffn_norm.weight", (h,)


def _llama4(v: VisionSpec) -> Shapes:
    """Llama 4 vision: unfold + linear patch embedding, a class embedding, learned positions
    for the patches and the class token, LayerNorms before and after, SigLIP-like layers, and
    the pixel-shuffle adapter MLP (fc1, fc2, no biases)."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    yield from _linear("patch_embedding", "patch_embedding.linear", h, c * p * p, False)
    yield "class_embedding", "class_embedding", (h,)
    yield "positional_embedding_vlm", "positional_embedding_vlm", (v.n_patches + 1, h)
    yield from _layernorm("layernorm_pre_post", "layernorm_pre", h)
    yield from _layernorm("layernorm_pre_post", "layernorm_post", h)
    attn = ("q_proj", "k_proj", "v_proj", "o_proj")
    norms = ("input_layernorm", "post_attention_layernorm")
    for k in range(v.n_layers):
        yield from _encoder_layer(f"model.layers.{k}", v, attn, norms)
    yield from _linear("vision_adapter", "vision_adapter.mlp.fc1", v.projector_input_dim, i, False)
    out = v.projector_output_dim
    yield from _linear("vision_adapter", "vision_adapter.mlp.fc2", out, out, False)


def _projector(v: VisionSpec) -> Shapes:
    """The projector from the vision width into the text model's."""
    h, t = v.hidden_size, v.text_hidden_size
    if v.kind is VisionKind.SIGLIP:
        yield "mm_input_projection_weight", "mm_input_projection_weight", (h, t)
        yield "mm_soft_emb_norm", "mm_soft_emb_norm.weight", (h,)
    elif v.kind is VisionKind.PIXTRAL:
        s, n_in = v.spatial_merge_size, h * v.n_feature_layers
        yield "norm", "norm.weight", (h,)
        yield "patch_merger", "patch_merger.merging_layer.weight", (h, h * s * s)
        yield from _linear("linear_1", "linear_1", t, n_in, v.projector_bias)
        yield from _linear("linear_2", "linear_2", t, t, v.projector_bias)
    else:
        yield "linear_1", "linear_1.weight", (t, v.vision_output_dim)


_TOWERS = {VisionKind.SIGLIP: _siglip, VisionKind.PIXTRAL: _pixtral, VisionKind.LLAMA4: _llama4}


def vision_tensors(spec: ModelSpec) -> tuple[VisionTensor, ...]:
    """Every parameter of the vision tower and the projector (none for a text-only model)."""
    v = spec.vision
    if v is None:
        return ()
    out = []
    for group, shapes in (
        ("vision_tower", _TOWERS[v.kind](v)),
        ("multi_modal_projector", _projector(v)),
    ):
        out += [VisionTensor(f"{group}.{name}", shape, group, part) for part, name, shape in shapes]
    return tuple(out)


def vision_items(spec: ModelSpec) -> list[Item]:
    """``vision_tower`` and ``multi_modal_projector`` nodes (unit ``params``), one line per
    part; none for a text-only model."""
    if spec.vision is None:
        return []
    src = _SRC[spec.vision.kind]
    sums: dict[str, dict[str, int]] = {}
    for t in vision_tensors(spec):
        parts = sums.setdefault(t.group, {})
        parts[t.part] = parts.get(t.part, 0) + t.numel
    out = []
    for group, parts in sums.items():
        node = Item(group, unit="params", note="not run by text inputs")
        for part, count in parts.items():
            node.leaf(part, count, f"sum of the {part} tensors' shapes", src)
        out.append(node)
    return out


def vision_params(spec: ModelSpec) -> int:
    """Parameters of the vision tower and the projector (0 for a text-only model)."""
    return sum(t.numel for t in vision_tensors(spec))


def vision_buffer_items(spec: ModelSpec) -> list[tuple[str, int, str]]:
    """Buffers the vision tower registers, as (key, bytes, formula), one allocation each:
    SigLIP's int64 position ids; Pixtral's float32 axial-rotary frequencies (``inv_freq`` and
    ``original_inv_freq``); Llama 4's complex64 rotary table ``freqs_ci`` (the patches and the
    class token, 2 * (head_dim // 4) frequencies)."""
    v = spec.vision
    if v is None:
        return []
    if v.kind is VisionKind.SIGLIP:
        return [("vision_position_ids", v.n_patches * _INT64, f"int64 (1, {v.n_patches})")]
    if v.kind is VisionKind.PIXTRAL:
        half = (v.head_dim + 1) // 2 * _FP32
        return [
            ("vision_rotary_inv_freq", half, f"ceil({v.head_dim}/2) x 4 B"),
            ("vision_rotary_original_inv_freq", half, f"ceil({v.head_dim}/2) x 4 B"),
        ]
    width = 2 * (v.head_dim // 2 // 2)
    rows = v.n_patches + 1
    return [("vision_freqs_ci", rows * width * _COMPLEX64, f"complex64 ({rows}, 1, {width})")]
