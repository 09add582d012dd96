"""Speed of the analytic inference, serving and time estimates (no torch): ms per call."""

from __future__ import annotations

import time

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate.inference import inference_report
from memplan.estimate.serving import ServingSetup, serving_report
from memplan.estimate.timing import TrainingRun, training_time_report
from memplan.specs.inference import InferenceSetup

MODELS = (
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-405B",
    "google/gemma-2-27b",
    "mistralai/Mixtral-8x22B-v0.1",
    "deepseek-ai/DeepSeek-V3",
)


def _per_call_ms(fn: object, repeat: int = 20) -> float:
    assert callable(fn)
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeat


def main() -> None:
    gpu = resolve_gpu("H100")
    print(f"{'model':<32} {'infer':>9} {'serve':>9} {'time':>9}   (ms per call)")
    for name in MODELS:
        spec = resolve(name)
        setup = InferenceSetup(batch=8, prompt_len=2048, gen_len=512)
        tp = 8 if spec.n_heads % 8 == 0 else 1
        serve = ServingSetup(tp_degree=tp, max_model_len=8192)
        run = TrainingRun(batch=1024, seq=4096, tokens=10**12)
        infer_ms = _per_call_ms(lambda s=spec, u=setup: inference_report(s, u, gpu))
        serve_ms = _per_call_ms(lambda s=spec, u=serve: serving_report(s, u, gpu))
        time_ms = _per_call_ms(lambda s=spec, u=run: training_time_report(s, u, gpu))
        print(f"{name:<32} {infer_ms:9.2f} {serve_ms:9.2f} {time_ms:9.2f}")


if __name__ == "__main__":
    main()
