"""Frozen specifications: the model, and (in later modules) training, inference and hardware."""

from memplan.specs.model import (
    AttentionType,
    MlaSpec,
    MlpKind,
    ModelSpec,
    MoeSpec,
    NormKind,
    PositionKind,
    QkNorm,
)

__all__ = [
    "AttentionType",
    "MlaSpec",
    "MlpKind",
    "ModelSpec",
    "MoeSpec",
    "NormKind",
    "PositionKind",
    "QkNorm",
]
