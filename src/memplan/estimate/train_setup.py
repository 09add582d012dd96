"""Setup validation for the training estimate: reject impossible setups before planning."""

from __future__ import annotations

from memplan.errors import SetupError
from memplan.formulas.training import param_tensors
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup


def validate_setup(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Reject impossible setups with one clear line (beyond TrainingSetup's own checks)."""
    if setup.seq > spec.max_position_embeddings and not setup.allow_long_seq:
        raise SetupError(
            f"sequence length {setup.seq} exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings}); pass --allow-long-seq to estimate anyway"
        )
    if setup.is_lora:
        widths = _lora_widths(spec, setup.lora_targets)
        if not widths:
            raise SetupError(
                f"none of the LoRA targets {', '.join(setup.lora_targets)} is a linear layer of "
                f"{spec.name}; modules: {', '.join(sorted(_linear_modules(spec)))}"
            )
        smallest = min(min(w) for w in widths.values())
        if setup.lora_rank > smallest:
            raise SetupError(
                f"LoRA rank {setup.lora_rank} is larger than the smallest targeted layer "
                f"dimension ({smallest}); choose a rank <= {smallest}"
            )
    if setup.freeze_layers > spec.n_layers:
        raise SetupError(
            f"--freeze-layers {setup.freeze_layers} exceeds the model's {spec.n_layers} layers"
        )


def _linear_modules(spec: ModelSpec) -> set[str]:
    return {t.module for t in param_tensors(spec) if t.role == "linear"}


def _lora_widths(spec: ModelSpec, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(out, in) of each targeted linear module name present in the model (decoder layers)."""
    out: dict[str, tuple[int, int]] = {}
    for t in param_tensors(spec):
        if t.role == "linear" and t.layer >= 0 and t.module in targets:
            out[t.module] = (t.shape[0], t.shape[1])
    return out
