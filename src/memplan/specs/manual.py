"""Hyperparameters given by hand -> :class:`ModelSpec`, for a model that has no config.json.

Used by ``memplan params --manual --hidden ... --layers ...`` and by the Python API
(``memplan.params(hidden=4096, layers=32, ...)``). The module layout is Llama's
(``modeling_llama.py``) unless the flags say otherwise.
"""

from __future__ import annotations

from memplan.errors import ConfigError
from memplan.specs.model import MlpKind, ModelSpec, MoeSpec, NormKind, PositionKind

__all__ = ["manual_spec"]


def manual_spec(
    *,
    hidden: int,
    layers: int,
    heads: int,
    vocab: int,
    intermediate: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    mlp: str = "gated",
    norm: str = "rmsnorm",
    tie: bool = False,
    qkv_bias: bool = False,
    o_bias: bool = False,
    mlp_bias: bool = False,
    position: str = "rotary",
    max_positions: int = 2048,
    experts: int = 0,
    top_k: int = 2,
    expert_intermediate: int | None = None,
    shared_experts: int = 0,
    name: str = "manual",
) -> ModelSpec:
    """A spec from hyperparameters given by hand (``memplan params --manual``, the Python API).

    Defaults describe a Llama-style model: gated SiLU MLP, RMSNorm, rotary positions, no biases,
    untied lm_head. ``intermediate`` defaults to 4 x hidden for a plain MLP and is required for
    a gated one (its width is never a fixed multiple of hidden in real models).
    """
    for label, value in (
        ("hidden", hidden),
        ("layers", layers),
        ("heads", heads),
        ("vocab", vocab),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name}: --{label} must be a positive integer, got {value!r}")
    try:
        mlp_kind, norm_kind, pos = MlpKind(mlp), NormKind(norm), PositionKind(position)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    if intermediate is None:
        if mlp_kind is MlpKind.GATED:
            raise ConfigError(f"{name}: give --intermediate (the MLP width) for a gated MLP")
        intermediate = 4 * hidden
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"{name}: hidden size {hidden} is not divisible by {heads} heads; "
                "give --head-dim or fix the sizes"
            )
        head_dim = hidden // heads
    for label, count in (("experts", experts), ("shared-experts", shared_experts)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{name}: --{label} must be 0 or a positive integer, got {count!r}")
    moe = None
    if experts:
        width = expert_intermediate or intermediate
        try:
            moe = MoeSpec(
                n_experts=experts,
                top_k=top_k,
                expert_intermediate_size=width,
                n_shared_experts=shared_experts,
                shared_intermediate_size=shared_experts * width,
            )
        except ConfigError as exc:  # MoeSpec does not know the model's name
            raise ConfigError(f"{name}: {str(exc).removeprefix('MoE: ')}") from exc
    return ModelSpec(
        name=name,
        model_type="manual",
        vocab_size=vocab,
        hidden_size=hidden,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv_heads or heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        mlp_kind=mlp_kind,
        activation="silu" if mlp_kind is MlpKind.GATED else "gelu",
        norm_kind=norm_kind,
        norm_bias=norm_kind is NormKind.LAYERNORM,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=tie,
        position=pos,
        max_position_embeddings=max_positions,
        moe=moe,
        source="manual",
    )
