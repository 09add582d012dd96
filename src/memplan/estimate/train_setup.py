"""Setup validation for the training estimate: reject impossible setups before planning."""

from __future__ import annotations

from memplan.errors import SetupError
from memplan.formulas.training import param_tensors
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = ["ALL_LINEAR", "ATTENTION", "lora_targets_for", "validate_setup"]


def validate_setup(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Reject impossible setups with one clear line (beyond TrainingSetup's own checks)."""
    if setup.seq > spec.max_position_embeddings and not setup.allow_long_seq:
        raise SetupError(
            f"sequence length {setup.seq} exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings}); pass --allow-long-seq to estimate anyway"
        )
    if setup.is_lora:
        lora_targets_for(spec, setup.lora_targets)
        widths = _lora_widths(spec, setup.lora_targets)
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


ALL_LINEAR = "all-linear"
"""peft's ``target_modules="all-linear"``: every linear layer but the output layer."""
ATTENTION = "attention"
"""memplan's default LoRA targets: the attention block's linear modules (q, k, v, o on Llama;
``c_attn`` on GPT-2, whose ``c_proj`` name the MLP shares)."""


def _linear_modules(spec: ModelSpec) -> list[str]:
    """The names of the decoder layers' linear modules, in the model's order."""
    names: dict[str, None] = {}
    for t in param_tensors(spec):
        if t.role == "linear" and t.layer >= 0:
            names.setdefault(t.module)
    return list(names)


def _attention_modules(spec: ModelSpec) -> tuple[str, ...]:
    inside: dict[str, None] = {}
    outside: set[str] = set()
    for t in param_tensors(spec):
        if t.role == "linear" and t.layer >= 0:
            if ".self_attn." in f".{t.name}":
                inside.setdefault(t.module)
            else:
                outside.add(t.module)
    return tuple(name for name in inside if name not in outside)


def lora_targets_for(spec: ModelSpec, targets: tuple[str, ...]) -> tuple[str, ...]:
    """``targets`` checked against the model's linear modules, ``all-linear`` expanded.

    An unknown name is an error that lists the model's module names (peft raises on a target
    that matches nothing; a misspelt one among valid ones would silently train less)."""
    modules = _linear_modules(spec)
    if ALL_LINEAR in targets:
        return tuple(modules)
    if ATTENTION in targets:
        return _attention_modules(spec)
    unknown = [t for t in targets if t not in modules]
    if unknown or not targets:
        plural = "s" if len(unknown) > 1 else ""
        raise SetupError(
            f"unknown LoRA target{plural} {', '.join(unknown) or '(none given)'} for "
            f"{spec.name}: its linear modules are {', '.join(modules)} (or all-linear, attention)"
        )
    return targets


def _lora_widths(spec: ModelSpec, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(out, in) of each targeted linear module name present in the model (decoder layers)."""
    out: dict[str, tuple[int, int]] = {}
    for t in param_tensors(spec):
        if t.role == "linear" and t.layer >= 0 and t.module in targets:
            out[t.module] = (t.shape[0], t.shape[1])
    return out
