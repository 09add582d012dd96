"""The attention kernel of every call of ``generate`` (prefill and decode steps), predicted by
``memplan.formulas.attention.generate_attention_kernel`` and run by the trace, call by call:
the same GPU facts, the masks transformers builds (a sliding window the keys reach, a static
cache's decode), and its grouped-head handling (``enable_gqa``, ``pack_gqa``, ``repeat_kv``).
"""

from __future__ import annotations

from typing import Any

import pytest

from memplan.catalog.gpus import kernel_device
from memplan.formulas.attention import generate_attention_kernel
from memplan.specs.hf import spec_from_config
from memplan.specs.inference import InferenceSetup

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.trace

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=False)  # fmt: skip
CONFIGS = {
    "llama-gqa": dict(model_type="llama", **_COMMON),
    "mistral-swa": dict(model_type="mistral", sliding_window=32, **_COMMON),
}
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _traced(config: dict[str, Any], setup: InferenceSetup, monkeypatch: Any) -> list[tuple]:  # type: ignore[type-arg]
    from memplan.trace.emulate import CudaEmulation
    from memplan.trace.inference import trace_inference

    made: list[CudaEmulation] = []
    init = CudaEmulation.__init__

    def record(self: CudaEmulation, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(CudaEmulation, "__init__", record)
    trace_inference(dict(config), setup)
    return [(b, c.has_mask, c.q_heads, c.kv_heads) for b, c in made[0].calls]


def _predicted(config: dict[str, Any], setup: InferenceSetup) -> list[tuple]:  # type: ignore[type-arg]
    spec = spec_from_config(dict(config), name=config["model_type"])
    device = kernel_device(setup.gpu)
    forwards = [(0, setup.prompt_len)] + [
        (setup.prompt_len + i, 1) for i in range(setup.gen_len - 1)
    ]
    out = []
    for past, q_len in forwards:
        for layer in range(spec.n_layers):
            kernel = generate_attention_kernel(
                spec, setup.attention, device, dtype=_DTYPES[setup.weights], batch=setup.batch,
                q_len=q_len, past=past, sliding=spec.slides(layer),
                static_cache=setup.cache == "static", cache_len=setup.total_len,
            )  # fmt: skip
            heads, kv = spec.n_heads, spec.n_kv_heads
            if kernel.gqa == "repeat_kv":
                kv = heads
            elif kernel.gqa == "pack_gqa":
                heads = kv
            out.append((kernel.backend, kernel.has_mask, heads, kv))
    return out


CASES = [
    # H100: cuDNN takes grouped heads with enable_gqa, prefill and decode
    ("llama-gqa", InferenceSetup(batch=2, prompt_len=24, gen_len=3)),
    # a static cache's decode builds a mask: the query is packed onto the KV heads
    ("llama-gqa", InferenceSetup(batch=2, prompt_len=24, gen_len=3, cache="static")),
    # fp32 with grouped heads: math, prefill and decode
    ("llama-gqa", InferenceSetup(batch=1, prompt_len=24, gen_len=2, weights="fp32")),
    # the prompt reaches the window: masks, K/V repeated for the prefill, packed decode
    ("mistral-swa", InferenceSetup(batch=2, prompt_len=40, gen_len=3, gpu="A100")),
    # the prefill stays under the window; the decode reaches it (32 keys): masked, packed
    ("mistral-swa", InferenceSetup(batch=2, prompt_len=31, gen_len=3)),
]


@pytest.mark.parametrize(("family", "setup"), CASES)
def test_generate_kernels_follow_one_rule(
    family: str, setup: InferenceSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CONFIGS[family]
    traced = _traced(config, setup, monkeypatch)
    assert traced == _predicted(config, setup)
