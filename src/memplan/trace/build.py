"""Building the real transformers model for a trace: from a config dict, with no weights.

Under ``FakeTensorMode`` every parameter is a fake cpu tensor (no storage), so a 405B model
builds in about a second (TRACE-NOTES.md). The dtype is passed explicitly: transformers 5
``from_config`` otherwise builds in the config's ``dtype`` (Llama-2 would come out fp16).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from memplan.errors import ConfigError, SetupError
from memplan.specs.model import ModelSpec
from memplan.trace.meta import MULTIMODAL_TYPES, as_loaded, auto_model_class, strict_values

__all__ = [
    "apply_freezing",
    "apply_lora",
    "build_model",
    "check_seq_len",
    "config_of",
    "grouped_mm_policy",
    "layer_index",
    "module_section",
    "supports_sdpa",
    "unpadded_mask_skips",
]

_DROPOUT_KEY = re.compile(r"(dropout|pdrop)$")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)(?:\.|$)")
_EMBEDDING = ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in", "rotary_emb", "drop")
_FINAL_NORM = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_LM_HEAD = ("lm_head", "embed_out")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "n_ctx")


def config_of(model: ModelSpec | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, raw config.json dict) of a ModelSpec or a config dict."""
    if isinstance(model, ModelSpec):
        if model.hf_config is None:
            raise ConfigError(f"{model.name}: the trace needs the model's config.json")
        return model.name, dict(model.hf_config)
    if isinstance(model, dict):
        if "model_type" not in model:
            raise ConfigError("the config has no model_type: give a Hugging Face config.json")
        name = model.get("_name_or_path") or model.get("name") or model["model_type"]
        return str(name), dict(model)
    raise ConfigError(f"cannot trace a {type(model).__name__}: give a ModelSpec or a config dict")


def check_seq_len(name: str, config: dict[str, Any], seq: int, allow_long: bool) -> None:
    """A sequence longer than the model's maximum is refused unless ``allow_long``."""
    for key in _POSITION_KEYS:
        limit = config.get(key)
        if isinstance(limit, int) and limit > 0:
            if seq > limit and not allow_long:
                raise SetupError(
                    f"{name}: a sequence of {seq} tokens is longer than the model's maximum of "
                    f"{limit} ({key}); shorten it or pass --allow-long-seq"
                )
            return


def _hf_config(config: dict[str, Any], dropout: float | None) -> Any:
    from transformers import AutoConfig

    values = {
        k: v
        for k, v in strict_values(config).items()
        if k not in ("quantization_config", "auto_map")
    }
    model_type = values.pop("model_type")
    values.pop("transformers_version", None)
    if dropout is not None:
        for key, value in list(values.items()):
            if (
                _DROPOUT_KEY.search(key)
                and isinstance(value, (int, float))
                and key != "classifier_dropout"
            ):
                values[key] = float(dropout)
    try:
        hf = as_loaded(AutoConfig.for_model(model_type, **values))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"transformers cannot read this {model_type} config: {exc}") from exc
    if dropout is not None:
        for key in dir(hf):
            if _DROPOUT_KEY.search(key) and key != "classifier_dropout":
                value = getattr(hf, key, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    setattr(hf, key, float(dropout))
    return hf


def build_model(
    config: dict[str, Any], *, dtype: torch.dtype, attention: str, dropout: float | None
) -> nn.Module:
    """The causal LM of ``config`` in ``dtype`` (built in the caller's fake mode, if any); for
    a multimodal config the ``*ForConditionalGeneration`` model, vision tower included."""
    hf = _hf_config(config, dropout)
    impl = "eager" if attention == "eager" else "sdpa"
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _untruncated_init():
            warnings.simplefilter("ignore")
            return auto_model_class(str(config.get("model_type"))).from_config(
                hf, dtype=dtype, attn_implementation=impl
            )
    except ValueError as exc:
        message = str(exc).splitlines()[0]
        if "scaled_dot_product_attention" in message or "attn_implementation" in message:
            raise SetupError(
                f"{config.get('model_type')}: transformers has no sdpa attention for this "
                f"family; use --attention eager"
            ) from exc
        raise ConfigError(f"transformers cannot build this model: {message}") from exc


@contextlib.contextmanager
def _untruncated_init() -> Iterator[None]:
    """Initialise with ``normal_`` where a module asks for ``trunc_normal_`` (SigLIP's LeCun
    init in Gemma 3's vision tower).

    torch 2.13's ``trunc_normal_`` resamples until no value lies outside the bounds, reading
    the tensor (``.item()``, ``mask.any()``), which fake tensors cannot answer. A trace needs
    shapes and dtypes, not values; ``normal_`` allocates nothing more.
    """
    from transformers import initialization

    def normal(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, *args: Any, **kw: Any):
        with torch.no_grad():
            return tensor.normal_(mean, std)

    original = initialization.TORCH_INIT_FUNCTIONS["trunc_normal_"]
    initialization.TORCH_INIT_FUNCTIONS["trunc_normal_"] = normal
    try:
        yield
    finally:
        initialization.TORCH_INIT_FUNCTIONS["trunc_normal_"] = original


def supports_sdpa(config: dict[str, Any]) -> bool:
    """Whether transformers can run this family with sdpa attention (``_supports_sdpa``)."""
    import transformers

    model_type = str(config.get("model_type", ""))
    names = auto_model_class(model_type)._model_mapping._model_mapping
    class_name = names.get(model_type)
    cls = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    return bool(getattr(cls, "_supports_sdpa", True))


@contextlib.contextmanager
def unpadded_mask_skips() -> Iterator[None]:
    """Let transformers skip the causal mask as it does on a GPU.

    ``masking_utils._ignore_causal_mask_sdpa`` refuses to skip the mask (so that sdpa could
    use ``is_causal`` and the flash kernel) whenever the padding mask or the cache offset is a
    fake tensor, because it cannot read them, and it takes fake position ids for packed
    sequences. The traced inputs have no padding (an all-ones
    padding mask means the same as none), and the offset only matters for a multi-token
    query, which in a trace is the prefill from position 0: the call gets those values.
    """
    from transformers import masking_utils

    original = masking_utils._ignore_causal_mask_sdpa

    def skip(
        padding_mask: Any, q_length: int, kv_length: int, q_offset: Any, *args: Any, **kwargs: Any
    ) -> bool:
        if isinstance(q_offset, torch.Tensor):
            q_offset = 0 if q_length > 1 else kv_length - q_length
        return bool(original(None, q_length, kv_length, q_offset, *args, **kwargs))

    packed = masking_utils.find_packed_sequence_indices
    masking_utils._ignore_causal_mask_sdpa = skip
    # the traced position ids are one sequence per row (no packing), which transformers cannot
    # read off fake tensors either
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = original
        masking_utils.find_packed_sequence_indices = packed


@contextlib.contextmanager
def grouped_mm_policy(dtype: torch.dtype) -> Iterator[None]:
    """MoE experts with non-bf16 weights: use transformers' grouped-mm fallback op.

    ``torch._grouped_mm`` takes bf16 only (its meta kernel checks it, as the CUDA kernel does)
    and is not autocast-enabled, so fp32 expert weights (mixed precision) cannot use it;
    transformers' ``grouped_mm_fallback`` custom op computes the same product, allocates the
    same output and saves its input and weight.
    """
    if dtype == torch.bfloat16:
        yield
        return
    from transformers.integrations import moe

    original = moe._can_use_grouped_mm
    moe._can_use_grouped_mm = lambda *args, **kwargs: False
    try:
        yield
    finally:
        moe._can_use_grouped_mm = original


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a module or parameter name, if any."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def module_section(name: str) -> str:
    """``embedding``, ``layers/<i>``, ``final_norm``, ``lm_head`` or ``loss`` for a module name."""
    index = layer_index(name)
    if index is not None:
        return f"layers/{index}"
    last = name.rsplit(".", 1)[-1]
    if last in _LM_HEAD:
        return "lm_head"
    if last in _FINAL_NORM:
        return "final_norm"
    if last in _EMBEDDING:
        return "embedding"
    return "loss" if name in ("", "model", "base_model", "base_model.model") else "other"


def apply_freezing(model: nn.Module, *, freeze_layers: int, freeze_embeddings: bool) -> None:
    """Freeze the first ``freeze_layers`` decoder layers and, if asked, the embeddings."""
    n_layers = 1 + max((layer_index(name) or 0 for name, _ in model.named_parameters()), default=-1)
    if freeze_layers > n_layers:
        raise SetupError(f"cannot freeze {freeze_layers} layers: the model has {n_layers}")
    input_embeddings = model.get_input_embeddings()
    for name, param in model.named_parameters():
        index = layer_index(name)
        if index is not None and index < freeze_layers:
            param.requires_grad_(False)
    if freeze_embeddings and input_embeddings is not None:
        for param in input_embeddings.parameters():
            param.requires_grad_(False)


def apply_lora(
    model: nn.Module, *, rank: int, alpha: float, targets: tuple[str, ...], dropout: float
) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on the modules named ``targets``."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise SetupError(
            f"LoRA targets {', '.join(missing)} are not modules of this model; its linear "
            f"layers are: {', '.join(linear)}"
        )
    modules: list[str] | str = list(targets)
    if getattr(model.config, "model_type", None) in MULTIMODAL_TYPES:
        # the text model only: peft matches module names anywhere, and the vision tower has
        # q_proj, fc1, ... of its own, which text inputs never run
        modules = rf".*language_model\..*\.({'|'.join(map(re.escape, targets))})"
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=dropout,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    from peft.tuners import tuners_utils

    # peft moves each new adapter to its base layer's device with Module.to, which swaps
    # tensors; fake tensors cannot be swapped, and everything is on one device anyway.
    move = tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer
    module_to = nn.Module.to
    tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer = _no_move  # type: ignore[method-assign]
    nn.Module.to = _same_device_to  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(model, config)
    finally:
        tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer = move  # type: ignore[method-assign]
        nn.Module.to = module_to  # type: ignore[method-assign]


_MODULE_TO = nn.Module.to


def _same_device_to(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    """``Module.to(device)`` that does nothing when everything is on that device already."""
    if len(args) == 1 and not kwargs and isinstance(args[0], (torch.device, str)):
        device = torch.device(args[0])
        if all(p.device == device for p in self.parameters()):
            return self
    return _MODULE_TO(self, *args, **kwargs)


def _no_move(self: Any, adapter_name: str, device: Any = None) -> None:
    """Stand-in for peft's adapter move (adapters stay in peft's fp32 adapter dtype)."""
