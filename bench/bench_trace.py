"""Benchmark of the trace engine: Llama-2-7B training step (batch 1, seq 2048, bf16
parameters, AdamW, sdpa, two iterations), time and peak RSS, beside PyTorch's MemTracker.

    python bench/bench_trace.py                 # memplan's trace
    python bench/bench_trace.py --memtracker    # also torch's MemTracker on the same step (~1 min)
    python bench/bench_trace.py --model llama-3.1-405b --layers 126

Prints one line per measurement and the phase table. Times are wall-clock seconds on this
machine; ``import`` is the one-off cost of importing torch and transformers.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def bench_memplan(model: str, batch: int, seq: int) -> None:
    started = time.perf_counter()
    import torch  # noqa: F401
    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.catalog import resolve
    from memplan.specs.training import Optimizer, Precision, TrainingSetup
    from memplan.trace.training import trace_training

    spec = resolve(model)
    # one-off lazy imports: torch._dynamo (through FakeTensorMode) and the model's module
    FakeTensorMode()
    getattr(transformers, (spec.hf_config or {}).get("architectures", ["LlamaForCausalLM"])[0])
    imported = time.perf_counter()
    setup = TrainingSetup(batch=batch, seq=seq, precision=Precision.BF16, optimizer=Optimizer.ADAMW)
    report = trace_training(spec, setup)
    done = time.perf_counter()
    print(f"imports (torch, transformers, torch._dynamo, model class): {imported - started:.2f} s")
    print(f"memplan trace ({spec.name}): {done - imported:.2f} s, peak RSS {rss_mib():.0f} MiB")
    print(f"  total wall time in this process: {done - started:.2f} s")
    print(f"  ops traced: {report.scalars['n_ops']}, peak {report.scalars['peak_bytes']:,} B")
    for phase in report.phases:
        print(f"  {phase.name:<28} {phase.bytes / 2**30:9.3f} GiB  {phase.bytes:,} B")
    for key in ("reserved_bytes", "tensor_bytes_at_peak", "flops"):
        print(f"  {key:<28} {report.scalars[key]:,}")


def bench_memtracker(model: str, batch: int, seq: int) -> None:
    """torch.distributed._tools.mem_tracker.MemTracker on the same fake step."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        print("MemTracker: not available in this torch")
        return
    from memplan.catalog import resolve
    from memplan.trace.build import build_model

    spec = resolve(model)
    started = time.perf_counter()
    with FakeTensorMode():
        net = build_model(
            spec.hf_config or {}, dtype=torch.bfloat16, attention="sdpa", dropout=None
        )
        optimizer = torch.optim.AdamW(net.parameters(), foreach=True)
        ids = torch.randint(0, spec.vocab_size, (batch, seq))
        tracker = MemTracker()
        tracker.track_external(net, optimizer)
        with tracker:
            for _ in range(2):
                loss = net(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                tracker.reset_mod_stats()
    peak = max(tracker.get_tracker_snapshot("peak")[torch.device("cpu")].values())
    print(f"MemTracker: {time.perf_counter() - started:.2f} s, peak {peak:,} B (CPU semantics)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--memtracker", action="store_true", help="also run torch's MemTracker")
    args = parser.parse_args()
    bench_memplan(args.model, args.batch, args.seq)
    if args.memtracker:
        bench_memtracker(args.model, args.batch, args.seq)


if __name__ == "__main__":
    main()
