"""A real pipeline-parallel step on gloo (``torch.distributed.pipelining``), measured per stage.

One process per stage (``pp`` ranks, no other parallelism). The real transformers model is built
whole on every rank with the same seed and cut the way the analytic engine assumes
(:func:`memplan.estimate.dist_states.stage_layers`): the first stage keeps the token
embeddings and its decoder layers, the last its layers, the final norm and the lm_head, and
the loss is computed on the last stage by the schedule (transformers' own causal-LM loss). Each
stage runs the model's own forward (``LlamaForCausalLM.forward``), with the missing ends
replaced: the first stage returns its hidden states (norm and lm_head are identities), the
others start from the hidden states they receive (``inputs_embeds``).

``torch.distributed.pipelining`` runs the schedule (:class:`ScheduleGPipe` or
:class:`Schedule1F1B`) over ``M`` micro-batches of ``setup.batch`` sequences with static stage
metadata: its runtime shape inference calls ``autograd.grad`` and collides with MemTracker's
hooks (DIST-NOTES.md). PyTorch's MemTracker (:class:`PipelineProbe`) measures the second
optimizer step; its root module runs once per micro-batch, which MemTracker refuses as "multiple
iterative calls" unless it is told to forget the previous call (:class:`PipelineMemTracker`).

Phases of a pipeline step (the analytic engine's names, ``estimate.dist_rank``):

- ``after_load``, ``after_backward``, ``optimizer_step`` (the peak of ``optimizer.step()``),
  ``after_zero_grad``: as for one GPU;
- ``end_of_forward``: the most live bytes at the start of a micro-batch's backward, where the
  stage holds its most micro-batches in flight (the forwards the schedule ran before it);
- ``peak_backward``: the peak of the whole schedule step (forwards and backwards interleave).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker

from memplan.specs.parallel import ParallelPlan, Schedule
from memplan.specs.training import TrainingSetup
from memplan.trace.gloo import MemTrackerProbe

__all__ = ["PipelineMemTracker", "PipelineProbe", "run_pipeline_training", "stage_module"]


class PipelineMemTracker(MemTracker):  # type: ignore[misc]
    """MemTracker that lets the stage's root module run once per micro-batch: a root module
    called again in the forward starts a new record (its previous call's is dropped), where
    MemTracker itself refuses "multiple iterative calls"."""

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        name = self._mod_tracker.get_known_fqn(module)
        root = set(self._mod_tracker.parents) - {name} == {"Global"}
        if module in self.memory_tracking and not self._mod_tracker.is_bw and root:
            del self.memory_tracking[module]
        super()._pre_fw_hook(module, inputs)


class PipelineProbe(MemTrackerProbe):
    """MemTracker at the step's boundaries, plus the live bytes before each micro-batch's
    backward (``end_of_forward``: the largest of them)."""

    def __init__(self) -> None:
        super().__init__(fsdp=False)
        self.before_backward: list[dict[str, Any]] = []

    def start(self) -> Any:
        self.tracker = PipelineMemTracker()
        return self.tracker

    def backward_starts(self, iteration: int) -> None:
        """Called at the start of each micro-batch's backward; the peak is left running. No
        barrier here (:meth:`settle`): the other stage may be waiting for this one's sends."""
        self.before_backward.append({"iteration": iteration, "current": self._snapshot("current")})

    def result(self) -> dict[str, Any]:
        """Per phase of iteration 2, as :meth:`MemTrackerProbe.result`, with ``end_of_forward``
        the largest live bytes before a backward and ``peak_backward`` the schedule's peak."""
        at = {p["point"]: p for p in self.points if p["iteration"] == 1}
        points = [p["current"] for p in self.before_backward if p["iteration"] == 1]
        spans = {
            "after_load": at["start"]["current"],
            "end_of_forward": max(points, key=lambda snap: snap.get("Total", 0)),
            "peak_backward": at["after_backward"]["peak"],
            "after_backward": at["after_backward"]["current"],
            "optimizer_step": at["after_step"]["peak"],
            "after_zero_grad": at["after_zero_grad"]["current"],
        }
        ends = ("after_backward", "after_step", "after_zero_grad")
        return {
            "phases": {name: snap.get("Total", 0) for name, snap in spans.items()},
            "categories": {
                name: {k: v for k, v in snap.items() if k != "Total" and v}
                for name, snap in spans.items()
            },
            "peak_bytes": max(at[p]["peak"].get("Total", 0) for p in ends),
        }


def stage_module(model: nn.Module, layers: tuple[int, ...], first: bool, last: bool) -> nn.Module:
    """``model`` cut to one pipeline stage: its decoder layers ``layers``, the embeddings on
    the first stage, the final norm and lm_head on the last (the others become identities or
    are dropped), wrapped so that the stage returns one tensor."""
    inner: Any = model.model
    inner.layers = nn.ModuleList(inner.layers[i] for i in layers)
    if not first:
        inner.embed_tokens = None
    if not last:
        inner.norm = nn.Identity()
        model.lm_head = nn.Identity()
    return _Stage(model, first)


class _Stage(nn.Module):
    """One stage: the causal LM's own forward on token ids (first stage) or on the hidden
    states received from the previous stage; the logits (last stage) or hidden states out."""

    def __init__(self, model: nn.Module, first: bool) -> None:
        super().__init__()
        self.model = model
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            out = self.model(input_ids=x, use_cache=False)
        else:
            out = self.model(inputs_embeds=x, use_cache=False)
        return out.logits  # type: ignore[no-any-return]


def _stage_metadata(
    config: dict[str, Any], setup: TrainingSetup, first: bool, last: bool
) -> dict[str, Any]:
    """Static shapes of what the stage receives and sends (meta tensors), so that the schedule
    skips its runtime shape inference."""
    b, s, h = setup.batch, setup.seq, int(config["hidden_size"])
    hidden = torch.empty(b, s, h, device="meta")
    out = {
        "input_args": torch.empty(b, s, dtype=torch.long, device="meta") if first else hidden,
        "output_args": torch.empty(b, s, int(config["vocab_size"]), device="meta")
        if last
        else hidden,
    }
    if not first:
        out["input_grads"] = hidden
    if not last:
        out["output_grads"] = hidden
    return out


def _schedule_class(plan: ParallelPlan) -> Any:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    if plan.schedule is Schedule.GPIPE:
        return ScheduleGPipe
    if plan.schedule is Schedule.ONE_F_ONE_B and plan.virtual_stages == 1:
        return Schedule1F1B
    raise ValueError(f"the gloo pipeline runs gpipe and 1f1b, not {plan.schedule}")


def run_pipeline_training(
    config: dict[str, Any], setup: TrainingSetup, plan: ParallelPlan, probe: PipelineProbe
) -> float:
    """Two optimizer steps of this rank's pipeline stage (``dist.get_rank()``), measured by
    ``probe``; the seconds they took."""
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage

    from memplan.estimate.dist_states import stage_layers
    from memplan.specs.hf import spec_from_config
    from memplan.trace.build import build_model
    from memplan.trace.optim import make_optimizer

    started = time.perf_counter()
    if plan.pp_degree != plan.world_size or plan.pp_degree != dist.get_world_size():
        raise ValueError("the gloo pipeline runs pipeline parallelism alone, one stage per rank")
    stage = dist.get_rank()
    first, last = stage == 0, stage == plan.pp_degree - 1
    layers = stage_layers(spec_from_config(config), plan, stage)
    micro = plan.resolved_micro_batches(setup.batch)
    torch.manual_seed(0)
    model = build_model(config, dtype=torch.float32, attention="sdpa", dropout=setup.dropout)
    model.train()
    module = stage_module(model, layers, first, last)
    meta = _stage_metadata(config, setup, first, last)
    pipe = PipelineStage(module, stage, plan.pp_degree, torch.device("cpu"), **meta)
    loss_fn = _causal_lm_loss(model, int(config["vocab_size"]))  # every stage: it means "train"
    schedule = _schedule_class(plan)(pipe, n_microbatches=micro, loss_fn=loss_fn)
    with probe.start():
        optimizer = make_optimizer(module.parameters(), setup.optimizer, cuda=False)
        vocab, shape = int(config["vocab_size"]), (setup.batch * micro, setup.seq)
        tokens = torch.randint(0, vocab, shape) if first else None
        labels = torch.randint(0, vocab, shape) if last else None
        with probe.attach(module, optimizer, {}):
            for iteration in range(2):
                _step(schedule, pipe, optimizer, probe, iteration, tokens, labels)
    return time.perf_counter() - started


def _causal_lm_loss(model: nn.Module, vocab: int) -> Any:
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model.loss_function(logits=logits, labels=labels, vocab_size=vocab)  # type: ignore[operator,no-any-return]

    return loss


def _step(
    schedule: Any,
    pipe: Any,
    optimizer: torch.optim.Optimizer,
    probe: PipelineProbe,
    iteration: int,
    tokens: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> None:
    """One optimizer step: the schedule over every micro-batch, then the optimizer."""
    probe.settle()
    probe.mark(iteration, "start")
    backward = pipe.backward_one_chunk

    def watched(*args: Any, **kwargs: Any) -> Any:
        probe.backward_starts(iteration)
        return backward(*args, **kwargs)

    pipe.backward_one_chunk = watched  # this instance only: removed below
    try:
        args = (tokens,) if tokens is not None else ()
        schedule.step(*args, target=labels, return_outputs=False)
    finally:
        del pipe.backward_one_chunk
    probe.settle()
    probe.mark(iteration, "after_backward")
    optimizer.step()
    probe.settle()
    probe.mark(iteration, "after_step")
    optimizer.zero_grad(set_to_none=True)
    probe.settle()
    probe.mark(iteration, "after_zero_grad")
