"""memplan's config defaults against transformers' own (trace extra).

A ``config.json`` may leave a field out; transformers then uses its config class's default
(``configuration_<type>.py``), and so must memplan's parsers, which never import transformers.
Two checks per family:

- the table of defaults the parsers read (``specs.hf_families._DEFAULTS``) holds the config
  class's declared defaults, key by key;
- the spec memplan parses from a config without any optional field equals the spec it parses
  from the same config as transformers fills it in (``AutoConfig.for_model(...).to_dict()``),
  which covers the defaults written inside the parsers as well, and the rules transformers
  applies after reading a config (Qwen2's ``sliding_window`` only with ``use_sliding_window``,
  Gemma's legacy ``hidden_act="gelu"`` read as the tanh approximation, ...). The same holds with
  each boolean switch of the config class turned over, for the defaults behind a switch;
- every bundled config.json gives the same spec as that config written out by transformers.

Found and fixed with these tests: Mixtral's rope_theta default (1e6, not 10000), Gemma 3's
per-layer-type ``rope_parameters``, Gemma's ``hidden_act="gelu"``, Qwen2-MoE's sliding layers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from memplan.errors import ConfigError
from memplan.specs.hf import spec_from_config
from memplan.specs.hf_families import _DEFAULTS, SUPPORTED_MODEL_TYPES
from memplan.specs.model import AttentionType, ModelSpec

pytestmark = pytest.mark.trace

CATALOG = Path(__file__).resolve().parent.parent / "src" / "memplan" / "catalog"
NOT_PASSED = ("model_type", "transformers_version", "quantization_config", "auto_map")


def _config_class(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


def _declared_default(cls: Any, key: str) -> Any:
    """The default a config class declares for ``key`` (through its attribute_map)."""
    if key == "rope_theta":
        # transformers 5 keeps theta in rope_parameters, defaulted from ``default_theta``
        # (Gemma 3: global and local layers; memplan's rope_theta is the global layers')
        theta = cls.default_theta
        return theta["global"] if isinstance(theta, dict) else theta
    fields = {field.name: field for field in dataclasses.fields(cls)}
    field = fields.get(key) or fields[getattr(cls, "attribute_map", {})[key]]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_parser_defaults_are_the_config_class_defaults(model_type: str) -> None:
    cls = _config_class(model_type)
    declared = {key: _declared_default(cls, key) for key in _DEFAULTS[model_type]}
    assert _DEFAULTS[model_type] == declared


def _filled(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as transformers reads it: every absent field at its default."""
    from transformers import AutoConfig

    from memplan.trace.meta import strict_values

    # the published values transformers 5.23's strict classes reject (Llama 4's
    # attn_temperature_tuning: 4) as its loading code passes them
    values = {k: v for k, v in strict_values(config).items() if k not in NOT_PASSED}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        hf = AutoConfig.for_model(config["model_type"], **values)
    # quantization_config is not a config-class field; the checkpoint's format stays with it
    kept = {k: config[k] for k in ("quantization_config",) if k in config}
    return {**hf.to_dict(), "model_type": config["model_type"], **kept}


def _catalog_config(file_name: str) -> dict[str, Any]:
    return json.loads((CATALOG / "models" / file_name).read_text())


CATALOG_FILES = sorted(
    e["file"] for e in json.loads((CATALOG / "models.json").read_text())["models"]
)


def _minimal(model_type: str) -> dict[str, Any]:
    """The first catalog config of ``model_type`` (or a multimodal config's ``text_config`` of
    that type: Llama 4's ``llama4_text``) without every field memplan can do without."""
    configs = [
        c.get("text_config", {}) if c["model_type"] != model_type else c
        for c in map(_catalog_config, CATALOG_FILES)
    ]
    config = next(c for c in configs if c.get("model_type") == model_type)
    for key in [k for k in config if k != "model_type"]:
        trial = {k: v for k, v in config.items() if k != key}
        try:
            spec_from_config(trial)
        except ConfigError:
            continue
        config = trial
    return config


def _semantics(spec: ModelSpec) -> dict[str, Any]:
    """The spec's fields, with layer types spelled out per layer where the config names none
    and no window makes the empty tuple ambiguous."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    for key in ("name", "source", "hf_config"):
        fields.pop(key)
    if not spec.layer_types and spec.sliding_window is None:
        fields["layer_types"] = (AttentionType.FULL,) * spec.n_layers
    return fields


GENERIC_SWITCHES = ("is_encoder_decoder", "is_decoder", "add_cross_attention", "use_cache")
"""Boolean fields every config has that do not shape a decoder-only model's tensors."""


def _switches(model_type: str) -> list[str]:
    """The boolean fields of the config class (each turned over in turn)."""
    return sorted(
        f.name
        for f in dataclasses.fields(_config_class(model_type))
        if isinstance(f.default, bool) and f.name not in GENERIC_SWITCHES
    )


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_absent_fields_parse_as_transformers_fills_them(model_type: str) -> None:
    minimal = _minimal(model_type)
    cases = {"as given": minimal}
    cls = _config_class(model_type)
    for switch in _switches(model_type):
        value = minimal.get(switch, _declared_default(cls, switch))
        cases[f"{switch}={not value}"] = {**minimal, switch: not value}
    differences = {}
    for label, config in cases.items():
        ours = _semantics(spec_from_config(config))
        theirs = _semantics(spec_from_config(_filled(config)))
        diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
        if diff:
            differences[label] = diff
    assert differences == {}


@pytest.mark.parametrize("file_name", CATALOG_FILES)
def test_catalog_configs_parse_as_transformers_reads_them(file_name: str) -> None:
    """Each bundled config.json, and the same config written out by transformers 5 (every
    field present, ``rope_parameters`` in place of ``rope_theta``), give one spec."""
    config = _catalog_config(file_name)
    ours = _semantics(spec_from_config(config))
    theirs = _semantics(spec_from_config(_filled(config)))
    assert {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]} == {}
