"""The GPU catalog: names, figures with sources, the --gpu flags, `memplan gpus`."""

from __future__ import annotations

import argparse
import json

import pytest

from memplan.catalog.gpus import list_gpus, resolve_gpu
from memplan.cli.common import add_gpu_flags, gpu_from_args
from memplan.cli.main import main
from memplan.errors import SetupError, UnknownGpuError
from memplan.units import GIB, MIB

REQUIRED = [
    "A100-SXM-40GB", "A100-SXM-80GB", "A100-PCIe-40GB", "A100-PCIe-80GB", "H100-SXM-80GB",
    "H100-PCIe-80GB", "H100-NVL-94GB", "H200-SXM-141GB", "B200-180GB", "GH200-96GB", "L4",
    "L40S", "A10G", "RTX-3090", "RTX-4090", "RTX-5090", "V100-SXM2-32GB", "MI250X", "MI300X",
    "T4", "V100-SXM2-16GB", "A10", "A40", "RTX-A6000", "L40", "H20", "H200-NVL-141GB", "GB200",
    "MI325X",
]  # fmt: skip


def test_catalog_has_every_required_gpu_with_sources() -> None:
    names = {gpu.name for gpu in list_gpus()}
    assert set(REQUIRED) <= names
    for gpu in list_gpus():
        assert gpu.sources and gpu.memory_bytes > 0 and gpu.memory_bandwidth_bytes_per_s
        assert "bf16" in gpu.tflops or gpu.name.startswith(("V100", "T4"))


@pytest.mark.parametrize(
    "name", ["H100", "H100-SXM", "h100-sxm-80gb", "NVIDIA H100 SXM5", "h100_sxm"]
)
def test_common_forms(name: str) -> None:
    assert resolve_gpu(name).name == "H100-SXM-80GB"


def test_figures() -> None:
    h100 = resolve_gpu("H100")
    assert h100.memory_bytes == 81559 * MIB
    assert h100.peak_flops_per_s("bf16") == 989.5e12
    assert h100.peak_flops_per_s("bfloat16") == 989.5e12
    assert resolve_gpu("a100").peak_flops_per_s("fp32") == 19.5e12
    assert resolve_gpu("A100-40GB").memory_bytes == 40448 * MIB  # 39.50 GiB: cudaMemGetInfo
    assert resolve_gpu("A100-40GB").datasheet_memory_bytes == 40 * GIB
    with pytest.raises(SetupError, match="no peak fp8"):
        resolve_gpu("A100").peak_flops_per_s("fp8")


def test_unknown_gpu_suggests_close_names() -> None:
    with pytest.raises(UnknownGpuError, match=r"did you mean.*H100"):
        resolve_gpu("H1000")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_gpu_flags(parser)
    return parser.parse_args(list(argv))


def test_gpu_flags() -> None:
    assert gpu_from_args(_args()) is None
    custom = gpu_from_args(
        _args("--gpu-memory", "24GiB", "--tflops", "100", "--bandwidth", "1TB/s")
    )
    assert custom is not None
    assert custom.memory_bytes == 24 * GIB
    assert custom.peak_flops_per_s("fp8") == 100e12
    assert custom.bandwidth_bytes_per_s() == 1e12
    mig = gpu_from_args(_args("--gpu", "H100", "--gpu-memory", "40GiB"))
    assert mig is not None and mig.memory_bytes == 40 * GIB and mig.tflops["bf16"] == 989.5
    with pytest.raises(SetupError, match="--gpu-memory"):
        gpu_from_args(_args("--tflops", "100"))
    with pytest.raises(SetupError, match="bandwidth"):
        gpu_from_args(_args("--gpu-memory", "8GiB", "--bandwidth", "fast"))


def test_cli_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in REQUIRED)
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in data} >= set(REQUIRED)
    assert main(["gpus", "--sources"]) == 0
    assert "datasheet" in capsys.readouterr().out
