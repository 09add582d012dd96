"""``TrainingSetup``: how one training (or fine-tuning) step is run, per GPU.

Shared by the analytic engine (``memplan.estimate.training``) and the trace engine
(``memplan.trace``), so that both answer the same question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from memplan.errors import SetupError
from memplan.units import MAX_COUNT

__all__ = [
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_SEQ",
    "PLAIN_DEFAULTS",
    "QLORA_RECIPE",
    "Attention",
    "Checkpointing",
    "Optimizer",
    "Precision",
    "SetupDefaults",
    "Target",
    "TrainingSetup",
]


DEFAULT_SEQ = 2048
"""Sequence length when none is given (the CLI caps it at the model's context)."""
DEFAULT_LORA_ALPHA = 16.0
"""peft ``LoraConfig``'s default ``lora_alpha`` (peft/tuners/lora/config.py: 8 before 0.14,
16 in the QLoRA recipe below); memory does not depend on it."""


@dataclass(frozen=True, slots=True)
class SetupDefaults:
    """The choices a command fills in where the user gave none."""

    precision: str
    optimizer: str
    checkpointing: str
    lora_rank: int
    lora_targets: str
    """Comma-separated module names, ``attention`` or ``all-linear``."""


PLAIN_DEFAULTS = SetupDefaults(
    precision="bf16-mixed",
    optimizer="adamw",
    checkpointing="none",
    lora_rank=0,
    lora_targets="attention",
)
"""What ``memplan train`` assumes without ``--qlora``: PyTorch AMP with AdamW, no recomputation,
full training (LoRA's default targets: the attention block's linear layers)."""

QLORA_RECIPE = SetupDefaults(
    precision="bf16",
    optimizer="paged-adamw-8bit",
    checkpointing="full",
    lora_rank=64,
    lora_targets="all-linear",
)
"""The standard QLoRA recipe, what ``--qlora`` alone means (each part can be overridden):
the base model loaded in bf16 (``torch_dtype=torch.bfloat16``) with its linear layers in NF4
and double quantization, bf16 compute (``bnb_4bit_compute_dtype``), LoRA r=64, alpha 16 on
every linear layer of the decoder, gradient checkpointing, and a paged 8-bit AdamW.

Sources: Dettmers et al. 2023, "QLoRA" (NF4, double quantization, paged optimizers; LoRA on
all linear transformer-block layers, which the paper finds necessary to match 16-bit
finetuning), the defaults of ``qlora.py`` in artidoro/qlora (``lora_r=64``, ``lora_alpha=16``,
``gradient_checkpointing=True``, ``bf16`` compute); the Hugging Face 4-bit/QLoRA blog notebook
(``optim="paged_adamw_8bit"``, ``bnb_4bit_compute_dtype=torch.bfloat16``). ``qlora.py``
itself defaults to ``paged_adamw_32bit``; ``--optimizer`` picks it."""


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"  # pure half: parameters, gradients, optimizer states in fp16
    BF16 = "bf16"  # pure bf16: parameters, gradients, optimizer states in bf16
    FP16_MIXED = "fp16-mixed"  # PyTorch AMP: fp32 parameters, fp16 autocast
    BF16_MIXED = "bf16-mixed"  # PyTorch AMP: fp32 parameters, bf16 autocast
    DEEPSPEED_BF16 = "deepspeed-bf16"  # half params+grads, fp32 master weights and states
    DEEPSPEED_FP16 = "deepspeed-fp16"


class Optimizer(StrEnum):
    ADAMW = "adamw"  # torch.optim.AdamW with its CUDA default (foreach)
    ADAMW_FOREACH = "adamw-foreach"
    ADAMW_FUSED = "adamw-fused"
    ADAMW_FORLOOP = "adamw-forloop"
    ADAM = "adam"
    SGD = "sgd"
    SGD_MOMENTUM = "sgd-momentum"
    ADAFACTOR = "adafactor"
    LION = "lion"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"


class Attention(StrEnum):
    EAGER = "eager"
    SDPA = "sdpa"  # PyTorch picks the kernel for the target GPU
    FLASH = "flash"
    MEM_EFFICIENT = "mem-efficient"
    CUDNN = "cudnn"


class Checkpointing(StrEnum):
    NONE = "none"
    FULL = "full"  # transformers gradient_checkpointing: keep each layer's input
    SELECTIVE = "selective"  # recompute the attention core only (Megatron)


class Target(StrEnum):
    CUDA = "cuda"  # what the CUDA kernels allocate and save (default)
    CPU = "cpu"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingSetup:
    """One training step on one GPU."""

    batch: int = 1
    """Micro-batch size per GPU."""
    seq: int = 2048
    """Sequence length in tokens."""
    precision: Precision = Precision.BF16_MIXED
    optimizer: Optimizer = Optimizer.ADAMW
    attention: Attention = Attention.SDPA
    checkpointing: Checkpointing = Checkpointing.NONE
    dropout: float | None = None
    """Override every dropout probability of the model; None keeps the config's."""
    fp32_grad_accumulation: bool = False
    """DeepSpeed regimes: keep gradients in fp32."""
    lora_rank: int = 0
    """0: full fine-tuning (or training)."""
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    qlora: bool = False
    """Frozen NF4 base with bf16 adapters (bitsandbytes)."""
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    """Freeze the first k decoder layers."""
    target: Target = Target.CUDA
    gpu: str | None = None
    """The GPU whose kernels the trace emulates (sdpa backend choice), e.g. "H100"."""
    allow_long_seq: bool = False
    """Allow a sequence longer than the model's max_position_embeddings."""

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or self.batch < 1:
            raise SetupError(f"batch must be a positive integer, got {self.batch!r}")
        if not isinstance(self.seq, int) or self.seq < 1:
            raise SetupError(f"sequence length must be a positive integer, got {self.seq!r}")
        for flag, value in (
            ("--batch", self.batch),
            ("--seq", self.seq),
            ("--lora-rank", self.lora_rank),
            ("--freeze-layers", self.freeze_layers),
        ):
            if value > MAX_COUNT:
                raise SetupError(
                    f"{flag} must be at most 2**40, got a {len(str(value))}-digit number"
                )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise SetupError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise SetupError(f"--lora-alpha must be a positive number, got {self.lora_alpha}")
        if self.lora_rank < 0:
            raise SetupError(f"LoRA rank must not be negative, got {self.lora_rank}")
        if self.freeze_layers < 0:
            raise SetupError(f"--freeze-layers must not be negative, got {self.freeze_layers}")
        if self.qlora and self.lora_rank == 0:
            raise SetupError("QLoRA needs adapters: give --lora-rank R (e.g. 16)")

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def is_lora(self) -> bool:
        return self.lora_rank > 0
