"""``VisionSpec``: the vision tower and projector of a multimodal checkpoint, enough to count it.

memplan models the text decoder of a multimodal checkpoint (Gemma 3, Llama 4, Mistral 3): its
activations, KV cache and FLOPs are those of text inputs. The vision tower and the projector
are parameters of the model the checkpoint loads as (``*ForConditionalGeneration``), so they
are counted, stored and (in training) held, but text inputs never run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["VisionKind", "VisionSpec"]


class VisionKind(StrEnum):
    SIGLIP = "siglip_vision_model"
    """Gemma 3: SigLIP encoder (``SiglipVisionModel``) + ``Gemma3MultiModalProjector``."""
    PIXTRAL = "pixtral"
    """Mistral 3: Pixtral encoder (``PixtralVisionModel``) + ``Mistral3MultiModalProjector``."""
    LLAMA4 = "llama4_vision_model"
    """Llama 4: ``Llama4VisionModel`` (with its pixel-shuffle adapter) + ``Llama4MultiModalProjector``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VisionSpec:
    """A vision encoder as transformers 5.23 builds it, and the projector into the text width."""

    kind: VisionKind
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    head_dim: int
    patch_size: int
    image_size: int
    text_hidden_size: int
    """The projector's output width (the text model's hidden size)."""
    n_channels: int = 3
    pooling_head: bool = False
    """SigLIP ``vision_use_head``: an attention-pooling head (Gemma 3 builds none)."""
    spatial_merge_size: int = 1
    """Mistral 3: patches merged s x s by ``Mistral3PatchMerger``."""
    projector_bias: bool = False
    """Mistral 3 ``multimodal_projector_bias``."""
    n_feature_layers: int = 1
    """Mistral 3: vision layers whose outputs are concatenated (``vision_feature_layer`` list)."""
    projector_input_dim: int = 0
    """Llama 4 ``projector_input_dim`` (the adapter MLP's width)."""
    projector_output_dim: int = 0
    """Llama 4 ``projector_output_dim``."""
    vision_output_dim: int = 0
    """Llama 4 ``vision_output_dim`` (the projector's input width)."""

    def __post_init__(self) -> None:
        from memplan.specs.model import check_size  # model.py imports this module

        for name in ("hidden_size", "n_layers", "n_heads", "head_dim", "patch_size"):
            check_size("vision_config", name, getattr(self, name))
        for name in ("intermediate_size", "image_size", "text_hidden_size", "n_channels"):
            check_size("vision_config", name, getattr(self, name))
        for name in ("projector_input_dim", "projector_output_dim", "vision_output_dim"):
            check_size("vision_config", name, getattr(self, name), minimum=0)
        check_size("config", "spatial_merge_size", self.spatial_merge_size)
        check_size("config", "the number of vision feature layers", self.n_feature_layers)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """Patches of one image at ``image_size`` (the position table's length)."""
        return self.patches_per_side**2
