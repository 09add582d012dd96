"""Reading a raw ``config.json`` dict for :mod:`memplan.specs.hf`: :class:`_Config` (the family
defaults and clear errors) and the field readers every family parser shares."""

from __future__ import annotations

import math
from typing import Any

from memplan.errors import ConfigError
from memplan.specs.model import AttentionType

_MISSING: Any = object()


class _Config:
    """A raw config dict with the family's defaults, read with clear errors."""

    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any], name: str) -> None:
        self.raw = raw
        self.defaults = defaults
        self.name = name

    def get(self, *keys: str, default: Any = _MISSING) -> Any:
        """The first of ``keys`` present in the config (an explicit null included, as
        transformers takes it), else the family default."""
        for key in keys:
            if key in self.raw:
                return self.raw[key]
        for key in keys:
            if key in self.defaults:
                return self.defaults[key]
        if default is _MISSING:
            raise ConfigError(
                f"{self.name}: config.json has no {keys[0]!r}; add it (the model's "
                f"{keys[0].replace('_', ' ')}) or give the size by hand with --manual"
            )
        return default

    def int_(self, *keys: str, default: Any = _MISSING) -> Any:
        value = self.get(*keys, default=default)
        if value is None:
            if default is _MISSING:
                raise ConfigError(
                    f"{self.name}: {keys[0]} is null in config.json; set it to the model's size"
                )
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{self.name}: {keys[0]} must be an integer, got {value!r}")
        if value <= 0 and keys[0] not in _MAY_BE_ZERO:
            raise ConfigError(f"{self.name}: {keys[0]} must be positive, got {value}")
        return value

    def number(self, *keys: str, default: Any = _MISSING) -> float | None:
        """A finite real number (None where the config has null)."""
        value = self.get(*keys, default=default)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{self.name}: {keys[0]} must be a finite number, got {value!r}")
        return float(value)

    def bool_(self, *keys: str, default: Any = _MISSING) -> bool:
        return bool(self.get(*keys, default=default))


_MAY_BE_ZERO = {"first_k_dense_replace", "n_shared_experts", "num_experts", "n_routed_experts"}


def _head_dim(cfg: _Config, hidden: int, heads: int, *, explicit: Any = None) -> int:
    """``head_dim`` when given, else hidden / heads (which must then divide exactly)."""
    value = cfg.int_("head_dim", default=None) if explicit is None else explicit
    if value is not None:
        return int(value)
    if hidden % heads:
        raise ConfigError(
            f"{cfg.name}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
            "set head_dim in config.json or fix the sizes"
        )
    return hidden // heads


def _dtype(cfg: _Config) -> str:
    """``torch_dtype`` (``dtype`` in transformers 5), else the text model's (multimodal
    configs that give it only inside ``text_config``), else bf16 for an MXFP4 checkpoint,
    else float32."""
    text = cfg.raw.get("text_config")
    text = text if isinstance(text, dict) else {}
    quant = cfg.raw.get("quantization_config")
    packed = isinstance(quant, dict) and quant.get("quant_method") == "mxfp4"
    value = (
        cfg.raw.get("torch_dtype")
        or cfg.raw.get("dtype")
        or text.get("torch_dtype")
        or text.get("dtype")
        # gpt-oss names no dtype: its tensors outside the MXFP4 experts are bf16 (model card,
        # section 2.1; the checkpoint's safetensors)
        or ("bfloat16" if packed else "float32")
    )
    return str(value).replace("torch.", "")


def _rope_theta(cfg: _Config) -> float:
    """``rope_parameters.rope_theta`` (transformers 5), else ``rope_theta``, else the family's
    default (the config class's ``default_theta``: 10000, Mixtral 1e6). Where
    ``rope_parameters`` is given per layer type (Gemma 3), the full-attention layers' theta."""
    default = float(cfg.defaults.get("rope_theta", 10000.0))
    params = cfg.raw.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    if isinstance(params, dict) and isinstance(params.get("rope_theta"), int | float):
        return float(params["rope_theta"])
    value = cfg.raw.get("rope_theta")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{cfg.name}: rope_theta must be a positive number, got {value!r}")
    return float(value)


def _partial_rotary(cfg: _Config, key: str, *, default: float) -> float:
    """The fraction of head_dim that is rotated: ``rope_parameters.partial_rotary_factor``,
    else ``key`` (``partial_rotary_factor``, NeoX ``rotary_pct``), else ``default``."""
    params = cfg.raw.get("rope_parameters")
    value = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    if value is None:
        value = cfg.raw.get(key)
    if not value:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{cfg.name}: {key} must be a fraction in (0, 1], got {value!r}")
    return float(value)


def _layer_types(cfg: _Config, n_layers: int) -> tuple[AttentionType, ...]:
    raw = cfg.raw.get("layer_types")
    if raw is None:
        return ()
    known = ", ".join(t.value for t in AttentionType)
    if not isinstance(raw, list) or len(raw) != n_layers:
        raise ConfigError(
            f"{cfg.name}: layer_types must list one attention type per layer ({n_layers}: "
            f"{known}), got {str(raw)[:60]!r}"
        )
    try:
        return tuple(AttentionType(item) for item in raw)
    except ValueError:
        bad = next(item for item in raw if item not in tuple(t.value for t in AttentionType))
        raise ConfigError(f"{cfg.name}: layer_types holds {bad!r}; memplan knows {known}") from None


def _common(cfg: _Config) -> dict[str, Any]:
    """Fields read the same way by every Llama-like family."""
    hidden = cfg.int_("hidden_size")
    heads = cfg.int_("num_attention_heads")
    n_layers = cfg.int_("num_hidden_layers")
    kv = cfg.int_("num_key_value_heads", default=None) or heads
    return {
        "vocab_size": cfg.int_("vocab_size"),
        "hidden_size": hidden,
        "n_layers": n_layers,
        "n_heads": heads,
        "n_kv_heads": kv,
        "intermediate_size": cfg.int_("intermediate_size"),
        "activation": str(cfg.get("hidden_act", "hidden_activation", default="silu")),
        "tie_word_embeddings": cfg.bool_("tie_word_embeddings"),
        "max_position_embeddings": cfg.int_("max_position_embeddings", default=2048),
        "rope_theta": _rope_theta(cfg),
        "attention_dropout": cfg.number("attention_dropout", default=0.0) or 0.0,
        "layer_types": _layer_types(cfg, n_layers),
    }
