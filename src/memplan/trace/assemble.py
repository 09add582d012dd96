"""From a traced run to a :class:`~memplan.report.Report` (the contract in ``__init__``)."""

from __future__ import annotations

import dataclasses
import enum
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memplan.catalog.gpus import resolve_gpu
from memplan.estimate.fit import fit_on_gpu, fit_scalars
from memplan.formulas.allocator import ALLOCATOR_ROUND_BYTES, alloc_bytes
from memplan.formulas.overheads import outside_tensors_item
from memplan.report import TRAINING_CATEGORIES, Item, Phase, Report
from memplan.specs.hardware import Gpu
from memplan.trace.allocator import CachingAllocatorModel
from memplan.trace.build import module_section
from memplan.trace.timeline import Timeline
from memplan.trace.tracker import Flag

if TYPE_CHECKING:
    from memplan.trace.session import TraceSession

__all__ = ["CATEGORIES", "IterationMarks", "category_of", "training_report"]

CATEGORIES = (
    (Flag.PARAMETER, "parameters"),
    (Flag.BUFFER, "buffers"),
    (Flag.GRADIENT, "gradients"),
    (Flag.OPTIMIZER_STATE, "optimizer_states"),
    (Flag.INPUT, "inputs"),
    (Flag.KV_CACHE, "kv_cache"),
    (Flag.AUTOCAST_CACHE, "autocast_cache"),
    (Flag.ACTIVATION, "activations"),
)
TRAINING_KEYS = TRAINING_CATEGORIES
ACTIVATION_SECTIONS = ("embedding", "layers", "final_norm", "lm_head", "loss", "other")


@dataclass
class IterationMarks:
    """Event-log positions at the phase boundaries of one training iteration."""

    start: int = 0
    end_of_forward: int = 0
    after_backward: int = 0
    after_step: int = 0
    after_zero_grad: int = 0


def category_of(flags: int) -> str:
    """The category of a storage: its highest-priority flag (temporaries if none)."""
    for flag, name in CATEGORIES:
        if flags & flag:
            return name
    return "temporaries"


def sizes_of(session: TraceSession, *, rounded: bool) -> list[int]:
    """Bytes per storage key: allocator-rounded under the CUDA target; host storages count 0."""
    tracker = session.tracker
    round_to = ALLOCATOR_ROUND_BYTES if (rounded and session.cuda) else 1
    return [
        0 if flags & Flag.HOST else alloc_bytes(nbytes, round_to)
        for nbytes, flags in zip(tracker.nbytes, tracker.flags, strict=True)
    ]


def breakdown_at(
    session: TraceSession, live: set[int], sizes: list[int], *, keys: tuple[str, ...]
) -> Item:
    """The ``peak`` tree: categories, and activations by module and saved field."""
    tracker = session.tracker
    totals: dict[str, int] = defaultdict(int)
    acts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key in live:
        category = category_of(tracker.flags[key])
        totals[category] += sizes[key]
        if category == "activations":
            module = tracker.module_of.get(key, session.alloc_module.get(key, ""))
            acts[module_section(module)][tracker.field_of.get(key, "other")] += sizes[key]
    root = Item("peak")
    for name in keys:
        if name == "activations":
            root.add(_activation_tree(acts))
        elif totals.get(name) or name in ("parameters", "activations"):
            root.leaf(name, totals.get(name, 0))
    return root


def _activation_tree(acts: dict[str, dict[str, int]]) -> Item:
    node = Item("activations")
    layers = Item("layers")
    layer_keys = sorted(
        (k for k in acts if k.startswith("layers/")), key=lambda k: int(k.split("/")[1])
    )
    for section in layer_keys:
        layer = layers.add(Item(section.split("/")[1]))
        for field, value in sorted(acts[section].items()):
            layer.leaf(field, value)
    for section in ACTIVATION_SECTIONS:
        if section == "layers":
            if layers.children:
                node.add(layers)
            continue
        if section in acts:
            child = node.add(Item(section))
            for field, value in sorted(acts[section].items()):
                child.leaf(field, value)
    if not node.children:
        node.value = 0
    return node


def saved_by_node(session: TraceSession, live: set[int]) -> Item:
    """Seed 003's view: saved tensor bytes (unrounded) by ``NodeName.field``."""
    tracker = session.tracker
    totals: dict[str, int] = defaultdict(int)
    for key in live:
        if category_of(tracker.flags[key]) in ("activations", "autocast_cache"):
            totals[tracker.field_of.get(key, "other")] += tracker.nbytes[key]
    root = Item("saved_by_node")
    for field, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        root.leaf(field, value)
    return root


def reserved_model(session: TraceSession, stop: int) -> tuple[int, int, int]:
    """(peak reserved, reserved at the allocated peak, n segments) from the allocator model."""
    model = CachingAllocatorModel()
    tracker = session.tracker
    handles: dict[int, int] = {}
    best_allocated = -1
    reserved_at_peak = 0
    for event in tracker.events[:stop]:
        if event >= 0:
            if tracker.flags[event] & Flag.HOST or tracker.nbytes[event] == 0:
                continue
            handles[event] = model.malloc(tracker.nbytes[event])
        else:
            handle = handles.pop(~event, None)
            if handle is not None:
                model.free(handle)
        if model.allocated_bytes > best_allocated:
            best_allocated = model.allocated_bytes
            reserved_at_peak = model.reserved_bytes
    return model.peak_reserved_bytes, reserved_at_peak, model.n_segments


_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets", "qlora")


def setup_dict(setup: Any) -> dict[str, Any]:
    """The setup block: every field that is set, without None, False or the LoRA fields of a
    full training (rank 0)."""
    out = {}
    lora = getattr(setup, "lora_rank", 0) > 0
    for f in dataclasses.fields(setup):
        value = getattr(setup, f.name)
        unset = value is None or value is False or (f.name == "freeze_layers" and value == 0)
        if unset or (f.name in _LORA_FIELDS and not lora):
            continue
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
        if isinstance(value, tuple):
            out[f.name] = ",".join(value)
    return out


def device_section(
    session: TraceSession, gpu: str | None, n_workspaces: int, reserved_slack: int | None = None
) -> Item:
    """Memory outside the traced tensors, as the named lines the analytic engine uses
    (:func:`memplan.formulas.overheads.outside_tensors_item`): the CUDA context, the cuBLAS
    workspaces of the emulated GPU's architecture and the caching allocator's reserved but
    unallocated bytes at the peak (the allocator model)."""
    return outside_tensors_item(
        _emulated_gpu(gpu), n_workspaces=n_workspaces, reserved_bytes=reserved_slack
    )


def _emulated_gpu(name: str | None) -> Gpu:
    """The catalog GPU the trace emulates (H100 when none is named)."""
    return resolve_gpu(name or "H100")


def fit_fields(gpu: str | None, peak: int, outside: Item) -> dict[str, Any]:
    """The fit verdict on the emulated GPU (:func:`memplan.estimate.fit.fit_on_gpu`), the
    allocator's reserved slack counted among the outside lines."""
    card = _emulated_gpu(gpu)
    verdict = fit_on_gpu(card.memory_bytes, peak, outside, "the traced peak")
    return {"gpu": card.name, **fit_scalars(verdict)}


def training_report(name: str, setup: Any, session: TraceSession, run: Any) -> Report:
    """The Report of a training trace (steady-state iteration, plus the first one)."""
    sizes = sizes_of(session, rounded=True)
    raw = sizes_of(session, rounded=False)
    timeline = Timeline.build(sizes, session.tracker.events)
    steady, first = run.iterations[1], run.iterations[0]
    phases, peak, where, peak_phase = _phases(timeline, steady)
    first_phases, first_peak, _, _ = _phases(timeline, first)
    live = timeline.live_at(where)
    breakdown = breakdown_at(session, live, sizes, keys=TRAINING_KEYS)
    end_live = timeline.live_at(steady.end_of_forward)
    reserved_peak, reserved_at_peak, n_segments = (
        reserved_model(session, len(session.tracker.events)) if session.cuda else (0, 0, 0)
    )
    report = Report(kind="trace/training", model=name, breakdown=breakdown, setup=setup_dict(setup))
    report.scalars = {
        "peak_bytes": peak,
        "peak_phase": peak_phase,
        "first_step_peak_bytes": first_peak,
        "tensor_bytes_at_peak": sum(raw[k] for k in live),
        "reserved_bytes": reserved_peak,
        "reserved_bytes_at_peak": reserved_at_peak,
        "fragmentation_bytes": max(0, reserved_at_peak - peak) if session.cuda else 0,
        "flops": session.tracker.flops,
        "total_params": run.n_params,
        "trainable_params": run.n_trainable,
        "trace_seconds": round(run.seconds, 3),
        "n_ops": session.tracker.n_ops,
    }
    report.phases = phases + [Phase(f"first_step/{p.name}", p.bytes, p.note) for p in first_phases]
    report.sections["saved_by_node"] = saved_by_node(session, end_live)
    end_tree = breakdown_at(session, end_live, raw, keys=("activations",)).child("activations")
    end_tree.key = "activations_end_of_forward"
    report.sections["activations_end_of_forward"] = end_tree
    if session.cuda:
        outside = device_section(session, setup.gpu, 2, max(0, reserved_at_peak - peak))
        report.sections["outside_tensors"] = outside
        report.scalars.update(fit_fields(setup.gpu, peak, outside))
        report.notes.append(
            f"allocator model: {n_segments} segments, reserved {reserved_peak:,} B at most"
        )
    report.notes.extend(_notes(session, run))
    return report


def _phases(timeline: Timeline, marks: IterationMarks) -> tuple[list[Phase], int, int, str]:
    forward_peak = timeline.peak_between(marks.start, marks.end_of_forward)
    backward_peak = timeline.peak_between(marks.end_of_forward, marks.after_backward)
    step_peak = timeline.peak_between(marks.after_backward, marks.after_step)
    zero_peak = timeline.peak_between(marks.after_step, marks.after_zero_grad)
    phases = [
        Phase("after_load", timeline.at(marks.start), "before forward"),
        Phase("end_of_forward", timeline.at(marks.end_of_forward), "before backward"),
        Phase("peak_backward", backward_peak[0]),
        Phase("after_backward", timeline.at(marks.after_backward)),
        Phase("optimizer_step", step_peak[0], "peak during the step"),
        Phase("after_zero_grad", timeline.at(marks.after_zero_grad), "after clearing gradients"),
    ]
    candidates = [
        (forward_peak, "forward"),
        (backward_peak, "backward"),
        (step_peak, "optimizer_step"),
        (zero_peak, "zero_grad"),
    ]
    (peak, where), phase = max(candidates, key=lambda c: c[0][0])
    return phases, peak, where, phase


def _notes(session: TraceSession, run: Any) -> list[str]:
    notes = list(getattr(run, "notes", []))
    backends = getattr(run, "backends", {})
    if backends:
        used = ", ".join(f"{k} ({v} calls)" for k, v in sorted(backends.items()))
        notes.append(f"attention kernels emulated: {used}")
    if session.cuda:
        notes.append(
            "CUDA target: sizes rounded to 512 B blocks; dropout saves bool masks; autocast "
            "uses CUDA's op lists"
        )
    else:
        notes.append("CPU target: what the CPU kernels allocate (no rounding)")
    return notes
