"""Weight memory per format: exact bytes of the quantized layouts, and what stays 16-bit."""

from __future__ import annotations

import pytest

from memplan.catalog import resolve
from memplan.errors import SetupError
from memplan.formulas.weights import (
    QUANT_FORMATS,
    Linear,
    linear_layers,
    normalize_format,
    weights_bytes,
    weights_total_bytes,
)

SQUARE = Linear("q_proj", 4096, 4096, 1)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        # int8 weight + fp32 SCB per output row
        ("bnb-int8", 4096 * 4096 + 4 * 4096),
        # packed nibbles + nf4 code + uint8 absmax/64 + offset + fp32 absmax/256 + 256-entry code
        ("bnb-nf4", 4096 * 4096 // 2 + 64 + 4096 * 4096 // 64 + 4 + 4 * 1024 + 1024),
        ("bnb-nf4-nodq", 4096 * 4096 // 2 + 64 + 4 * (4096 * 4096 // 64)),
        # qweight + qzeros (32 groups x 512 int32) + fp16 scales (32 x 4096) + g_idx
        ("gptq-int4", 4096 * 4096 // 2 + 4 * 32 * 512 + 2 * 32 * 4096 + 4 * 4096),
        ("awq-int4", 4096 * 4096 // 2 + 4 * 32 * 512 + 2 * 32 * 4096),
    ],
)
def test_quantized_linear_bytes(fmt: str, expected: int) -> None:
    per_linear, _ = QUANT_FORMATS[fmt]
    assert sum(size for _, size in per_linear(SQUARE)) == expected


def test_llama2_7b_nf4_keeps_embeddings_lm_head_norms_in_16bit() -> None:
    spec = resolve("llama-2-7b")
    tree = weights_bytes(spec, "nf4")
    unquantized = 2 * 32000 * 4096 + 65 * 4096  # embeddings, lm_head, 65 RMSNorms
    assert tree.child("unquantized_16bit").total == 2 * unquantized
    quantized_params = sum(lin.count * lin.n_in * lin.n_out for lin in linear_layers(spec))
    assert quantized_params + unquantized == 6_738_415_616


def test_plain_dtypes() -> None:
    spec = resolve("llama-2-7b")
    assert weights_total_bytes(spec, "fp32") == 4 * 6_738_415_616
    assert weights_total_bytes(spec, "bfloat16") == 2 * 6_738_415_616
    assert weights_total_bytes(spec, "int4") == 6_738_415_616 // 2


def test_moe_experts_are_quantized_routers_are_not() -> None:
    spec = resolve("mixtral-8x7b")
    keys = {lin.key: lin for lin in linear_layers(spec)}
    assert keys["experts.gate_proj"].count == 32 * 8
    assert "router" not in keys


def test_unknown_format() -> None:
    with pytest.raises(SetupError, match="unknown weight format"):
        normalize_format("int3")
