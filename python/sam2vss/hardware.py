"""The machine a result was measured on, as the one name every result file carries (STYLE.md 9).

On the CPU: `<arch>-<N>cpu-torch<version>`, e.g. `x86_64-2cpu-torch2.14.1`; on a CUDA device:
the GPU's name, sanitized, e.g. `nvidia-h200-torch2.11.0` (the GPU, not the host, sets those
numbers). The CPU model string (Intel(R) Xeon(R) ...) is not in the name: the results already in
benchmarks/results are named without it and the README links them, and Python has no portable
way to read it (platform.processor() is empty or just the architecture on most Linux builds;
/proc/cpuinfo is Linux-only). Imports only torch, so benchmarks/gpu_check.sh can run
`python -m sam2vss.hardware cuda` from the source tree before the package is installed.
"""

from __future__ import annotations

import os
import platform
import re
import sys

import torch


def environment(device: torch.device | str | None = None) -> str:
    """The name of the machine and torch version; `device` None means the CPU (the benchmark
    scripts' device), a CUDA device names its GPU."""
    version = torch.__version__.split("+")[0]  # 2.14.1+cu130 -> 2.14.1: the local build tag is noise
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        gpu = re.sub(r"[^a-z0-9.]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        return f"{gpu}-torch{version}"
    return f"{platform.machine()}-{os.cpu_count()}cpu-torch{version}"


def result_name(stem: str, ext: str = "json", device: torch.device | str | None = None) -> str:
    """`<stem>_<environment>.<ext>`, e.g. bench_w32_x86_64-2cpu-torch2.14.1.json."""
    return f"{stem}_{environment(device)}.{ext}"


def main(argv: list[str]) -> None:
    """`python -m sam2vss.hardware [DEVICE]` prints environment(DEVICE) (benchmarks/gpu_check.sh)."""
    print(environment(argv[0] if argv else None))


if __name__ == "__main__":
    main(sys.argv[1:])
