"""llm-analysis's per-plan cost on ``memplan plan``'s question, for bench/bench_plan.py's figure.

llm-analysis (github.com/cli99/llm-analysis, 0.2.2) judges one plan per call of
``LLMAnalysis(...).training(...)``; its users try plans one by one. This script calls it over
the plans of the question bench_plan.py asks (Llama-3.1-70B on 64 x H100, seq 4096, global
batch 512): tp in 1, 2, 4, 8; pp in 1, 2, 4, 8; ZeRO 0-3; micro-batches 1, 2, 4, 8;
activation recomputation none, selective and full; dp what remains. It prints plans per CPU
second. The model is given from memplan's shipped config (llm-analysis would fetch it from the
Hub) but for its MLP width: llm-analysis asserts ``ffn_embed_dim % hidden_dim == 0``, which
Llama 3's 28,672 / 8,192 fails, so 4 x hidden as its own Llama-2-70B config has (the cost of a
call does not depend on it). The GPU is its own ``h100-sxm-80gb``.

It needs llm-analysis, which memplan does not depend on: run it with a Python that has it, e.g.
``python -m venv /tmp/lla && /tmp/lla/bin/pip install llm-analysis==0.2.2 &&
PYTHONPATH=src /tmp/lla/bin/python bench/bench_llm_analysis.py``. Without it the script says so
and exits 0.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import time

from memplan.catalog import resolve

GPUS, SEQ, GLOBAL_BATCH = 64, 4096, 512


def main() -> None:
    try:
        from llm_analysis.analysis import ActivationRecomputation, DSZeRO, LLMAnalysis
        from llm_analysis.config import (
            ModelConfig,
            ParallelismConfig,
            get_dtype_config_by_name,
            get_gpu_config_by_name,
        )
    except ImportError:
        print("llm-analysis is not installed here: see this script's docstring")
        return
    logging.disable(logging.CRITICAL)  # it logs a summary per call
    spec = resolve("meta-llama/Llama-3.1-70B")
    model = ModelConfig(
        name=spec.name, num_layers=spec.n_layers, n_head=spec.n_heads,
        hidden_dim=spec.hidden_size, vocab_size=spec.vocab_size, max_seq_len=SEQ,
        num_key_value_heads=spec.n_kv_heads, ffn_embed_dim=4 * spec.hidden_size,
        model_type="llama",
    )  # fmt: skip
    gpu = get_gpu_config_by_name("h100-sxm-80gb")
    dtype = get_dtype_config_by_name("w16a16e16")
    zeros = (DSZeRO.NONE, DSZeRO.STAGE_1, DSZeRO.STAGE_2, DSZeRO.STAGE_3)
    recompute = (ActivationRecomputation.NONE, ActivationRecomputation.SELECTIVE,
                 ActivationRecomputation.FULL)  # fmt: skip
    plans = judged = 0
    start = time.process_time()
    for tp, pp, zero, micro, rec in itertools.product(
        (1, 2, 4, 8), (1, 2, 4, 8), zeros, (1, 2, 4, 8), recompute
    ):
        dp = GPUS // (tp * pp)
        if GLOBAL_BATCH % (dp * micro):
            continue
        plans += 1
        analysis = LLMAnalysis(model, gpu, dtype, ParallelismConfig(tp_size=tp, pp_size=pp,
                                                                    dp_size=dp))  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                analysis.training(batch_size_per_gpu=micro, global_batch_size=GLOBAL_BATCH,
                                  seq_len=SEQ, activation_recomputation=rec, ds_zero=zero,
                                  mlp_gated_linear_units=True)  # fmt: skip
                judged += 1
            except AssertionError:  # it asserts on a plan that does not fit
                judged += 1
    seconds = time.process_time() - start
    print(f"llm-analysis 0.2.2, {spec.name}, {GPUS} x H100, seq {SEQ}, global batch {GLOBAL_BATCH}")
    print(f"  {plans} plans in {seconds:.2f} CPU s: {plans / seconds:,.0f} plans/s (one core)")


if __name__ == "__main__":
    main()
