"""The Python API: the same Report objects the CLI renders.

>>> import memplan
>>> report = memplan.params("meta-llama/Llama-2-7b-hf")
>>> report.scalars["total_params"]
6738415616

``train`` and ``infer`` give what ``memplan train`` and ``memplan infer`` print, the fit verdict
included when a GPU is named (:mod:`memplan.estimate.fit`: ``usable_bytes``,
``headroom_bytes``, ``fits``, ``limit``, the CUDA context and cuBLAS workspace lines).
"""

from __future__ import annotations

from typing import Any

from memplan.errors import ConfigError
from memplan.report import Report
from memplan.specs.hardware import Gpu
from memplan.specs.inference import InferenceSetup
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = ["infer", "model_spec", "params", "train"]


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


def _gpu(gpu: str | Gpu | None) -> Gpu | None:
    if isinstance(gpu, str):
        from memplan.catalog.gpus import resolve_gpu

        return resolve_gpu(gpu)
    return gpu


def train(
    model: str | ModelSpec | dict[str, Any],
    setup: TrainingSetup | None = None,
    *,
    gpu: str | Gpu | None = None,
    cuda_context_bytes: int | None = None,
    method: str = "exact",
) -> Report:
    """One training step's memory: what ``memplan train`` prints (with ``gpu``: the verdict,
    the largest batch and the longest sequence)."""
    from memplan.estimate.training import estimate_training

    return estimate_training(
        model_spec(model),
        setup or TrainingSetup(),
        method=method,
        gpu=_gpu(gpu),
        cuda_context_bytes=cuda_context_bytes,
    )


def infer(
    model: str | ModelSpec | dict[str, Any],
    setup: InferenceSetup | None = None,
    *,
    gpu: str | Gpu | None = None,
    cuda_context_bytes: int | None = None,
) -> Report:
    """Memory (and, with a GPU that has figures, latency) of ``generate``: what
    ``memplan infer`` prints (with ``gpu``: the verdict and the largest batch)."""
    from memplan.estimate.inference import inference_report

    return inference_report(
        model_spec(model),
        setup or InferenceSetup(),
        _gpu(gpu),
        cuda_context_bytes=cuda_context_bytes,
    )
