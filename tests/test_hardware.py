"""Result files are named by sam2vss.hardware: the CPU format the committed results use, the
sanitized GPU name on CUDA, and every file in benchmarks/results still matches one of the two."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sam2vss import hardware

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CPU_NAME = r"[a-z0-9_]+-\d+cpu-torch\d+\.\d+\.\d+"
GPU_NAME = r"[a-z0-9.-]+-torch\d+\.\d+\.\d+"


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")


def test_cpu_name_keeps_the_committed_format(machine):
    assert hardware.environment() == hardware.environment("cpu") == "x86_64-2cpu-torch2.14.1"
    assert hardware.result_name("bench_w32") == "bench_w32_x86_64-2cpu-torch2.14.1.json"
    assert hardware.result_name("bench_windows", "png") == "bench_windows_x86_64-2cpu-torch2.14.1.png"


@pytest.mark.parametrize(
    ("gpu", "want"),
    [
        ("NVIDIA H200", "nvidia-h200"),
        ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
        ("NVIDIA A100-SXM4-80GB", "nvidia-a100-sxm4-80gb"),
        (" Tesla T4 (MIG 1g.5gb) ", "tesla-t4-mig-1g.5gb"),
    ],
)
def test_gpu_name_is_sanitized(machine, monkeypatch, gpu, want):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert hardware.environment("cuda:0") == f"{want}-torch2.11.0"
    assert re.fullmatch(GPU_NAME, hardware.environment(torch.device("cuda")))
    assert hardware.result_name("bench", device="cuda") == f"bench_{want}-torch2.11.0.json"


def test_main_prints_the_name(machine, capsys):
    hardware.main([])
    assert capsys.readouterr().out == "x86_64-2cpu-torch2.14.1\n"


@pytest.mark.parametrize("path", sorted(RESULTS.iterdir()), ids=lambda p: p.name)
def test_committed_results_carry_an_environment_name(path):
    assert re.fullmatch(rf"[a-z0-9_.]+_({CPU_NAME}|{GPU_NAME})\.(json|png)", path.name), path.name
