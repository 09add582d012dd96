"""Counting parameters by building the transformers model on the meta device (torch only).

Used as the oracle of ``memplan.formulas.params`` in the tests, and by ``memplan params`` as
the fallback for a ``model_type`` that has no analytic parser (:func:`meta_params_report`,
called by the CLI: the analytic core never imports this). Meta tensors hold shapes but no
storage: a 405B model builds in about half a second and takes no memory.
"""

from __future__ import annotations

import re
from typing import Any

from memplan.errors import ConfigError, MissingExtraError, install_command
from memplan.report import Item, Report

__all__ = [
    "MULTIMODAL_TYPES",
    "as_loaded",
    "auto_model_class",
    "build_meta_model",
    "meta_param_breakdown",
    "meta_params_report",
    "strict_values",
]

_INDEX = re.compile(r"\.(\d+)(?=\.)")

MULTIMODAL_TYPES = frozenset({"gemma3", "llama4", "mistral3"})
"""Multimodal configs: memplan builds the class the checkpoint loads as
(``*ForConditionalGeneration``: vision tower, projector and text model)."""


def auto_model_class(model_type: str) -> Any:
    """``AutoModelForImageTextToText`` for a multimodal config (transformers maps ``mistral3``
    to no causal-LM class, and ``llama4`` to its text model alone), else
    ``AutoModelForCausalLM``."""
    import transformers

    if model_type in MULTIMODAL_TYPES:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def as_loaded(hf_config: Any) -> Any:
    """``hf_config`` as ``from_pretrained`` loads the checkpoint: a multimodal model ties its
    lm_head to the embeddings as its text config says (``Mistral3Config`` defaults the
    top-level flag to True, but Mistral-Small's checkpoint stores both tensors, and
    ``tie_weights`` then leaves them apart; see ``memplan.specs.hf_multimodal``)."""
    if getattr(hf_config, "model_type", None) in MULTIMODAL_TYPES:
        hf_config.tie_word_embeddings = bool(hf_config.get_text_config().tie_word_embeddings)
    return hf_config


def strict_values(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the published values that transformers 5.23's strict config classes
    reject, though its modeling code reads them as before: Llama 4's
    ``attn_temperature_tuning: 4`` (the class declares a bool; ``Llama4TextAttention`` only
    tests its truth) becomes True."""
    text = config.get("text_config")
    if config.get("model_type") in ("llama4", "llama4_text"):
        fixed = dict(config)
        if isinstance(text, dict):
            fixed["text_config"] = strict_values({**text, "model_type": "llama4_text"})
            if "model_type" not in text:
                fixed["text_config"].pop("model_type")
            return fixed
        value = config.get("attn_temperature_tuning")
        if isinstance(value, int) and not isinstance(value, bool):
            fixed["attn_temperature_tuning"] = bool(value)
        return fixed
    return config


def build_meta_model(config: dict[str, Any]) -> Any:
    """The model of ``config`` (a config.json dict) on the meta device: its causal LM, or for a
    multimodal config the ``*ForConditionalGeneration`` model (:func:`auto_model_class`)."""
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingExtraError(
            "counting on the meta device needs the trace extra: " + install_command("trace")
        ) from exc
    model_type = config.get("model_type")
    config = strict_values(config)
    try:
        hf_config = as_loaded(
            transformers.AutoConfig.for_model(
                str(model_type), **{k: v for k, v in config.items() if k != "model_type"}
            )
        )
        with torch.device("meta"):
            return auto_model_class(str(model_type)).from_config(hf_config, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"transformers cannot build model_type {model_type!r} from this config: {first}"
        ) from exc


def meta_param_breakdown(config: dict[str, Any], max_depth: int = 4) -> Item:
    """The parameters grouped by module path, layer indices folded (``model.layers.attn``)."""
    model = build_meta_model(config)
    root = Item("parameters", unit="params")
    nodes: dict[str, Item] = {}
    for name, param in model.named_parameters():
        parts = _INDEX.sub("", name).split(".")
        parent = root
        path = ""
        for depth, part in enumerate(parts[:max_depth]):
            path = f"{path}.{part}" if path else part
            is_last = depth == min(len(parts), max_depth) - 1
            node = nodes.get(path)
            if node is None:
                node = parent.add(Item(part, unit="params", source="meta-device build"))
                nodes[path] = node
            if is_last:
                if node.children:  # a deeper path already split this node
                    node.leaf("(own)", param.numel())
                else:
                    node.value += param.numel()
            parent = node
    return root


def meta_params_report(config: dict[str, Any], name: str) -> Report:
    """``memplan params`` for a ``model_type`` with no analytic parser: the counts of the
    model transformers builds on the meta device."""
    tree = meta_param_breakdown(config)
    total = int(tree.total)
    return Report(
        kind="params",
        model=name,
        breakdown=tree,
        setup={"model_type": str(config.get("model_type")), "source": "meta-device build"},
        scalars={"total_params": total, "trainable_params": total},
        notes=[
            f"model_type {config.get('model_type')!r} has no analytic parser: counted by "
            "building the model with transformers on the meta device (no weights, no memory)"
        ],
    )
