"""``InferenceSetup``: one generation request batch on one GPU (or a tensor-parallel group)."""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.units import MAX_COUNT

__all__ = ["InferenceSetup"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceSetup:
    batch: int = 1
    prompt_len: int = 512
    gen_len: int = 128
    weights: str = "bf16"
    """Weight dtype or quantization format: fp32, fp16, bf16, fp8, int8, int4, bnb-int8,
    bnb-nf4, gptq-int4, awq-int4 (``memplan.formulas.weights``)."""
    kv_dtype: str = "auto"
    """KV cache dtype: auto (= the activation dtype), fp16, bf16, fp8, fp32."""
    attention: str = "sdpa"
    cache: str = "dynamic"
    """transformers cache class: dynamic (DynamicCache) or static (StaticCache)."""
    logits: str = "last"
    """Prefill logits over ``all`` positions or the ``last`` only (generate does last)."""
    tp_degree: int = 1
    pp_degree: int = 1
    """Pipeline stages (each its own GPU); layers split as vLLM's ``get_pp_indices``."""
    pp_partition: tuple[int, ...] = ()
    """Decoder layers per stage (``--pp-partition``); empty: the default split."""
    target: str = "cuda"
    gpu: str | None = None
    """The GPU whose attention-kernel choice applies (``memplan.formulas.sdpa``), e.g. "H100";
    None: the default kernel GPU (H100)."""

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "tp_degree", "pp_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SetupError(
                    f"{name.replace('_', '-')} must be a positive integer, got {value!r}"
                )
        if not isinstance(self.gen_len, int) or self.gen_len < 0:
            raise SetupError(f"gen-len must be a non-negative integer, got {self.gen_len!r}")
        for name in ("batch", "prompt_len", "gen_len", "tp_degree", "pp_degree"):
            value = getattr(self, name)
            if value > MAX_COUNT:
                raise SetupError(
                    f"{name.replace('_', '-')} must be at most 2**40, got a "
                    f"{len(str(value))}-digit number"
                )
        if self.logits not in ("all", "last"):
            raise SetupError(f"logits must be 'all' or 'last', got {self.logits!r}")
        if self.cache not in ("dynamic", "static"):
            raise SetupError(f"cache must be 'dynamic' or 'static', got {self.cache!r}")

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.gen_len
