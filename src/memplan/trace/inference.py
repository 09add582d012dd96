"""``trace_inference``: a generation pass (prefill, then decode steps) on the real model.

The loop is what ``generate`` does for greedy decoding: a prefill over the prompt that keeps
the last position's logits (``logits_to_keep=1``), their fp32 copy, then ``gen_len - 1``
single-token forwards that extend the cache (``DynamicCache`` grows by ``torch.cat``;
``StaticCache`` is allocated at its full length on first use).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from memplan.errors import SetupError
from memplan.report import Phase, Report
from memplan.specs.inference import InferenceSetup
from memplan.specs.model import ModelSpec
from memplan.trace.assemble import (
    breakdown_at,
    device_section,
    fit_fields,
    reserved_model,
    setup_dict,
    sizes_of,
)
from memplan.trace.build import (
    build_model,
    check_seq_len,
    config_of,
    grouped_mm_policy,
    supports_sdpa,
    unpadded_mask_skips,
)
from memplan.trace.cuda_env import gpu_arch
from memplan.trace.session import TraceSession
from memplan.trace.timeline import Timeline
from memplan.trace.tracker import Flag

__all__ = ["trace_inference"]

Progress = Callable[[str, float], None]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INFERENCE_KEYS = ("parameters", "kv_cache", "activations", "temporaries", "inputs", "buffers")
_BACKENDS = {"sdpa": "auto", "eager": "auto", "flash": "flash", "mem-efficient": "mem-efficient"}


def trace_inference(
    model: ModelSpec | dict[str, Any],
    setup: InferenceSetup,
    *,
    progress: Progress | None = None,
    fake: bool = True,
) -> Report:
    """Trace a prefill of ``setup.prompt_len`` tokens and ``setup.gen_len - 1`` decode steps
    (the first and the last of them; see ``_fast_forward``)."""
    started = time.perf_counter()
    tick = progress or (lambda message, fraction: None)
    name, config = config_of(model)
    dtype = _check(name, config, setup)
    cuda = setup.target == "cuda"
    session = TraceSession(
        fake=fake, cuda=cuda, arch=gpu_arch(setup.gpu), sdpa_backend=_BACKENDS[setup.attention]
    )
    marks: dict[str, int] = {}
    tick("building the model", 0.0)
    attention = setup.attention if setup.attention == "eager" else "sdpa"
    if attention == "sdpa" and not supports_sdpa(config):
        if setup.attention != "sdpa":
            raise SetupError(
                f"{config.get('model_type')}: transformers has no sdpa attention for this "
                f"family, so the {setup.attention} kernel cannot run; use --attention eager"
            )
        attention = "eager"
    with session, torch.no_grad(), grouped_mm_policy(dtype), unpadded_mask_skips():
        net = build_model(config, dtype=dtype, attention=attention, dropout=None).eval()
        session.register_model(net)
        tracker = session.tracker
        n_params = sum(p.numel() for p in net.parameters())
        vocab = int(net.get_input_embeddings().weight.shape[0])
        cache = _make_cache(net, setup)
        marks["start"] = tracker.mark()
        ids = torch.randint(0, vocab, (setup.batch, setup.prompt_len))
        tracker.flag(ids, Flag.INPUT)
        tracker.count_flops = True
        tick("prefill", 0.05)
        token = _forward(net, ids, cache, 0, setup.logits == "last", session)
        del ids
        marks["after_prefill"] = tracker.mark()
        prefill_flops = tracker.flops
        steps = max(0, setup.gen_len - 1)
        decode_flops = 0
        for step, position in enumerate(_decode_positions(setup.prompt_len, steps)):
            if step == 1 and steps > 2:
                # steps 2 .. n-1 only grow the cache: fast-forward it and trace the last step
                marks["fast_forward"] = tracker.mark()
                _fast_forward(cache, position - setup.prompt_len - 1, session)
                marks["last_step"] = tracker.mark()
            before = tracker.flops
            token = _forward(net, token, cache, position, True, session)
            decode_flops = _decode_flops(decode_flops, tracker.flops - before, step, steps)
            tick(f"decode step {step + 1}", 0.1 + 0.9 * (step + 1) / 2)
        tracker.flops = prefill_flops + decode_flops
        marks["after_decode"] = tracker.mark()
        kv_bytes = _flag_cache(cache, session)
        del token
    seconds = time.perf_counter() - started
    tick("done", 1.0)
    return _report(name, setup, session, marks, kv_bytes, n_params, seconds)


def _check(name: str, config: dict[str, Any], setup: InferenceSetup) -> torch.dtype:
    check_seq_len(name, config, setup.total_len, False)
    if setup.weights not in _DTYPES:
        raise SetupError(
            f"the trace builds unquantized weights (fp32, fp16, bf16); {setup.weights} is "
            "analytic only: use memplan infer"
        )
    if setup.kv_dtype not in ("auto", setup.weights):
        raise SetupError(
            f"transformers keeps the KV cache in the model's dtype; a {setup.kv_dtype} cache "
            "is analytic only (memplan infer)"
        )
    if setup.tp_degree != 1:
        raise SetupError("the trace runs one GPU; tensor parallelism is analytic only")
    if setup.attention not in _BACKENDS:
        raise SetupError(
            f"unknown attention {setup.attention!r}: use one of {', '.join(_BACKENDS)}"
        )
    if setup.target not in ("cuda", "cpu"):
        raise SetupError(f"target must be cuda or cpu, got {setup.target!r}")
    return _DTYPES[setup.weights]


def _decode_positions(prompt_len: int, steps: int) -> list[int]:
    """Positions of the decode steps traced: all of them up to two, else the first and last."""
    if steps <= 2:
        return [prompt_len + i for i in range(steps)]
    return [prompt_len, prompt_len + steps - 1]


def _decode_flops(total: int, step_flops: int, step: int, steps: int) -> int:
    """Decode FLOPs: a step's FLOPs are linear in the cache length, so n steps sum to
    n * (first + last) / 2 when only the first and the last are traced."""
    if steps <= 2:
        return total + step_flops
    if step == 0:
        return step_flops
    return (total + step_flops) * steps // 2


def _fast_forward(cache: Any, n_tokens: int, session: TraceSession) -> None:
    """Grow each cache layer by ``n_tokens`` through its own ``update`` (as that many decode
    steps would: ``torch.cat`` for a DynamicCache, a window for sliding layers; a StaticCache
    is allocated at its full length already)."""
    from transformers import StaticCache

    if n_tokens <= 0 or isinstance(cache, StaticCache):
        return
    for index, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            continue
        # all but one token at once, then one: a sliding layer keeps a view of its last
        # concatenation, which must be one token long as after a real decode step
        for chunk in (n_tokens - 1, 1):
            if chunk:
                shape = (*keys.shape[:2], chunk)
                cache.update(
                    keys.new_empty((*shape, keys.shape[-1])),
                    values.new_empty((*shape, values.shape[-1])),
                    index,
                )
    _flag_cache(cache, session)


def _make_cache(net: torch.nn.Module, setup: InferenceSetup) -> Any:
    from transformers import DynamicCache, StaticCache

    if setup.cache == "static":
        return StaticCache(config=net.config, max_cache_len=setup.total_len)
    return DynamicCache(config=net.config)


def _forward(
    net: torch.nn.Module,
    ids: torch.Tensor,
    cache: Any,
    past: int,
    last_only: bool,
    session: TraceSession,
) -> torch.Tensor:
    """One forward with the cache; returns the greedy next token (as generate does)."""
    length = ids.shape[1]
    positions = torch.arange(past, past + length)
    out = net(
        input_ids=ids,
        past_key_values=cache,
        use_cache=True,
        cache_position=positions,
        position_ids=positions[None].expand(ids.shape[0], -1),
        logits_to_keep=1 if last_only else 0,
    )
    logits = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
    del out
    token = logits.argmax(dim=-1, keepdim=True)
    _flag_cache(cache, session)
    return token


def _flag_cache(cache: Any, session: TraceSession) -> int:
    """Flag the cache layers' tensors as ``kv_cache`` and return their bytes: keys, values,
    and the int64 counters (``StaticLayer.cumulative_length``,
    ``DynamicSlidingWindowLayer._sliding_window_tensor``), and a linear-attention layer's
    conv and recurrent states (``LinearAttentionLayer``: dicts by state index)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        tensors = [
            getattr(layer, attr, None)
            for attr in ("keys", "values", "cumulative_length", "_sliding_window_tensor")
        ]
        for attr in ("conv_states", "recurrent_states"):
            tensors += list((getattr(layer, attr, None) or {}).values())
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                session.tracker.flag(tensor, Flag.KV_CACHE)
                total += tensor.untyped_storage().nbytes()
    return total


def _report(
    name: str,
    setup: InferenceSetup,
    session: TraceSession,
    marks: dict[str, int],
    kv_bytes: int,
    n_params: int,
    seconds: float,
) -> Report:
    sizes = sizes_of(session, rounded=True)
    raw = sizes_of(session, rounded=False)
    timeline = Timeline.build(sizes, session.tracker.events)
    prefill = timeline.peak_between(marks["start"], marks["after_prefill"])
    if "fast_forward" in marks:
        decode = max(
            timeline.peak_between(marks["after_prefill"], marks["fast_forward"]),
            timeline.peak_between(marks["last_step"], marks["after_decode"]),
        )
    else:
        decode = timeline.peak_between(marks["after_prefill"], marks["after_decode"])
    (peak, where), phase = max(((prefill, "prefill"), (decode, "decode")), key=lambda c: c[0][0])
    live = timeline.live_at(where)
    report = Report(
        kind="trace/inference",
        model=name,
        breakdown=breakdown_at(session, live, sizes, keys=INFERENCE_KEYS),
        setup=setup_dict(setup),
    )
    reserved = reserved_model(session, len(session.tracker.events)) if session.cuda else (0, 0, 0)
    report.scalars = {
        "peak_bytes": peak,
        "peak_phase": phase,
        "kv_cache_bytes": kv_bytes,
        "tensor_bytes_at_peak": sum(raw[k] for k in live),
        "reserved_bytes": reserved[0],
        "reserved_bytes_at_peak": reserved[1],
        "flops": session.tracker.flops,
        "total_params": n_params,
        "trace_seconds": round(seconds, 3),
    }
    report.phases = [
        Phase("after_load", timeline.at(marks["start"])),
        Phase("prefill_peak", prefill[0]),
        Phase("after_prefill", timeline.at(marks["after_prefill"])),
        Phase("decode_peak", decode[0] if marks["after_decode"] > marks["after_prefill"] else 0),
        Phase("after_decode", timeline.at(marks["after_decode"])),
    ]
    if session.cuda:
        outside = device_section(session, None, 1, max(0, reserved[1] - peak))
        report.sections["outside_tensors"] = outside
        report.scalars.update(fit_fields(None, peak, outside))
    if session.emulation is not None and session.emulation.backends_used:
        used = ", ".join(
            f"{k} ({v} calls)" for k, v in sorted(session.emulation.backends_used.items())
        )
        report.notes.append(f"attention kernels emulated: {used}")
    if "fast_forward" in marks:
        report.notes.append(
            "decode: the first and the last step traced; the cache was grown to the last "
            "step's length in between (each step only adds to it), FLOPs summed linearly"
        )
    return report
