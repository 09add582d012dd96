"""Textbook training-memory methods, labelled, to set beside memplan's exact accounting.

Each method is reproduced as its source states it (quirks included, and named), so a user can
see how far it lands from the exact number for their model, and why:

- ``korthikanti``: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", eq. 1 (seed 002): activations per layer ``s*b*h*(34 + 5*a*s/h)`` bytes
  (16-bit activations, dropout masks, no recomputation), plus seed 001's 16 bytes per
  parameter for weights, gradients and Adam states.
- ``fp32-adamw-count`` (was ``seed004``): the float32 AdamW formula of seed 004 (a CS336-style count): per block
  ``18*B*T*d + 8*d + 64*d^2 + 2*B*H*T^2`` floats, final norm ``B*T*d + 4*d``, output
  ``B*T*V + 4*V*d``, times 4 bytes. It assumes ``d_ff = 4*d`` and counts everything (weights,
  gradients, two Adam moments) in the same float32 units. GPT-2 XL:
  ``3.27463424e10 + 1.59410463e10 * batch`` bytes, batch 2 on an 80 GB device.
- ``per-node-saved`` (was ``seed003``): the per-op GPT-2 accounting of seed 003 (``calc_all``), which names each saved
  tensor by its autograd node. Reproduced with its quirks: the MLP weights' half copies are
  counted as ``S*D`` instead of ``4*D*D``, the lm_head output is kept in the compute dtype, and
  optimizer states are two fp32 copies. ``calc_all(B=24, S=1024, D=384, NH=4, V=8192,
  n_layers=4, amp=True, dropout=True)`` = 2,094,331,968 bytes.
- ``16-bytes-per-param`` (was ``16n``): seed 001's rule, 16 bytes per parameter (fp32 Adam states and master weights with
  half weights and gradients), plus its forward activation sum (mixed precision, 2 bytes per
  value, ``O(backward) = O(forward)`` not added).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.params import total_params
from memplan.report import Item, Report
from memplan.specs.model import ModelSpec
from memplan.specs.training import Precision, TrainingSetup

__all__ = [
    "METHODS",
    "METHOD_ALIASES",
    "MethodResult",
    "calc_all_seed003",
    "canonical_method",
    "korthikanti_activation_bytes_per_layer",
    "method_report",
    "method_result",
    "seed004_bytes",
    "seed004_max_batch",
]


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One method's total and its parts (bytes), with the reason it differs from exact."""

    method: str
    total_bytes: int
    parts: dict[str, int]
    source: str
    why: str


# Korthikanti et al. 2022 ------------------------------------------------------------------------
def korthikanti_activation_bytes_per_layer(s: int, b: int, h: int, a: int) -> int:
    """``s*b*h*(34 + 5*a*s/h)`` bytes: eq. 1 of Korthikanti et al. 2022 (seed 002)."""
    return 34 * s * b * h + 5 * a * s * s * b


def _korthikanti(spec: ModelSpec, setup: TrainingSetup) -> MethodResult:
    n = total_params(spec)
    per_layer = korthikanti_activation_bytes_per_layer(
        setup.seq, setup.batch, spec.hidden_size, spec.n_heads
    )
    parts = {"model_states_16n": 16 * n, "activations": spec.n_layers * per_layer}
    return MethodResult(
        "korthikanti",
        sum(parts.values()),
        parts,
        "Korthikanti et al. 2022, eq. 1 (seed 002) + seed 001's 16 bytes per parameter",
        "assumes GPT-3 layers (4h MLP, 16-bit activations, S x S softmax and dropout kept); "
        "flash attention keeps no S x S tensor, gated MLPs and GQA differ; no logits or loss",
    )


# Seed 004 ---------------------------------------------------------------------------------------
def seed004_floats(b: int, t: int, d: int, n_layers: int, n_heads: int, v: int) -> tuple[int, int]:
    """(constant, per-batch) float32 counts of seed 004's formula."""
    per_block_const = 8 * d + 64 * d * d
    per_block_batch = 18 * t * d + 2 * n_heads * t * t
    const = n_layers * per_block_const + 4 * d + 4 * v * d
    per_batch = n_layers * per_block_batch + t * d + t * v
    return const, per_batch


def seed004_bytes(spec: ModelSpec, batch: int, seq: int) -> int:
    """Seed 004's float32 AdamW total, in bytes: ``4 * (const + batch * per_batch)``."""
    const, per_batch = seed004_floats(
        batch, seq, spec.hidden_size, spec.n_layers, spec.n_heads, spec.vocab_size
    )
    return 4 * (const + batch * per_batch)


def seed004_max_batch(spec: ModelSpec, seq: int, memory_bytes: int) -> int:
    """The largest batch seed 004's formula fits into ``memory_bytes`` (its floor rule)."""
    const, per_batch = seed004_floats(
        1, seq, spec.hidden_size, spec.n_layers, spec.n_heads, spec.vocab_size
    )
    return max(0, (memory_bytes - 4 * const) // (4 * per_batch))


def _seed004(spec: ModelSpec, setup: TrainingSetup) -> MethodResult:
    const, per_batch = seed004_floats(
        setup.batch, setup.seq, spec.hidden_size, spec.n_layers, spec.n_heads, spec.vocab_size
    )
    parts = {"parameters_gradients_adam": 4 * const, "activations": 4 * setup.batch * per_batch}
    return MethodResult(
        "fp32-adamw-count",
        sum(parts.values()),
        parts,
        "seed 004: float32 AdamW memory of a pre-norm transformer",
        "counts one float per activation output (d_ff = 4d), keeps both the scores and softmax "
        "(B*H*T^2 twice) but no fp32 logits copy, log-softmax, gradients of activations or "
        "optimizer-step temporaries; parameters, gradients and 2 moments as 4 floats each",
    )


# Seed 003 ---------------------------------------------------------------------------------------
def _seed003_block(b: int, s: int, d: int, nh: int, amp: bool, dropout: bool) -> int:
    """``calc_saved_block_activations`` of seed 003 (bias=False), as printed there."""
    fp, mp, hp, i64 = 4, (2 if amp else 4), 2, 8
    ln = b * s * d * fp + 2 * b * s * fp
    c_attn = b * s * d * mp + (3 * d * d * hp if amp else 0)
    sdpa = 3 * b * s * d * mp + b * nh * s * fp + 2 * i64
    attn_proj = (d * d * hp if amp else 0) + b * s * d * mp
    drop = b * s * d if dropout else 0
    c_fc = (s * d * hp if amp else 0) + b * s * d * mp  # seed quirk: S*D, not 4*D*D
    gelu = 4 * b * s * d * mp
    mlp_proj = (s * d * hp if amp else 0) + 4 * b * s * d * mp  # same quirk
    return 2 * ln + c_attn + sdpa + attn_proj + drop + c_fc + gelu + mlp_proj + drop


def _seed003_params(s: int, d: int, v: int, n_layers: int) -> int:
    """``calc_params(..., includeBias=False, includeEmbeddings=True, weightTying=True)``."""
    per_layer = 12 * d * d + 2 * d
    return n_layers * per_layer + d + v * d + d * s


def calc_all_seed003(
    b: int, s: int, d: int, nh: int, v: int, n_layers: int = 1, *, amp: bool, dropout: bool
) -> dict[str, int]:
    """Seed 003's ``calc_all`` by part (bytes); the parts sum to its printed total."""
    fp, mp, hp, i64 = 4, (2 if amp else 4), 2, 8
    embeddings = b * s * i64 + s * i64 + (b * s * d if dropout else 0)
    blocks = n_layers * _seed003_block(b, s, d, nh, amp, dropout)
    ln_f = b * s * d * fp + 2 * b * s * fp
    lm_head = (v * d * hp if amp else 0) + b * s * d * mp
    params = _seed003_params(s, d, v, n_layers)
    return {
        "activations": embeddings + blocks + ln_f + lm_head,
        "inputs": 2 * b * s * i64,
        "lm_head_output": b * s * v * mp,
        "parameters": params * fp,
        "gradients": params * fp,
        "optimizer_states": 2 * params * fp,
    }


def _seed003(spec: ModelSpec, setup: TrainingSetup) -> MethodResult:
    amp = setup.precision is not Precision.FP32
    dropout = (setup.dropout if setup.dropout is not None else spec.hidden_dropout) > 0
    parts = calc_all_seed003(
        setup.batch, setup.seq, spec.hidden_size, spec.n_heads, spec.vocab_size,
        spec.n_layers, amp=amp, dropout=dropout,
    )  # fmt: skip
    return MethodResult(
        "per-node-saved",
        sum(parts.values()),
        parts,
        "seed 003: calc_all, per-op saved tensors of GPT-2 (bias=False)",
        "GPT-2 layout only (4d GELU MLP, LayerNorm, learned positions, tied head); counts the MLP "
        "weight copies as S*D; no allocator rounding, fp32 logits, loss gradients or step "
        "temporaries",
    )


# Seed 001 ---------------------------------------------------------------------------------------
def _sixteen_n(spec: ModelSpec, setup: TrainingSetup) -> MethodResult:
    n = total_params(spec)
    b, s, d, v = setup.batch, setup.seq, spec.hidden_size, spec.vocab_size
    nh, dh, f = spec.n_heads, spec.head_dim, spec.intermediate_size
    per_layer = b * s * (4 * nh * dh + nh * s + 2 * d + 2 * f) + spec.n_layer_norms * b * s * d
    forward = 2 * (b * s * d + spec.n_layers * per_layer + b * s * v)
    parts = {"model_states_16n": 16 * n, "activations_forward": forward}
    return MethodResult(
        "16-bytes-per-param",
        sum(parts.values()),
        parts,
        "seed 001: 16 bytes per parameter (mixed precision Adam) + its forward activations",
        "one 16-bit value per op output; no fp32 norms, logits upcast, loss, masks, allocator "
        "rounding or step temporaries; the same 16 bytes for every precision",
    )


METHODS = {
    "korthikanti": _korthikanti,
    "fp32-adamw-count": _seed004,
    "per-node-saved": _seed003,
    "16-bytes-per-param": _sixteen_n,
}
"""Textbook methods by name (``--method``), named after what they do; ``exact`` is memplan's
own."""

METHOD_ALIASES = {
    "seed004": "fp32-adamw-count",
    "seed003": "per-node-saved",
    "16n": "16-bytes-per-param",
}
"""The names the methods had before (after the seed documents they come from)."""


def canonical_method(method: str) -> str:
    """``seed004`` -> ``fp32-adamw-count``; ``exact`` and current names unchanged."""
    key = method.strip().lower()
    key = METHOD_ALIASES.get(key, key)
    if key != "exact" and key not in METHODS:
        known = ", ".join(["exact", *METHODS])
        raise SetupError(f"unknown method {method!r}: choose one of {known}")
    return key


def method_result(spec: ModelSpec, setup: TrainingSetup, method: str) -> MethodResult:
    """The result of textbook ``method`` (a name or an old alias) for ``spec`` under ``setup``."""
    key = canonical_method(method)
    if key == "exact":
        raise SetupError("exact is memplan's own accounting, not a textbook method")
    return METHODS[key](spec, setup)


def method_report(spec: ModelSpec, setup: TrainingSetup, method: str) -> Report:
    """A :class:`Report` of textbook ``method`` (labelled as such; no phases)."""
    method = canonical_method(method)
    result = method_result(spec, setup, method)
    root = Item("peak", note=f"textbook method: {method}")
    for key, value in result.parts.items():
        root.leaf(key, value, source=result.source)
    return Report(
        kind="training",
        model=spec.name,
        breakdown=root,
        setup={"batch": setup.batch, "seq": setup.seq, "method": method},
        scalars={"peak_bytes": result.total_bytes, "method": method},
        notes=[f"{method}: {result.source}", f"differs from exact: {result.why}"],
    )
