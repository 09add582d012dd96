"""Real CPU runs measured by PyTorch's own ``MemTracker`` (``tests/test_memtracker.py``,
``scripts/accuracy_memtracker.py``).

Nothing here uses memplan: the model comes from transformers (``AutoConfig.for_model`` and
``AutoModelForCausalLM.from_config`` with random weights), the optimizer is
``torch.optim.AdamW`` with the implementation a CPU run gets by default (the for-loop), and
``torch.distributed._tools.mem_tracker.MemTracker`` does the measuring. What the run shares with
memplan's trace is only its definition: config, batch, sequence, dtype and the loop
(``transformers.Trainer``'s step; greedy generation as ``generate`` does it).

``MemTracker`` (torch 2.13) sorts every storage into one reference type: ``PARAM``, ``BUFFER``,
``GRAD``, ``ACT`` (made in the forward, or by a checkpointed layer's recomputation), ``TEMP``
(made in the backward), ``OPT`` (made by ``optimizer.step``, states and temporaries alike) and
``OTH`` (tensors given to ``track_external``: here the input ids and labels). Its snapshots are
per device; a run here has only the cpu.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed._tools.mem_tracker import MemTracker, _ModState

__all__ = [
    "REF_TYPES",
    "InferenceMeasure",
    "IterationMeasure",
    "measure_inference",
    "measure_training",
]

REF_TYPES = ("PARAM", "BUFFER", "GRAD", "ACT", "TEMP", "OPT", "OTH")
CPU = torch.device("cpu")


def by_ref_type(snapshot: dict[torch.device, dict[Any, int]]) -> dict[str, int]:
    """A MemTracker snapshot of the cpu as ``{"PARAM": bytes, ..., "Total": bytes}``."""
    cpu = snapshot.get(CPU, {})
    out = dict.fromkeys((*REF_TYPES, "Total"), 0)
    for key, value in cpu.items():
        out[getattr(key, "name", key)] = int(value)
    return out


def real_model(
    config: dict[str, Any], *, dtype: torch.dtype, checkpointing: bool = False
) -> torch.nn.Module:
    """The causal LM of ``config`` with random weights on the cpu (sdpa attention)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in config.items() if k != "model_type"}
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoConfig.for_model(config["model_type"], **values)
        model = AutoModelForCausalLM.from_config(hf, dtype=dtype, attn_implementation="sdpa")
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
    return model


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Collect reference cycles now and not during the step, so that a collection cannot move
    a free from one run to the other (memplan's trace does the same at iteration boundaries)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class IterationMeasure:
    """One training iteration: live bytes at its phase boundaries, its peak by type, and the
    phase of the peak (the whole model's forward, its backward, or else the optimizer step)."""

    phases: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    peak_phase: str = ""


def measure_training(
    config: dict[str, Any],
    *,
    batch: int,
    seq: int,
    dtype: torch.dtype,
    autocast_dtype: torch.dtype | None = None,
    checkpointing: bool = False,
) -> list[IterationMeasure]:
    """Two training iterations (the second with the optimizer states live), each measured by
    a fresh MemTracker that is told about the model, the optimizer and the inputs."""
    torch.manual_seed(0)
    model = real_model(config, dtype=dtype, checkpointing=checkpointing)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    input_ids = torch.randint(0, vocab, (batch, seq))
    labels = torch.randint(0, vocab, (batch, seq))
    iterations = []
    for _ in range(2):
        tracker = MemTracker()
        tracker.track_external(model, optimizer, input_ids, labels)
        measure = IterationMeasure()
        phases = measure.phases

        def now(tracker: MemTracker = tracker) -> int:
            return by_ref_type(tracker.get_tracker_snapshot("current"))["Total"]

        autocast = (
            torch.autocast("cpu", dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with _no_cycle_collection(), tracker:
            phases["after_load"] = now()
            with autocast:
                loss = model(input_ids=input_ids, labels=labels).loss
            phases["end_of_forward"] = now()
            loss.backward()
            del loss
            phases["after_backward"] = now()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            phases["after_zero_grad"] = now()
        # the whole model's forward and backward are those phases; MemTracker snapshots their
        # peaks per module
        snapshots = tracker.memory_tracking[model].snapshots
        forward = by_ref_type(snapshots[_ModState.PEAK_FW][-1])["Total"]
        phases["peak_backward"] = by_ref_type(snapshots[_ModState.PEAK_BW][-1])["Total"]
        measure.peak = by_ref_type(tracker.get_tracker_snapshot("peak"))
        measure.peak_phase = {forward: "forward", phases["peak_backward"]: "backward"}.get(
            measure.peak["Total"], "optimizer_step"
        )
        iterations.append(measure)
    return iterations


@dataclass
class InferenceMeasure:
    """A prefill and its decode steps: phases as memplan names them, and the prefill peak by
    reference type."""

    phases: dict[str, int] = field(default_factory=dict)
    prefill_peak: dict[str, int] = field(default_factory=dict)


def _next_token(model: torch.nn.Module, ids: torch.Tensor, cache: Any, past: int) -> torch.Tensor:
    """One forward with the cache and greedy choice, as ``generate`` makes it
    (``generation/utils.py`` ``_sample``: the last position's logits copied to fp32, argmax)."""
    positions = torch.arange(past, past + ids.shape[1])
    out = model(
        input_ids=ids,
        past_key_values=cache,
        use_cache=True,
        cache_position=positions,
        position_ids=positions[None].expand(ids.shape[0], -1),
        logits_to_keep=1,
    )
    logits = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
    del out
    return logits.argmax(dim=-1, keepdim=True)


def measure_inference(
    config: dict[str, Any], *, batch: int, prompt_len: int, gen_len: int, dtype: torch.dtype
) -> InferenceMeasure:
    """Greedy generation of ``gen_len`` tokens with a DynamicCache: one MemTracker for the
    prefill, a second one for the decode steps (so that each phase has its own peak)."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    model = real_model(config, dtype=dtype).eval()
    vocab = int(model.get_input_embeddings().weight.shape[0])
    measure = InferenceMeasure()
    phases = measure.phases
    with torch.no_grad(), _no_cycle_collection():
        cache = DynamicCache(config=model.config)
        prompt = [torch.randint(0, vocab, (batch, prompt_len))]
        prefill = MemTracker()
        prefill.track_external(model, prompt[0])
        with prefill:
            start = by_ref_type(prefill.get_tracker_snapshot("current"))
            phases["after_load"] = start["Total"] - start["OTH"]
            token = _next_token(model, prompt.pop(), cache, 0)
            phases["after_prefill"] = by_ref_type(prefill.get_tracker_snapshot("current"))["Total"]
        measure.prefill_peak = by_ref_type(prefill.get_tracker_snapshot("peak"))
        phases["prefill_peak"] = measure.prefill_peak["Total"]
        decode = MemTracker()
        decode.track_external(model, token, *_cache_tensors(cache))
        with decode:
            for step in range(gen_len - 1):
                decode.reset_mod_stats()  # one root forward per step
                token = _next_token(model, token, cache, prompt_len + step)
            phases["after_decode"] = by_ref_type(decode.get_tracker_snapshot("current"))["Total"]
        phases["decode_peak"] = by_ref_type(decode.get_tracker_snapshot("peak"))["Total"]
    return measure


def _cache_tensors(cache: Any) -> list[torch.Tensor]:
    return [
        tensor
        for layer in cache.layers
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if isinstance(tensor, torch.Tensor)
    ]
