"""Report assembly for the training estimate: the Item tree at the peak, the Phase list,
the setup summary and the activation sections."""

from __future__ import annotations

from typing import Any

from memplan.estimate.train_plan import _NLL_SAVED, TrainingPlan
from memplan.estimate.train_step import PHASES, StepMemory, _model_section, _one
from memplan.formulas.activations import SOURCE as ACT_SOURCE
from memplan.formulas.activations import Saved
from memplan.report import Item, Phase, Report
from memplan.specs.model import ModelSpec
from memplan.specs.training import Checkpointing, Target, TrainingSetup

_PEAK_PHASE_NAMES = {
    "forward_peak": "forward",
    "end_of_forward": "forward",
    "peak_backward": "backward",
    "optimizer_step": "optimizer_step",
    "after_load": "forward",
    "after_backward": "backward",
    "after_zero_grad": "zero_grad",
}
"""The trace engine's ``peak_phase`` vocabulary (memplan.trace.__init__)."""


def _report(plan: TrainingPlan, setup: TrainingSetup, mem: StepMemory) -> Report:
    spec = plan.spec
    at_peak = mem.phases[mem.peak_phase]
    root = Item("peak", note=f"phase: {_PEAK_PHASE_NAMES[mem.peak_phase]}")
    params = root.add(Item("parameters", source="formulas/training.py param_tensors"))
    for key, value in plan.params.items():
        params.leaf(key, value, f"{_width_label(plan, key)} per parameter, 512 B blocks")
    if at_peak["gradients"]:
        grads = root.add(Item("gradients"))
        if at_peak["gradients"] == plan.grad_bytes:
            for key, value in plan.grads.items():
                grads.leaf(key, value, f"{plan.regime.grad_bytes} B per trainable parameter")
        else:
            grads.leaf("allocated_so_far", at_peak["gradients"], "gradients of the layers behind")
    if plan.state_bytes:
        states = root.add(Item("optimizer_states", note=setup.optimizer.value))
        for key, value in plan.states.items():
            states.leaf(key, value, "per trainable parameter", "formulas/optimizer.py")
    acts = root.add(Item("activations", source=ACT_SOURCE))
    if at_peak["activations"]:
        total = sum(mem.activations.values())
        nll = sum(
            _one(i, setup.batch, setup.seq, plan.round_to)
            for i in plan.head_saved
            if i.key in _NLL_SAVED
        )
        if at_peak["activations"] == total:
            _activation_children(acts, plan, setup, ())
        elif at_peak["activations"] == total - nll:
            _activation_children(acts, plan, setup, _NLL_SAVED)
        elif mem.backward_sections and mem.peak_phase == "peak_backward":
            for key, value in mem.backward_sections.items():
                acts.leaf(key, value, "saved tensors not yet freed by backward")
        else:
            acts.leaf("live", at_peak["activations"], "saved tensors not yet freed by backward")
    if at_peak["autocast_cache"]:
        root.leaf(
            "autocast_cache", at_peak["autocast_cache"], "half copies of linear weights and biases"
        )
    if at_peak["temporaries"]:
        temps = root.add(Item("temporaries"))
        for key, value in _temporaries_at(plan, mem, setup).items():
            temps.leaf(key, value)
    root.leaf("inputs", at_peak["inputs"], "input_ids + labels, int64 (B, S)")
    if at_peak["buffers"]:
        root.leaf("buffers", at_peak["buffers"], "rotary inv_freq tables, embed_scale")
    phases = [
        Phase(name, mem.phase_bytes(name), breakdown=dict(mem.phases[name])) for name in PHASES
    ]
    first_step = _first_step_phases(mem, plan.state_bytes)
    scalars: dict[str, Any] = {
        "peak_bytes": mem.peak_bytes,
        "peak_phase": _PEAK_PHASE_NAMES[mem.peak_phase],
        "first_step_peak_bytes": mem.first_step_peak,
        "trainable_params": plan.trainable_params,
        "method": "exact",
    }
    return Report(
        kind="training",
        model=spec.name,
        breakdown=root,
        setup=setup_summary(setup, spec),
        scalars=scalars,
        phases=phases,
        notes=list(plan.notes),
        first_step_phases=first_step,
    )


def _first_step_phases(mem: StepMemory, state_bytes: int) -> list[Phase]:
    """The phases of the first iteration: PyTorch's optimizers create their state lazily,
    inside the first ``step()`` (``torch/optim/adamw.py`` ``_init_group``), so every phase
    before ``optimizer_step`` is the steady state's less the optimizer states; from
    ``optimizer_step`` on they are live. Same rule as ``first_step_peak_bytes``."""
    out = []
    states_live = False
    for name in PHASES:
        states_live = states_live or name == "optimizer_step"
        parts = dict(mem.phases[name])
        if not states_live:
            parts["optimizer_states"] = parts.get("optimizer_states", 0) - state_bytes
        out.append(Phase(name, sum(parts.values()), breakdown=parts))
    return out


def _width_label(plan: TrainingPlan, key: str) -> str:
    if key == "lora_adapters":
        return "4 B"
    if key == "quantized_nf4":
        return "NF4 (0.5 B + block statistics)"
    return f"{plan.regime.param_bytes} B"


def activation_sections(
    plan: TrainingPlan, batch: int, seq: int, *, exclude: tuple[str, ...] = ()
) -> dict[str, dict[str, int]]:
    """Saved bytes by the trace engine's sections (``embedding``, ``layers``, ``final_norm``,
    ``lm_head``, ``loss``, ``other``), each by tensor key (layers summed over layers)."""
    r = plan.round_to
    out: dict[str, dict[str, int]] = {}

    def add(section: str, key: str, value: int) -> None:
        bucket = out.setdefault(section, {})
        bucket[key] = bucket.get(key, 0) + value

    ckpt = plan.setup.checkpointing is Checkpointing.FULL
    for item in plan.model_saved:
        add(_model_section(item.key, ckpt, plan.setup.is_lora), item.key, _one(item, batch, seq, r))
    for group in plan.layers:
        for item in group.saved:
            value = group.count * _one(item, batch, seq, r)
            if ckpt and group.first and item.key == "checkpoint/layer_input":
                add("embedding", "checkpoint/layer_0_input", value)  # made by the embeddings
            else:
                add("layers", item.key, value)
    for item in plan.head_saved:
        if item.key in exclude:
            continue
        section = item.key.split("/")[0]
        add(section if section in ("final_norm", "lm_head", "loss") else "other", item.key,
            _one(item, batch, seq, r))  # fmt: skip
    return out


def _activation_children(
    acts: Item, plan: TrainingPlan, setup: TrainingSetup, exclude: tuple[str, ...]
) -> None:
    sections = activation_sections(plan, setup.batch, setup.seq, exclude=exclude)
    formulas = {item.key: _formula(item) for item in plan.model_saved + plan.head_saved}
    for group in plan.layers:
        formulas.update((item.key, _formula(item)) for item in group.saved)
    for name in ("embedding", "layers", "final_norm", "lm_head", "loss", "other"):
        if name not in sections:
            continue
        node = acts.add(Item(name, note=f"{plan.spec.n_layers} layers" if name == "layers" else ""))
        if name != "layers":
            for key, value in sections[name].items():
                node.leaf(key.split("/", 1)[-1], value, formulas.get(key, ""))
            continue
        groups: dict[str, Item] = {}
        for key, value in sections[name].items():
            head, _, tail = key.partition("/")
            sub = groups.get(head)
            if sub is None:
                sub = groups[head] = node.add(Item(head))
            sub.leaf(tail or head, value, formulas.get(key, ""))


def _formula(item: Saved) -> str:
    parts = []
    if item.per_token:
        parts.append(f"B*S*{item.per_token}")
    if item.per_score:
        parts.append(f"B*S*S*{item.per_score}")
    if item.per_row:
        parts.append(
            f"B*S{'(pad ' + str(item.align) + ')' if item.align > 1 else ''}*{item.per_row}"
        )
    if item.per_position:
        parts.append(f"S*{item.per_position}")
    if item.fixed:
        parts.append(str(item.fixed))
    return f"({' + '.join(parts)}) x {item.elem_bytes} B"


def _temporaries_at(plan: TrainingPlan, mem: StepMemory, setup: TrainingSetup) -> dict[str, int]:
    value = mem.phases[mem.peak_phase]["temporaries"]
    if mem.peak_phase == "optimizer_step":
        return {"optimizer_step": value}
    if mem.peak_phase == "forward_peak":
        return {"logits_and_loss": value}
    return {next(iter(mem.temporaries)): value}


def setup_summary(setup: TrainingSetup, spec: ModelSpec | None = None) -> dict[str, Any]:
    """The setup block: every choice that shapes the estimate, none that is off or empty."""
    out: dict[str, Any] = {
        "batch": setup.batch,
        "seq": setup.seq,
        "precision": setup.precision.value,
        "optimizer": setup.optimizer.value,
        "attention": setup.attention.value,
        "checkpointing": setup.checkpointing.value,
    }
    if setup.is_lora:
        out["lora"] = (
            f"rank {setup.lora_rank}, alpha {setup.lora_alpha:g}, "
            f"{_targets_label(setup.lora_targets, spec)}"
        )
    if setup.qlora:
        out["qlora"] = (
            "NF4 base weights with double quantization (bitsandbytes), bf16 compute, fp32 adapters"
        )
    if setup.dropout is not None:
        out["dropout"] = setup.dropout
    if setup.fp32_grad_accumulation:
        out["fp32_grad_accumulation"] = True
    if setup.freeze_layers:
        out["freeze_layers"] = setup.freeze_layers
    if setup.freeze_embeddings:
        out["freeze_embeddings"] = True
    if setup.target is not Target.CUDA:
        out["target"] = setup.target.value
    return out


def _targets_label(targets: tuple[str, ...], spec: ModelSpec | None) -> str:
    names = ",".join(targets)
    if spec is not None:
        from memplan.estimate.train_setup import _linear_modules

        if set(targets) == set(_linear_modules(spec)):
            return f"all linear layers ({names})"
    return names
