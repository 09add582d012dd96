"""Multimodal checkpoints (Gemma 3, Llama 4, Mistral 3): the text model and the vision tower.

A multimodal ``config.json`` nests the text decoder's config under ``text_config`` and the
vision encoder's under ``vision_config``. memplan parses the text decoder with its family's
parser (the spec's layers, KV cache, FLOPs and activations are the text model's, for text
inputs), and counts the vision tower and the projector as parameters of the model the
checkpoint loads as (``*ForConditionalGeneration``, which holds all three).

Tied embeddings follow ``text_config.tie_word_embeddings`` (the text config class's default
where absent), not the top-level flag: ``Mistral3Config`` defaults the top-level flag to True,
yet the Mistral-Small-3.1/3.2 checkpoints store ``lm_head.weight`` apart from the embeddings,
and ``from_pretrained`` keeps both (``PreTrainedModel.tie_weights`` does not tie two
different stored tensors); Gemma 3 and Llama 4 set both flags alike. The trace engine builds
the model with the same value (``memplan.trace.build``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from memplan.errors import ConfigError
from memplan.specs.hf_config import _Config
from memplan.specs.vision import VisionKind, VisionSpec

__all__ = ["MULTIMODAL_TEXT_TYPES", "VISION_DEFAULTS", "multimodal", "text_config_of"]

Parser = Callable[[_Config], dict[str, Any]]

MULTIMODAL_TEXT_TYPES: dict[str, tuple[str, ...]] = {
    "gemma3": ("gemma3_text",),
    "llama4": ("llama4_text",),
    "mistral3": ("mistral",),
}
"""Per multimodal model_type, the text model_types memplan parses (the first is the default
of the config class's ``text_config``)."""

VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "siglip_vision_model": {"hidden_size": 768, "intermediate_size": 3072,
                            "num_hidden_layers": 12, "num_attention_heads": 12,
                            "num_channels": 3, "image_size": 224, "patch_size": 16,
                            "vision_use_head": True},
    "pixtral": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                "num_attention_heads": 16, "num_channels": 3, "image_size": 1024,
                "patch_size": 16},
    "llama4_vision_model": {"hidden_size": 768, "intermediate_size": 5632,
                            "num_hidden_layers": 34, "num_attention_heads": 16,
                            "num_channels": 3, "image_size": 448, "patch_size": 14,
                            "vision_output_dim": 7680, "projector_input_dim": 4096,
                            "projector_output_dim": 4096},
}  # fmt: skip
"""Defaults of the transformers 5.23 vision config classes for the keys memplan reads."""

_VISION_OF = {
    "gemma3": "siglip_vision_model",
    "llama4": "llama4_vision_model",
    "mistral3": "pixtral",
}
_ABSENT_VISION_CONFIG: dict[str, dict[str, Any]] = {
    "mistral3": {"patch_size": 14, "image_size": 1540},
}
"""Where a config leaves ``vision_config`` out, the composite config class builds it with its
own sizes (``Mistral3Config``: ``SubConfigSpec(init_kwargs=...)`` in transformers 5.23
``configuration_mistral3.py``; the other sizes equal ``PixtralVisionConfig``'s)."""
_COMPOSITE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral3": {"spatial_merge_size": 2, "multimodal_projector_bias": False,
                 "vision_feature_layer": -1},
}  # fmt: skip


def text_config_of(cfg: _Config) -> tuple[str, dict[str, Any]]:
    """(text model_type, text config dict) of a multimodal config, with clear errors."""
    text = cfg.raw.get("text_config")
    if not isinstance(text, dict):
        raise ConfigError(
            f"{cfg.name}: a {cfg.raw.get('model_type')} config.json needs a text_config object "
            "(the text model's sizes)"
        )
    allowed = MULTIMODAL_TEXT_TYPES[str(cfg.raw["model_type"])]
    text_type = str(text.get("model_type") or allowed[0])
    if text_type not in allowed:
        raise ConfigError(
            f"{cfg.name}: text_config model_type {text_type!r} is not supported inside "
            f"{cfg.raw['model_type']}; supported: {', '.join(allowed)}"
        )
    return text_type, text


def multimodal(
    cfg: _Config, parsers: Mapping[str, Parser], defaults: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """The text model's fields (its family's parser) with the vision tower beside them."""
    model_type = str(cfg.raw["model_type"])
    text_type, text = text_config_of(cfg)
    text_cfg = _Config(text, defaults[text_type], cfg.name)
    out = parsers[text_type](text_cfg)
    out["vision"] = _vision(cfg, model_type, out["hidden_size"])
    out["loss_after_text_model"] = model_type == "llama4"
    return out


def _vision(cfg: _Config, model_type: str, text_hidden: int) -> VisionSpec:
    raw = cfg.raw.get("vision_config")
    kind = VisionKind(_VISION_OF[model_type])
    defaults = VISION_DEFAULTS[kind.value]
    if raw is None:
        raw, defaults = {}, {**defaults, **_ABSENT_VISION_CONFIG.get(model_type, {})}
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg.name}: vision_config must be a JSON object")
    vision = _Config(raw, defaults, f"{cfg.name} vision_config")
    top = _Config(cfg.raw, _COMPOSITE_DEFAULTS.get(model_type, {}), cfg.name)
    hidden, heads = vision.int_("hidden_size"), vision.int_("num_attention_heads")
    fields: dict[str, Any] = {
        "kind": kind,
        "hidden_size": hidden,
        "intermediate_size": vision.int_("intermediate_size"),
        "n_layers": vision.int_("num_hidden_layers"),
        "n_heads": heads,
        "head_dim": hidden // heads,
        "patch_size": vision.int_("patch_size"),
        "image_size": vision.int_("image_size"),
        "n_channels": vision.int_("num_channels"),
        "text_hidden_size": text_hidden,
    }
    if kind is VisionKind.SIGLIP:
        fields["pooling_head"] = vision.bool_("vision_use_head")
    elif kind is VisionKind.PIXTRAL:
        layer = top.get("vision_feature_layer")
        fields.update(
            spatial_merge_size=top.int_("spatial_merge_size"),
            projector_bias=top.bool_("multimodal_projector_bias"),
            n_feature_layers=len(layer) if isinstance(layer, list) else 1,
        )
    else:
        fields.update(
            projector_input_dim=vision.int_("projector_input_dim"),
            projector_output_dim=vision.int_("projector_output_dim"),
            vision_output_dim=vision.int_("vision_output_dim"),
        )
    return VisionSpec(**fields)
