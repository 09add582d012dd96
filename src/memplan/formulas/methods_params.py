"""Textbook parameter-count formulas from the seed documents, beside the exact count.

``memplan params MODEL --method NAME`` shows one of these next to the exact count and says
why they differ. Each formula is written as its seed states it; only the symbols are mapped to
the spec (E = hidden size, N = layers, V = vocabulary). Names say what each assumes (the old
names, after the seeds, still work): ``dense-ffn-4e`` (seed000: Llama layout, d_ff = 4E,
full K/V, untied), ``dense-ffn-8/3e`` (seed000-swiglu: d_ff = 8/3 E), ``matrices-only``
(seed001: no norms or biases), ``nominal-size`` (seed002: the size in the name),
``gpt2-formula`` (seed003: GPT-2's calc_params).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.specs.model import MlpKind, ModelSpec, PositionKind

__all__ = [
    "METHODS",
    "METHOD_ALIASES",
    "MethodResult",
    "method_params",
    "seed000_params",
    "seed000_swiglu_params",
    "seed001_params",
    "seed002_nominal_params",
    "seed003_calc_params",
]


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A formula's count for a model, and why it is not the exact count."""

    method: str
    total: int
    formula: str
    source: str
    why: str


def seed000_params(vocab: int, hidden: int, n_layers: int, ffn_mult: float = 4.0) -> int:
    """Seed 000: ``VE + N(4E^2 + E + 12E^2 + E) + E + VE`` with d_ff = 4E (3 MLP matrices).

    ``ffn_mult`` replaces the 4 in d_ff = 4E (the seed also tries 8/3: 12E^2 -> 3 x 8/3 E^2).
    """
    v, e, n = vocab, hidden, n_layers
    attention = 4 * e * e
    mlp = round(3 * ffn_mult * e * e)
    return v * e + n * (attention + e + mlp + e) + e + v * e


def seed000_swiglu_params(vocab: int, hidden: int, n_layers: int) -> int:
    """Seed 000's second figure: the same closed form with d_ff = 8/3 E."""
    return seed000_params(vocab, hidden, n_layers, ffn_mult=8 / 3)


def seed001_params(
    n_vocab: int, d_model: int, n_blocks: int, q_dim: int, d_ffn: int, n_mlp_mats: int
) -> int:
    """Seed 001: ``n_vocab d + n_blocks (4 d (d_head n_head) + k d d_ffn) + d n_vocab``.

    The seed writes k = 2 (a 2-matrix MLP) but its Llama-2-7B figure, 6,738,149,376, needs
    k = 3 (Llama's gate, up and down); ``n_mlp_mats`` is the model's real matrix count.
    """
    per_block = 4 * d_model * q_dim + n_mlp_mats * d_model * d_ffn
    return n_vocab * d_model + n_blocks * per_block + d_model * n_vocab


def seed003_calc_params(
    sequence_length: int,
    hidden: int,
    vocab: int,
    n_layers: int = 1,
    include_bias: bool = False,
    include_embeddings: bool = False,
    weight_tying: bool = True,
) -> int:
    """Seed 003's ``calc_params`` for a GPT-2 style model (2 LayerNorms, 4E MLP, Conv1D biases).

    Per layer 2E (norm weights) + 4E^2 (attention) + 8E^2 (MLP); 11E biases per layer and E for
    the final norm when ``include_bias``; the output matrix VE is always counted; learned
    positions (S x E) and, without tying, the input embedding VE when ``include_embeddings``.
    """
    e = hidden
    per_layer = e + 3 * e * e + e * e + e + 4 * e * e + 4 * e * e
    total = per_layer * n_layers + e + vocab * e
    if include_bias:
        total += 11 * n_layers * e + e
    if include_embeddings:
        total += e * sequence_length
        if not weight_tying:
            total += vocab * e
    return total


_NOMINAL = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z0-9])", re.IGNORECASE)


def seed002_nominal_params(name: str) -> int | None:
    """Seed 002's count: the nominal size in the model's name ("Llama 3 70B" -> 70e9)."""
    matches = _NOMINAL.findall(name.rsplit("/", 1)[-1])
    if not matches:
        return None
    value, unit = matches[0]  # the total, not an "A3B" active size
    return round(float(value) * (1e9 if unit.lower() == "b" else 1e6))


# Methods applied to a spec -------------------------------------------------------------------
def _seed000(spec: ModelSpec) -> MethodResult:
    total = seed000_params(spec.vocab_size, spec.hidden_size, spec.n_layers)
    return MethodResult(
        "dense-ffn-4e",
        total,
        "VE + N(4E^2 + E + 12E^2 + E) + E + VE",
        "seed 000 (llama2 parameter analysis), d_ff = 4E",
        "assumes d_ff = 4E with three MLP matrices (12E^2) and full multi-head K/V; "
        f"this model's MLP width is {spec.intermediate_size:,} and it has "
        f"{spec.n_kv_heads} KV heads of {spec.head_dim}; it counts the lm_head even when tied",
    )


def _seed000_swiglu(spec: ModelSpec) -> MethodResult:
    total = seed000_swiglu_params(spec.vocab_size, spec.hidden_size, spec.n_layers)
    return MethodResult(
        "dense-ffn-8/3e",
        total,
        "VE + N(4E^2 + E + 3 x 8/3 E^2 + E) + E + VE",
        "seed 000, 'if let 4 = 8/3'",
        "takes d_ff = 8/3 E exactly, while real models round it up (Llama-2-7B: 11,008, not "
        "10,922.67); otherwise as seed000",
    )


def _seed001(spec: ModelSpec) -> MethodResult:
    mats = 3 if spec.mlp_kind is MlpKind.GATED else 2
    total = seed001_params(
        spec.vocab_size, spec.hidden_size, spec.n_layers, spec.q_dim, spec.intermediate_size, mats
    )
    return MethodResult(
        "matrices-only",
        total,
        f"V d + N (4 d (d_head n_head) + {mats} d d_ffn) + d V",
        "seed 001 (basic model parameters)",
        "leaves out every norm and bias, and counts K and V at full width (no GQA/MQA) and "
        "the lm_head even when tied; its MLP term uses the model's real matrix count",
    )


def _seed003(spec: ModelSpec) -> MethodResult:
    learned = spec.position is PositionKind.LEARNED
    total = seed003_calc_params(
        spec.max_position_embeddings if learned else 0,
        spec.hidden_size,
        spec.vocab_size,
        spec.n_layers,
        include_bias=spec.qkv_bias,
        include_embeddings=True,
        weight_tying=spec.tie_word_embeddings,
    )
    return MethodResult(
        "gpt2-formula",
        total,
        "N(2E + 12E^2 [+ 11E]) + E [+ E] + VE + SE [+ VE untied]",
        "seed 003 (calc_params)",
        "a GPT-2 formula: 2 LayerNorm weights, a 4E two-matrix MLP, full multi-head attention;"
        " exact for GPT-2 itself, off for gated MLPs, GQA and RMSNorm models",
    )


def _seed002(spec: ModelSpec) -> MethodResult:
    nominal = seed002_nominal_params(spec.name)
    if nominal is None:
        raise SetupError(
            f"nominal-size takes the size from the model name, and {spec.name!r} has none"
        )
    bf16_gib = nominal * 2 / 2**30
    return MethodResult(
        "nominal-size",
        nominal,
        "nominal size from the name x 2 B (bf16)",
        "seed 002 (memory for model parameters loading)",
        f"takes the round number in the name: {nominal:,} params, {bf16_gib:.1f} GiB in bf16; "
        "the real model has the exact count shown",
    )


METHODS: dict[str, Callable[[ModelSpec], MethodResult]] = {
    "dense-ffn-4e": _seed000,
    "dense-ffn-8/3e": _seed000_swiglu,
    "matrices-only": _seed001,
    "nominal-size": _seed002,
    "gpt2-formula": _seed003,
}
"""Textbook counts by name (``--method``), named after what they assume."""

METHOD_ALIASES = {
    "seed000": "dense-ffn-4e",
    "seed000-swiglu": "dense-ffn-8/3e",
    "seed001": "matrices-only",
    "seed002": "nominal-size",
    "seed003": "gpt2-formula",
}
"""The names the methods had before (after the seed documents they come from)."""


def method_params(spec: ModelSpec, method: str) -> MethodResult:
    """The named textbook formula (a name or an old alias) applied to ``spec``."""
    key = method.strip().lower()
    func = METHODS.get(METHOD_ALIASES.get(key, key))
    if func is None:
        raise SetupError(f"unknown method {method!r}; choose one of: exact, {', '.join(METHODS)}")
    return func(spec)
