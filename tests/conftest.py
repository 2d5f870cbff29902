"""Markers by hardware (gpu, cupy, tensorrt) and cost (slow), auto-skipped with a reason."""

from __future__ import annotations

import importlib.util
import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cupy() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy imports without a GPU and fails on first use
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or os.environ.get("SAM2VSS_RUN_SLOW") == "1"
    reasons = {
        "slow": None if run_slow else "slow test: run with --runslow or SAM2VSS_RUN_SLOW=1 (make test-all)",
        "gpu": None if _cuda() else "needs a CUDA device",
        "cupy": None if _cupy() else "needs CuPy with a working CUDA device",
        "tensorrt": None
        if importlib.util.find_spec("torch_tensorrt") and _cuda()
        else "needs torch-tensorrt and a CUDA device",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
