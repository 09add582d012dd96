"""Applying a parallel layout to the real transformers model, the way PyTorch users do it.

The plan is a :class:`~memplan.specs.parallel.ParallelPlan`. The same functions serve the fake trace (fake process group, fake tensors, full size) and the
real gloo runs (several processes, small models), so that the two can be compared.

- Data parallelism: ``DistributedDataParallel`` (its reducer's buckets, ``bucket_cap_mb`` 25),
  or FSDP2 ``fully_shard`` on every decoder layer and then on the root (layers resharded after
  forward under ``full``, not under ``shard-grad-op``; the root with FSDP2's default, held
  unsharded until the backward; with ``bf16-mixed`` the
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` instead of autocast).
- Tensor parallelism (torchtitan's plan for Llama, ``torchtitan/models/llama3/infra/
  parallelize.py`` ``apply_tp``): embeddings sharded by vocabulary rows (``RowwiseParallel``),
  q/k/v/gate/up column-wise, o/down row-wise, lm_head column-wise with its output gathered
  (``Replicate``, the logits whole on every rank: no loss parallelism). With sequence
  parallelism the norms run on sequence shards (``SequenceParallel``) and the attention and MLP
  inputs are all-gathered (``PrepareModuleInput``: ``Shard(1)`` to ``Replicate``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memplan.errors import SetupError
from memplan.specs.parallel import Offload, ParallelPlan, Sharding

__all__ = [
    "apply_data_parallel",
    "apply_tensor_parallel",
    "build_mesh",
    "check_traceable",
    "decoder_layers",
    "is_ddp",
    "is_fsdp",
]

_TRACED = (Sharding.DDP, Sharding.FSDP_FULL, Sharding.FSDP_SHARD_GRAD_OP)


def check_traceable(plan: ParallelPlan) -> None:
    """Refuse, in one line each, what the trace does not run (the analytic engine answers)."""
    if plan.sharding not in _TRACED:
        what = "DeepSpeed's runtime" if plan.sharding.is_deepspeed else f"--fsdp {plan.sharding}"
        raise SetupError(
            f"the distributed trace runs DDP, --fsdp full and --fsdp shard-grad-op; {what} is "
            "analytic only (memplan train with the same flags)"
        )
    for name, degree in (("cp", plan.cp_degree), ("ep", plan.ep_degree), ("pp", plan.pp_degree)):
        if degree > 1:
            raise SetupError(f"the distributed trace does not run --{name} {degree}: analytic only")
    if plan.offload is not Offload.NONE:
        raise SetupError(
            "offload cannot be traced (no host/device split under fake tensors): analytic only"
        )
    if plan.sharding is Sharding.DDP and plan.tp_degree > 1 and plan.dp > 1:
        raise SetupError("the trace runs DDP without tensor parallelism; use --fsdp with --tp")


def is_fsdp(plan: ParallelPlan) -> bool:
    return plan.sharding in (Sharding.FSDP_FULL, Sharding.FSDP_SHARD_GRAD_OP) and plan.dp > 1


def is_ddp(plan: ParallelPlan) -> bool:
    return plan.sharding is Sharding.DDP and plan.dp > 1


def build_mesh(plan: ParallelPlan) -> dict[str, Any]:
    """The cpu device meshes by name (``dp``, ``tp``), tp innermost (rank = dp_rank * tp +
    tp_rank, as Megatron-LM and :func:`memplan.estimate.distributed.rank_ids` number them).

    A one-dimensional plan gets a one-dimensional mesh: a dimension of size 1 would leave a
    one-element mesh tensor that DTensor views during the step, which a real run's trackers
    then count (8 bytes) and a fake run's do not.
    """
    from torch.distributed.device_mesh import init_device_mesh

    dp, tp = plan.dp, plan.tp_degree
    if tp == 1:
        return {"dp": init_device_mesh("cpu", (dp,), mesh_dim_names=("dp",))}
    if dp == 1:
        return {"tp": init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))}
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    return {"dp": mesh["dp"], "tp": mesh["tp"]}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers causal LM (``model.model.layers``)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise SetupError(
            f"{type(model).__name__}: no model.layers to shard per decoder layer; the "
            "distributed trace supports Llama-style models (model.model.layers)"
        )
    return list(layers)


def apply_tensor_parallel(model: nn.Module, mesh: Any, *, sequence_parallel: bool) -> None:
    """torchtitan's Llama plan on every decoder layer, the embeddings and the lm_head."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    sequence = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, Any] = {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=sequence),
        "lm_head": ColwiseParallel(
            input_layouts=sequence, output_layouts=Replicate(), use_local_output=True
        ),
    }
    if sequence_parallel:
        top["model.norm"] = SequenceParallel()
    parallelize_module(model, mesh, top)
    for layer in decoder_layers(model):
        plan: dict[str, Any] = {
            name: ColwiseParallel()
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        }
        plan["self_attn.o_proj"] = RowwiseParallel(output_layouts=sequence)
        plan.update(_mlp_plan(layer, sequence))
        if sequence_parallel:
            plan["input_layernorm"] = SequenceParallel()
            plan["post_attention_layernorm"] = SequenceParallel()
            plan["self_attn"] = PrepareModuleInput(
                input_kwarg_layouts={"hidden_states": Shard(1)},
                desired_input_kwarg_layouts={"hidden_states": Replicate()},
            )
            plan["mlp"] = PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            )
        parallelize_module(layer, mesh, plan)


def _mlp_plan(layer: nn.Module, sequence: Any) -> dict[str, Any]:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    mlp = getattr(layer, "mlp", None)
    if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise SetupError(
            "tensor parallelism in the trace covers gated MLPs (gate/up/down projections); "
            f"{type(mlp).__name__} is not one (MoE experts: analytic only)"
        )
    return {
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=sequence),
    }


def apply_data_parallel(
    model: nn.Module, mesh: Any, plan: ParallelPlan, *, mixed_bf16: bool, init_sync: bool = True
) -> nn.Module:
    """DDP or FSDP2 (per decoder layer, then the root) over the ``dp`` mesh dimension.

    Returns the module to call (DDP wraps; FSDP2 changes the model's class in place).
    ``init_sync=False`` skips DDP's check and broadcast of the parameters at construction
    (they read tensor data, which fake tensors do not have).
    """
    if not (is_ddp(plan) or is_fsdp(plan)):
        return model
    dp_mesh = mesh["dp"]
    if is_ddp(plan):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            process_group=dp_mesh.get_group(),
            bucket_cap_mb=plan.ddp_bucket_cap_mb,
            gradient_as_bucket_view=plan.gradient_as_bucket_view,
            init_sync=init_sync,
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_bf16
        else MixedPrecisionPolicy()
    )
    reshard = plan.sharding is Sharding.FSDP_FULL
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=policy)
    # the root with FSDP2's default (None): kept unsharded from forward to backward under
    # ``full`` ("the root module is typically required immediately when the backward pass
    # begins", fully_shard's docstring); ``shard-grad-op`` keeps every group unsharded
    root = None if reshard else False
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=root, mp_policy=policy)
    return model
