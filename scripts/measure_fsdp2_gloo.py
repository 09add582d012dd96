"""Measure one FSDP2 training step per rank on gloo (CPU), as recorded in
tests/data/distributed/fsdp2_gloo_tiny_llama.json.

Tiny Llama of tests/data/trace_tiny_configs.json, fp32, batch 2, seq 32, AdamW (CPU: the
for-loop step), ``fully_shard`` per decoder layer plus the root on a 1-D CPU mesh, PyTorch's
MemTracker around model and optimizer, the peak snapshot of iteration 2 (``reset_mod_stats``
before it). DIST-NOTES.md has the recipe.

Usage: ``python scripts/measure_fsdp2_gloo.py 2 fsdp`` (world size, mode); writes
``/tmp/gdist/fsdp<W>.<rank>.json``.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, world, mode, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = "29533"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    with open("tests/data/trace_tiny_configs.json") as f:
        cfg = json.load(f)["llama"]
    cfg.pop("model_type")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
    mesh = init_device_mesh("cpu", (world,))
    if mode == "fsdp":
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (2, 32))
    mt = MemTracker()
    mt.track_external(model, opt)
    with mt:
        for it in range(2):
            if it == 1:
                mt.reset_mod_stats()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    snap = mt.get_tracker_snapshot("peak")
    res = {
        str(dev): {str(k).split(".")[-1]: v for k, v in cats.items()} for dev, cats in snap.items()
    }
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1])
    mode = sys.argv[2]
    os.makedirs("/tmp/gdist", exist_ok=True)
    mp.spawn(run, args=(world, mode, f"/tmp/gdist/{mode}{world}"), nprocs=world)
