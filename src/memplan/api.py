"""The Python API: the same Report objects the CLI renders.

>>> import memplan
>>> report = memplan.params("meta-llama/Llama-2-7b-hf")
>>> report.scalars["total_params"]
6738415616
"""

from __future__ import annotations

from typing import Any

from memplan.errors import ConfigError
from memplan.report import Report
from memplan.specs.model import ModelSpec

__all__ = ["model_spec", "params"]


def model_spec(model: str | ModelSpec | dict[str, Any] | None = None, **hyper: Any) -> ModelSpec:
    """A ModelSpec from a name/path, a config.json dict, an existing spec, or keywords.

    Keywords (no ``model``) are those of :func:`memplan.specs.manual.manual_spec`:
    ``hidden``, ``layers``, ``heads``, ``vocab``, ``intermediate``, ``kv_heads``, ...
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        from memplan.specs.hf import spec_from_config

        return spec_from_config(model, source="config")
    if model is None:
        if not hyper:
            raise ConfigError("give a model name, path or config dict, or hyperparameters")
        from memplan.specs.manual import manual_spec

        return manual_spec(**hyper)
    from memplan.catalog import resolve

    return resolve(model)


def params(
    model: str | ModelSpec | dict[str, Any] | None = None,
    *,
    method: str = "exact",
    weights: str | None = None,
    **hyper: Any,
) -> Report:
    """Exact parameter counts and weight memory: what ``memplan params`` prints."""
    from memplan.estimate.params import params_report

    return params_report(model_spec(model, **hyper), method=method, weights=weights)
