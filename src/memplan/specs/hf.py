"""Hugging Face ``config.json`` -> :class:`ModelSpec`, one parser per ``model_type``.

Every parser follows what transformers 5.23 builds for that family
(``transformers/models/<type>/modeling_<type>.py``), including the config classes' defaults
for keys a ``config.json`` leaves out (``configuration_<type>.py``): Gemma's head_dim of 256,
Mistral's 8 KV heads, Qwen3's head_dim of 128, the tied embeddings of GPT-2/Gemma/Falcon/
StarCoder2, and so on. ``tests/test_params_exact.py`` holds every parser to the parameter count
of the real model built on the meta device.
"""

from __future__ import annotations

from typing import Any

from memplan.errors import ConfigError
from memplan.specs.hf_config import _Config, _dtype
from memplan.specs.hf_families import _DEFAULTS, _PARSERS, SUPPORTED_MODEL_TYPES
from memplan.specs.model import ModelSpec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelTypeError",
    "spec_from_config",
]


class UnsupportedModelTypeError(ConfigError):
    """A config whose ``model_type`` memplan has no parser for (``config`` keeps the dict)."""

    def __init__(self, message: str, config: dict[str, Any], name: str) -> None:
        super().__init__(message)
        self.config = config
        self.name = name


def spec_from_config(
    config: dict[str, Any], *, name: str | None = None, source: str = "config"
) -> ModelSpec:
    """Parse a ``config.json`` dict into a :class:`ModelSpec`.

    Raises :class:`UnsupportedModelTypeError` for a model_type without a parser and
    :class:`ConfigError` for missing or inconsistent sizes.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{name or 'config'}: config.json must hold a JSON object")
    label = name or str(config.get("_name_or_path") or config.get("model_type") or "model")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(
            f'{label}: model_type must be a string such as "llama", got {model_type!r}'
        )
    if model_type is None:
        raise ConfigError(
            f"{label}: config.json has no 'model_type'; add one of: "
            + ", ".join(SUPPORTED_MODEL_TYPES)
        )
    parser = _PARSERS.get(str(model_type))
    if parser is None:
        raise UnsupportedModelTypeError(
            f"{label}: model_type {model_type!r} is not supported; supported: "
            + ", ".join(SUPPORTED_MODEL_TYPES)
            + " (with the trace extra installed, `memplan params` counts any transformers "
            "model on the meta device)",
            config,
            label,
        )
    cfg = _Config(config, _DEFAULTS[str(model_type)], label)
    try:
        fields = parser(cfg)
    except ConfigError as exc:
        if str(exc).startswith("MoE:"):  # raised by MoeSpec, which does not know the model
            raise ConfigError(f"{label}: {str(exc)[5:]}") from exc
        raise
    return ModelSpec(
        name=label,
        model_type=str(model_type),
        dtype=_dtype(cfg),
        source=source,
        hf_config=config,
        **fields,
    )
