"""Applying a parallel layout to the real transformers model, the way PyTorch users do it.

The same functions serve the fake trace (fake process group, fake tensors, full size) and the
real gloo runs (several processes, small models), so that the two can be compared.

- Data parallelism: ``DistributedDataParallel`` (its reducer's buckets, ``bucket_cap_mb`` 25),
  or FSDP2 ``fully_shard`` on every decoder layer and then on the root
  (``reshard_after_forward`` as given; with ``bf16-mixed`` the
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` instead of autocast).
- Tensor parallelism (torchtitan's plan for Llama, ``torchtitan/models/llama3/infra/
  parallelize.py`` ``apply_tp``): embeddings sharded by vocabulary rows (``RowwiseParallel``),
  q/k/v/gate/up column-wise, o/down row-wise, lm_head column-wise with its output gathered
  (``Replicate``, the logits whole on every rank: no loss parallelism). With sequence
  parallelism the norms run on sequence shards (``SequenceParallel``) and the attention and MLP
  inputs are all-gathered (``PrepareModuleInput``: ``Shard(1)`` to ``Replicate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from memplan.errors import SetupError

__all__ = ["Layout", "apply_data_parallel", "apply_tensor_parallel", "build_mesh", "decoder_layers"]

DataParallel = Literal["none", "ddp", "fsdp"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """How the trace drives PyTorch for one parallel plan (the runtime side of a plan)."""

    world_size: int
    data_parallel: DataParallel = "fsdp"
    """``ddp`` (DistributedDataParallel), ``fsdp`` (FSDP2 ``fully_shard``) or ``none``."""
    tp_degree: int = 1
    sequence_parallel: bool = False
    reshard_after_forward: bool = True
    """FSDP2: free the unsharded parameters after each layer's forward (``full``) or keep them
    to the backward (``shard-grad-op``)."""
    bucket_view: bool = False
    """DDP ``gradient_as_bucket_view``: the gradients are views into the buckets."""
    bucket_cap_mb: int = 25
    """DDP's bucket size (its default, ``torch/nn/parallel/distributed.py``)."""

    def __post_init__(self) -> None:
        if self.world_size % self.tp_degree:
            raise SetupError(
                f"tp({self.tp_degree}) does not divide the world size ({self.world_size})"
            )
        if self.sequence_parallel and self.tp_degree == 1:
            raise SetupError("sequence parallelism needs tensor parallelism (tp > 1)")

    @property
    def dp_degree(self) -> int:
        return self.world_size // self.tp_degree


def build_mesh(layout: Layout) -> Any:
    """The cpu device mesh: ``("dp",)``, ``("tp",)`` or ``("dp", "tp")``."""
    from torch.distributed.device_mesh import init_device_mesh

    if layout.tp_degree == 1:
        return init_device_mesh("cpu", (layout.world_size,), mesh_dim_names=("dp",))
    if layout.dp_degree == 1:
        return init_device_mesh("cpu", (layout.tp_degree,), mesh_dim_names=("tp",))
    return init_device_mesh(
        "cpu", (layout.dp_degree, layout.tp_degree), mesh_dim_names=("dp", "tp")
    )


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
    model: nn.Module, mesh: Any, layout: Layout, *, mixed_bf16: bool, init_sync: bool = True
) -> nn.Module:
    """DDP or FSDP2 (per decoder layer, then the root) over the ``dp`` mesh dimension.

    Returns the module to call (DDP wraps; FSDP2 changes the model's class in place).
    ``init_sync=False`` skips DDP's check and broadcast of the parameters at construction
    (they read tensor data, which fake tensors do not have).
    """
    if layout.data_parallel == "none" or (layout.dp_degree == 1 and layout.data_parallel == "ddp"):
        return model
    dp_mesh = mesh["dp"] if layout.tp_degree > 1 else mesh
    if layout.data_parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if layout.tp_degree > 1:
            raise SetupError("the trace runs DDP without tensor parallelism; use --fsdp with --tp")
        return DistributedDataParallel(
            model,
            process_group=dp_mesh.get_group(),
            bucket_cap_mb=layout.bucket_cap_mb,
            gradient_as_bucket_view=layout.bucket_view,
            init_sync=init_sync,
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_bf16
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(
            layer,
            mesh=dp_mesh,
            reshard_after_forward=layout.reshard_after_forward,
            mp_policy=policy,
        )
    fully_shard(
        model, mesh=dp_mesh, reshard_after_forward=layout.reshard_after_forward, mp_policy=policy
    )
    return model
