"""The analytic training engine against the trace engine, line by line, on size-reduced configs.

Each case traces two real training iterations of a tiny transformers model under fake tensors
(the oracle) and compares the analytic report: the steady-state peak, every category at the
peak, the activations by section, every phase and the first step's peak. They agree to the
byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.estimate.training import estimate_training
from memplan.specs.hf import spec_from_config
from memplan.specs.training import Attention, Checkpointing, Optimizer, Precision, TrainingSetup

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.trace

_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2)
TINY = {
    "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                  max_position_embeddings=512, tie_word_embeddings=False, **_COMMON),
    "llama-gqa": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False, **_COMMON),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=4,
                  max_position_embeddings=512, tie_word_embeddings=False,
                  use_sliding_window=False, **_COMMON),
    "gemma2": dict(model_type="gemma2", num_attention_heads=4, num_key_value_heads=4,
                   head_dim=16, max_position_embeddings=512, sliding_window=4096, **_COMMON),
    "phi3": dict(model_type="phi3", num_attention_heads=4, num_key_value_heads=4,
                 max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0,
                 **_COMMON),
    # small vocabulary, wide layers: the peak moves into the layers' backward
    "llama-wide": dict(model_type="llama", vocab_size=64, hidden_size=128,
                       intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=1024,
                       tie_word_embeddings=False),
    "mixtral": dict(model_type="mixtral", vocab_size=512, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512),
    "mixtral-wide": dict(model_type="mixtral", vocab_size=64, hidden_size=128,
                         intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=1024),
    "deepseek_v2": dict(model_type="deepseek_v2", vocab_size=512, hidden_size=64,
                        intermediate_size=160, moe_intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
                        qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=512),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4,
                 n_positions=512, bos_token_id=0, eos_token_id=0),
    # per-head QK-norm (RMSNorm(head_dim) on q and k before rotary)
    "qwen3": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=512, **_COMMON),
    "qwen3-mha": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=4,
                      head_dim=32, max_position_embeddings=512, **_COMMON),
    # a sliding window shorter than the traced sequences: transformers builds a real mask
    "mistral-swa": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, sliding_window=32,
                        tie_word_embeddings=False, **_COMMON),
    "gemma3-swa": dict(model_type="gemma3_text", num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, max_position_embeddings=512, sliding_window=32,
                       layer_types=["sliding_attention", "full_attention"], **_COMMON),
    # one KV head: repeat_kv is a view, the kernel keeps the one-head K/V; per-head QK-norm
    # weights of head_dim 64 (their (1 + weight) is 256 B, not heads x 256 B)
    "gemma3-mqa": dict(model_type="gemma3_text", vocab_size=512, hidden_size=256,
                       intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                       sliding_window=32, layer_types=["sliding_attention", "full_attention"]),
}  # fmt: skip


def _setup(**kw: object) -> TrainingSetup:
    return TrainingSetup(**kw)  # type: ignore[arg-type]


# (family, setup): every axis is covered (families, precisions, attention, batch 1 and 2, two
# sequence lengths, optimizers), without the full cross product.
CASES = [
    ("llama", _setup(batch=2, seq=64)),
    ("llama", _setup(batch=1, seq=40, precision=Precision.BF16)),
    ("llama", _setup(batch=2, seq=48, precision=Precision.FP32)),
    ("llama", _setup(batch=2, seq=64, attention=Attention.EAGER)),
    ("llama", _setup(batch=1, seq=64, optimizer=Optimizer.SGD_MOMENTUM)),
    ("llama", _setup(batch=2, seq=32, optimizer=Optimizer.ADAMW_FUSED)),
    ("llama", _setup(batch=2, seq=32, precision=Precision.FP16_MIXED)),
    ("qwen2", _setup(batch=2, seq=64, precision=Precision.BF16)),
    ("qwen2", _setup(batch=1, seq=100)),
    ("gemma2", _setup(batch=2, seq=48, attention=Attention.EAGER)),
    ("gemma2", _setup(batch=1, seq=64, attention=Attention.EAGER, precision=Precision.BF16)),
    ("phi3", _setup(batch=2, seq=64)),
    ("phi3", _setup(batch=1, seq=48, precision=Precision.FP32, attention=Attention.EAGER)),
    ("gpt2", _setup(batch=2, seq=64)),
    ("gpt2", _setup(batch=1, seq=64, precision=Precision.FP32)),
    ("gpt2", _setup(batch=2, seq=48, precision=Precision.BF16, attention=Attention.EAGER)),
    ("llama-gqa", _setup(batch=2, seq=64)),
    ("mixtral", _setup(batch=2, seq=64)),
    ("mixtral", _setup(batch=2, seq=64, precision=Precision.FP32)),
    ("mixtral", _setup(batch=2, seq=48, precision=Precision.BF16)),
    ("llama-wide", _setup(batch=4, seq=256, precision=Precision.BF16)),
    ("llama-wide", _setup(batch=2, seq=256)),
    ("llama-wide", _setup(batch=2, seq=128, precision=Precision.FP32)),
    ("llama-wide", _setup(batch=2, seq=256, checkpointing=Checkpointing.FULL)),
    (
        "llama-wide",
        _setup(batch=2, seq=256, precision=Precision.BF16, checkpointing=Checkpointing.FULL),
    ),
    (
        "llama-gqa",
        _setup(batch=1, seq=64, precision=Precision.BF16, checkpointing=Checkpointing.FULL),
    ),
    ("llama", _setup(batch=2, seq=64, freeze_layers=1)),
    ("llama", _setup(batch=2, seq=64, freeze_layers=1, freeze_embeddings=True)),
    ("llama-gqa", _setup(batch=1, seq=48, precision=Precision.BF16, attention=Attention.EAGER)),
]


def _lines(report: object) -> dict[str, int]:
    """peak, categories, activation sections, phases and the first-step peak, as a flat dict."""
    out = {"peak": int(report.scalars["peak_bytes"])}  # type: ignore[attr-defined]
    for child in report.breakdown.children:  # type: ignore[attr-defined]
        out[f"peak/{child.key}"] = int(child.total)
        if child.key == "activations":
            for section in child.children:
                out[f"peak/activations/{section.key}"] = int(section.total)
    for phase in report.phases:  # type: ignore[attr-defined]
        if "/" not in phase.name:
            out[f"phase/{phase.name}"] = phase.bytes
    out["first_step_peak"] = int(report.scalars["first_step_peak_bytes"])  # type: ignore[attr-defined]
    return out


def _trace(config: dict[str, object], setup: TrainingSetup) -> object:
    from memplan.trace.training import trace_training

    return trace_training(dict(config), setup)


def _id(case: tuple[str, TrainingSetup]) -> str:
    family, s = case
    extra = f"-ckpt-{s.checkpointing.value}" if s.checkpointing is not Checkpointing.NONE else ""
    extra += f"-freeze{s.freeze_layers}" if s.freeze_layers else ""
    extra += "-frozen-emb" if s.freeze_embeddings else ""
    extra += f"-{s.gpu}" if s.gpu else ""
    return (
        f"{family}-b{s.batch}-s{s.seq}-{s.precision.value}-{s.attention.value}-"
        f"{s.optimizer.value}{extra}"
    )


@pytest.mark.parametrize(("family", "setup"), CASES, ids=[_id(c) for c in CASES])
def test_every_line_equals_the_trace(family: str, setup: TrainingSetup) -> None:
    config = TINY[family]
    spec = spec_from_config(dict(config), name=family)
    analytic = _lines(estimate_training(spec, setup))
    trace = _lines(_trace(config, setup))
    assert analytic == trace


QK_NORM_CASES = [
    ("qwen3", _setup(batch=2, seq=64, precision=Precision.BF16)),
    ("qwen3", _setup(batch=1, seq=48, precision=Precision.BF16_MIXED)),
    ("qwen3", _setup(batch=2, seq=64, checkpointing=Checkpointing.FULL)),
    ("qwen3", _setup(batch=2, seq=64, precision=Precision.BF16, lora_rank=4)),
    ("qwen3", _setup(batch=2, seq=64, precision=Precision.FP32)),  # grouped heads: math
    ("qwen3-mha", _setup(batch=2, seq=64, precision=Precision.FP32)),
]


@pytest.mark.parametrize(("family", "setup"), QK_NORM_CASES, ids=[_id(c) for c in QK_NORM_CASES])
def test_qk_norm_every_line_equals_the_trace(family: str, setup: TrainingSetup) -> None:
    config = TINY[family]
    spec = spec_from_config(dict(config), name=family)
    assert _lines(estimate_training(spec, setup)) == _lines(_trace(config, setup))


# The kernel the GPU's choice produces for grouped KV heads (formulas/sdpa.py), each held
# exact: no mask -> enable_gqa (cuDNN on H100, flash on A100, math for fp32 or before sm80);
# a sliding-window mask (seq >= window) -> repeat_kv and mem-efficient or cuDNN, with the mask
# saved; Gemma 3 masks its sliding layers only.
KERNEL_CASES = [
    ("llama-gqa", _setup(batch=2, seq=64, precision=Precision.FP32)),  # math
    ("llama-gqa", _setup(batch=2, seq=48, precision=Precision.FP16_MIXED, gpu="V100")),  # math
    ("llama-gqa", _setup(batch=2, seq=64, precision=Precision.BF16, gpu="A100")),  # flash
    ("llama-gqa", _setup(batch=2, seq=64, precision=Precision.BF16)),  # cudnn
    ("mistral-swa", _setup(batch=2, seq=64, precision=Precision.FP32)),  # mem-efficient, mask
    ("mistral-swa", _setup(batch=2, seq=60, gpu="A100")),  # mem-efficient, padded mask
    ("mistral-swa", _setup(batch=2, seq=64)),  # cudnn, mask
    ("mistral-swa", _setup(batch=2, seq=24, precision=Precision.FP32)),  # seq < window: math
    ("gemma3-swa", _setup(batch=2, seq=64, precision=Precision.BF16)),
    ("gemma3-mqa", _setup(batch=2, seq=64, precision=Precision.BF16)),
    # math with dropout: CUDA's fused dropout keeps a bool mask beside the fp32 probabilities
    ("gpt2", _setup(batch=2, seq=64, precision=Precision.BF16, dropout=0.125, gpu="V100")),
]


@pytest.mark.parametrize(("family", "setup"), KERNEL_CASES, ids=[_id(c) for c in KERNEL_CASES])
def test_kernel_choice_every_line_equals_the_trace(family: str, setup: TrainingSetup) -> None:
    config = TINY[family]
    spec = spec_from_config(dict(config), name=family)
    assert _lines(estimate_training(spec, setup)) == _lines(_trace(config, setup))


LORA_CASES = [
    ("llama", _setup(batch=2, seq=64, lora_rank=8)),
    ("llama", _setup(batch=1, seq=64, lora_rank=8, precision=Precision.BF16)),
    ("llama", _setup(batch=2, seq=48, lora_rank=4, precision=Precision.FP32)),
    ("llama", _setup(batch=2, seq=64, lora_rank=8, checkpointing=Checkpointing.FULL)),
    ("mixtral", _setup(batch=2, seq=64, lora_rank=4)),
    ("mixtral", _setup(batch=2, seq=64, lora_rank=4, precision=Precision.BF16)),
]


@pytest.mark.parametrize(
    ("family", "setup"), LORA_CASES, ids=[f"lora-{_id(c)}" for c in LORA_CASES]
)
def test_lora_every_line_equals_the_trace(family: str, setup: TrainingSetup) -> None:
    config = TINY[family]
    spec = spec_from_config(dict(config), name=family)
    assert _lines(estimate_training(spec, setup)) == _lines(_trace(config, setup))


# Within 2 KiB: with transformers' Adafactor the trace also records two 8-byte tensors that live
# through every phase, whose origin is not pinned down yet. A relative bound would hide
# regressions, so the bound is absolute and small.
NEAR_CASES = [
    ("llama-gqa", _setup(batch=2, seq=64, optimizer=Optimizer.ADAFACTOR)),
    ("llama", _setup(batch=1, seq=48, optimizer=Optimizer.ADAFACTOR, precision=Precision.BF16)),
]


@pytest.mark.parametrize(("family", "setup"), NEAR_CASES, ids=[_id(c) for c in NEAR_CASES])
def test_adafactor_within_two_kib(family: str, setup: TrainingSetup) -> None:
    config = TINY[family]
    spec = spec_from_config(dict(config), name=family)
    analytic = _lines(estimate_training(spec, setup))
    trace = _lines(_trace(config, setup))
    assert analytic.keys() == trace.keys()
    for key in trace:
        assert abs(analytic[key] - trace[key]) <= 2048, (key, analytic[key], trace[key])


def test_deepseek_mla_within_one_percent() -> None:
    """DeepSeek-V2 (MLA + shared and routed experts): peak and phases within 1 %, saved
    activations within 2 %: a few tensors of the MLA rotary path (its q_pe/k_pe reshapes and
    concatenations) are not modelled one by one yet."""
    config = TINY["deepseek_v2"]
    spec = spec_from_config(dict(config), name="deepseek_v2")
    for setup in (_setup(batch=2, seq=64), _setup(batch=2, seq=64, precision=Precision.FP32)):
        analytic = _lines(estimate_training(spec, setup))
        trace = _lines(_trace(config, setup))
        for key in ("peak", "phase/end_of_forward", "phase/peak_backward"):
            assert abs(analytic[key] - trace[key]) <= 0.01 * trace[key], key
        assert (
            abs(analytic["peak/activations"] - trace["peak/activations"])
            <= 0.02 * trace["peak/activations"]
        )
        for key in ("phase/after_load", "phase/after_backward", "phase/optimizer_step"):
            assert analytic[key] == trace[key], key


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP32])
def test_moe_backward_peak_within_a_tenth_of_a_percent(precision: Precision) -> None:
    """Small vocabulary, wide experts: the peak is the last MoE block's backward. Within 0.1 %
    (8 KiB here): which routing tensors are already released at that instant is not modelled
    one by one."""
    config = TINY["mixtral-wide"]
    spec = spec_from_config(dict(config), name="mixtral-wide")
    setup = _setup(batch=2, seq=128, precision=precision, optimizer=Optimizer.ADAMW_FUSED)
    analytic = _lines(estimate_training(spec, setup))
    trace = _lines(_trace(config, setup))
    assert trace["peak"] == trace["phase/peak_backward"]
    for key in ("peak", "phase/peak_backward", "phase/end_of_forward"):
        assert abs(analytic[key] - trace[key]) <= 0.001 * trace[key], key
    assert analytic["phase/after_backward"] == trace["phase/after_backward"]


@pytest.mark.xfail(
    strict=True,
    reason="Falcon calls sdpa itself with an always-built mask and one KV head, so torch 2.13 "
    "runs the math kernel (kernel choice held equal); the copies matmul makes when it "
    "broadcasts K and V over the heads are not modelled yet: measured +30,720 B (+1.9 %) on "
    "end_of_forward here, +1.6 % for falcon-7b b1 s512 bf16 (peak exact, optimizer step)",
)
def test_falcon_math_kernel_saved_tensors() -> None:
    import json
    from pathlib import Path

    configs = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
    config = configs["falcon"]
    setup = _setup(batch=2, seq=64, precision=Precision.BF16)
    spec = spec_from_config(dict(config), name="falcon")
    analytic = estimate_training(spec, setup)
    assert analytic.notes[0].startswith("attention kernel: math")
    assert _lines(analytic) == _lines(_trace(config, setup))


# The model types of issue 12 (transformers 5.23), on the trace tests' tiny configs: gpt-oss
# (sliding/full alternation, attention sinks, eager attention, biased router, clamped SwiGLU),
# Llama 4 (chunked and NoPE layers, all-experts MoE with a shared expert, a vision tower text
# inputs do not run), Gemma 3 and Mistral 3 multimodal configs (their text model trains).
FAMILIES_2025 = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
# (Their default setup, bf16-mixed b2 s32, is tests/test_trace_families.py's.)
CASES_2025 = [
    ("gpt_oss", _setup(batch=2, seq=32, precision=Precision.BF16, lora_rank=4)),
    ("llama4", _setup(batch=2, seq=40, precision=Precision.FP32)),
    ("gemma3", _setup(batch=2, seq=32, precision=Precision.BF16)),
    ("mistral3", _setup(batch=2, seq=32, precision=Precision.BF16)),
    pytest.param(
        "llama4",
        _setup(batch=2, seq=32, checkpointing=Checkpointing.FULL),
        marks=pytest.mark.xfail(
            strict=True,
            reason="peak exact; peak_backward -104,960 B (-3.5 % of the peak), end_of_forward "
            "-2,048 B: with full checkpointing the recomputed forward of the chunked/sliding "
            "layers holds mask tensors the analytic backward does not count (gpt-oss "
            "-96,256 B and Gemma 3 -66,048 B at peak_backward likewise; not specific to these "
            "families: TINY's mistral-swa is -4,096 B and gemma3-swa -155,136 B there)",
        ),
    ),
]


def _id_2025(case: object) -> str:
    values = getattr(case, "values", case)
    return _id(values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("family", "setup"), CASES_2025, ids=[_id_2025(c) for c in CASES_2025])
def test_families_2025_every_line_equals_the_trace(family: str, setup: TrainingSetup) -> None:
    config = FAMILIES_2025[family]
    spec = spec_from_config(dict(config), name=family)
    assert _lines(estimate_training(spec, setup)) == _lines(_trace(config, setup))
