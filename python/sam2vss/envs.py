"""Every environment variable sam2vss reads, in one place."""

from __future__ import annotations

import os

# Kernel backend for the per-pixel ops: "auto" (host on CPU, cupy on CUDA when available),
# or force one of "torch", "host", "cupy". "torch" runs the reference twins everywhere.
SAM2VSS_KERNELS: str = os.environ.get("SAM2VSS_KERNELS", "auto").strip().lower()

# CuPy/NVRTC cache folder for compiled kernels (default: CuPy's own cache).
SAM2VSS_KERNEL_CACHE: str | None = os.environ.get("SAM2VSS_KERNEL_CACHE") or None

# Where compiled model artifacts (TensorRT engines) are cached, outside the package
# (default ~/.cache/sam2vss); keyed by model, bucket, library versions and GPU architecture.
SAM2VSS_CACHE: str | None = os.environ.get("SAM2VSS_CACHE") or None

# Test hook for fault tolerance: the refine worker exits abruptly (like a killed process) after
# writing this many frames. Unset in normal use.
SAM2VSS_FAULT_EXIT_AFTER: int | None = (
    int(os.environ["SAM2VSS_FAULT_EXIT_AFTER"]) if os.environ.get("SAM2VSS_FAULT_EXIT_AFTER") else None
)
SAM2VSS_FAULT_ONCE: str | None = os.environ.get("SAM2VSS_FAULT_ONCE") or None
# SAM2VSS_FAULT_PAUSE=PATH (tests only): after its first written frame, a refine run creates
# PATH.paused and waits until PATH exists, so a test can hold it mid-video.
SAM2VSS_FAULT_PAUSE: str | None = os.environ.get("SAM2VSS_FAULT_PAUSE") or None

# SAM2VSS_DEBUG=1: the CLI prints the traceback above its one-line error (as --debug does).
SAM2VSS_DEBUG: bool = os.environ.get("SAM2VSS_DEBUG", "").strip() not in ("", "0")
