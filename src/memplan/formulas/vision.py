"""Parameters and buffers of a multimodal checkpoint's vision tower and projector.

One function per encoder, each counting the modules transformers 5.23 builds
(``modeling_siglip.py``, ``modeling_pixtral.py``, ``modeling_llama4.py``) and the projector
into the text model (``Gemma3MultiModalProjector``, ``Mistral3MultiModalProjector``,
``Llama4MultiModalProjector``). Text inputs never run these modules; they are parameters of
the loaded model all the same (weights to store, and in training tensors to hold).
"""

from __future__ import annotations

from memplan.report import Item
from memplan.specs.model import ModelSpec
from memplan.specs.vision import VisionKind, VisionSpec

__all__ = ["vision_buffer_items", "vision_items", "vision_params"]

_SRC = {
    VisionKind.SIGLIP: "transformers 5.23 modeling_siglip.py + modeling_gemma3.py (projector)",
    VisionKind.PIXTRAL: "transformers 5.23 modeling_pixtral.py + modeling_mistral3.py (projector)",
    VisionKind.LLAMA4: "transformers 5.23 modeling_llama4.py (Llama4VisionModel, projector)",
}
_FP32, _INT64, _COMPLEX64 = 4, 8, 8


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _siglip(v: VisionSpec) -> list[tuple[str, int, str]]:
    """SigLIP: conv patch embedding with bias, learned positions, pre-norm layers (LayerNorm
    with bias, q/k/v/out and fc1/fc2 with biases), a final LayerNorm, the optional pooling
    head (probe, nn.MultiheadAttention, LayerNorm, MLP)."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    layer = 2 * 2 * h + 4 * _linear(h, h, True) + _linear(h, i, True) + _linear(i, h, True)
    parts = [
        ("patch_embedding", c * p * p * h + h, f"Conv2d({c}, {h}, {p}x{p}) + bias"),
        ("position_embedding", v.n_patches * h, f"{v.n_patches}*{h}"),
        ("layers", v.n_layers * layer, f"{v.n_layers} x [2 LayerNorm + 4 attn + fc1 + fc2]"),
        ("post_layernorm", 2 * h, f"LayerNorm({h})"),
    ]
    if v.pooling_head:
        head = h + 3 * h * h + 3 * h + _linear(h, h, True) + 2 * h
        head += _linear(h, i, True) + _linear(i, h, True)
        parts.append(("head", head, "probe + MultiheadAttention + LayerNorm + MLP"))
    return parts


def _pixtral(v: VisionSpec) -> list[tuple[str, int, str]]:
    """Pixtral: conv patch embedding without bias, an RMSNorm, RMSNorm'd layers with bias-free
    q/k/v/o and a gated (gate, up, down) MLP."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    layer = 2 * h + 4 * h * h + 3 * h * i
    return [
        ("patch_conv", c * p * p * h, f"Conv2d({c}, {h}, {p}x{p})"),
        ("ln_pre", h, f"RMSNorm({h})"),
        ("layers", v.n_layers * layer, f"{v.n_layers} x [2 RMSNorm + 4*{h}*{h} + 3*{h}*{i}]"),
    ]


def _llama4(v: VisionSpec) -> list[tuple[str, int, str]]:
    """Llama 4 vision: unfold + linear patch embedding, a class embedding, learned positions
    for the patches and the class token, LayerNorms before and after, layers like SigLIP's,
    and the pixel-shuffle adapter MLP (fc1, fc2, no biases)."""
    h, i, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.n_channels
    layer = 2 * 2 * h + 4 * _linear(h, h, True) + _linear(h, i, True) + _linear(i, h, True)
    positions = v.n_patches + 1
    adapter = i * v.projector_input_dim + v.projector_output_dim**2
    return [
        ("patch_embedding", c * p * p * h, f"Linear({c}*{p}*{p}, {h})"),
        ("class_embedding", h, f"{h}"),
        ("positional_embedding_vlm", positions * h, f"{positions}*{h}"),
        ("layernorm_pre_post", 2 * 2 * h, f"2 x LayerNorm({h})"),
        ("layers", v.n_layers * layer, f"{v.n_layers} x [2 LayerNorm + 4 attn + fc1 + fc2]"),
        ("vision_adapter", adapter, f"{i}*{v.projector_input_dim} + {v.projector_output_dim}^2"),
    ]


def _projector(v: VisionSpec) -> list[tuple[str, int, str]]:
    """The projector from the vision width into the text model's."""
    h, t = v.hidden_size, v.text_hidden_size
    if v.kind is VisionKind.SIGLIP:
        return [
            ("mm_input_projection_weight", h * t, f"{h}*{t}"),
            ("mm_soft_emb_norm", h, f"RMSNorm({h})"),
        ]
    if v.kind is VisionKind.PIXTRAL:
        s, n_in = v.spatial_merge_size, h * v.n_feature_layers
        return [
            ("norm", h, f"RMSNorm({h})"),
            ("patch_merger", h * s * s * h, f"{h * s * s}*{h}"),
            ("linear_1", _linear(n_in, t, v.projector_bias), f"{n_in}*{t}"),
            ("linear_2", _linear(t, t, v.projector_bias), f"{t}*{t}"),
        ]
    return [("linear_1", v.vision_output_dim * t, f"{v.vision_output_dim}*{t}")]


_TOWERS = {VisionKind.SIGLIP: _siglip, VisionKind.PIXTRAL: _pixtral, VisionKind.LLAMA4: _llama4}


def vision_items(spec: ModelSpec) -> list[Item]:
    """``vision_tower`` and ``multi_modal_projector`` nodes (unit ``params``); none for a
    text-only model."""
    v = spec.vision
    if v is None:
        return []
    src = _SRC[v.kind]
    out = []
    for key, parts in (
        ("vision_tower", _TOWERS[v.kind](v)),
        ("multi_modal_projector", _projector(v)),
    ):
        node = Item(key, unit="params", note="not run by text inputs")
        for part, count, formula in parts:
            node.leaf(part, count, formula, src)
        out.append(node)
    return out


def vision_params(spec: ModelSpec) -> int:
    """Parameters of the vision tower and the projector (0 for a text-only model)."""
    return int(sum(item.total for item in vision_items(spec)))


def vision_buffer_items(spec: ModelSpec) -> list[tuple[str, int, str]]:
    """Buffers the vision tower registers, as (key, bytes, formula): SigLIP's int64 position
    ids, Pixtral's float32 axial-rotary frequencies (inv_freq and original_inv_freq), Llama 4's
    complex64 rotary table ``freqs_ci`` (patches + class token, 2 * (head_dim // 4))."""
    v = spec.vision
    if v is None:
        return []
    if v.kind is VisionKind.SIGLIP:
        return [("vision_position_ids", v.n_patches * _INT64, f"int64 (1, {v.n_patches})")]
    if v.kind is VisionKind.PIXTRAL:
        half = (v.head_dim + 1) // 2
        return [("vision_rotary_inv_freq", 2 * half * _FP32, f"2 x ceil({v.head_dim}/2) x 4 B")]
    width = 2 * (v.head_dim // 2 // 2)
    rows = v.n_patches + 1
    return [("vision_freqs_ci", rows * width * _COMPLEX64, f"complex64 ({rows}, 1, {width})")]
