"""The `cupy` backend: the kernels of kernels/*.cu on CUDA tensors, through CuPy.

Modules come from the fatbins CMake built (sam2vss/fatbin/, matched to the device's SM) or, when
there is none for this GPU, from the sources compiled by NVRTC (CuPy caches the result; set
SAM2VSS_KERNEL_CACHE to choose the folder). Tensors are shared zero-copy through DLPack and every
launch runs on torch's current stream, so nothing here synchronises. Only kernels.py calls this
module; it checks the inputs first.

Written for the GPU and compiled in CI, but not executed there (no GPU): tests marked `cupy`.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import torch

from sam2vss import envs

_THREADS = 256
_MAX_BLOCKS = 4096  # grid-stride loops: enough blocks to fill an H100 several times over


def available() -> bool:
    """CuPy imports, sees a CUDA device, and torch has CUDA."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy imports without a GPU and fails on first use
        return False


def _kernel_dirs() -> list[Path]:
    pkg = Path(__file__).resolve().parent
    return [pkg / "kernel_src", pkg.parents[1] / "kernels"]  # installed copy, then a source checkout


@cache
def _module(op: str):
    import cupy

    if envs.SAM2VSS_KERNEL_CACHE:
        os.environ.setdefault("CUPY_CACHE_DIR", envs.SAM2VSS_KERNEL_CACHE)
    major, minor = torch.cuda.get_device_capability()
    fatbin = Path(__file__).resolve().parent / "fatbin" / f"{op}.fatbin"
    if fatbin.is_file() and f"sm_{major}{minor}" in (fatbin.parent / f"{op}.ptxas.txt").read_text():
        return cupy.RawModule(path=str(fatbin))
    for folder in _kernel_dirs():
        src = folder / f"{op}.cu"
        if src.is_file():
            # --fmad=false: no contraction, so results round exactly like the torch twins
            return cupy.RawModule(code=src.read_text(), options=("-std=c++17", "--fmad=false", f"-I{folder}"))
    raise RuntimeError(f"CUDA source {op}.cu not found in {', '.join(map(str, _kernel_dirs()))}")


def _launch(op: str, name: str, n: int, *args, blocks: int | None = None) -> None:
    """Kernel `name` of kernels/<op>.cu over n elements (grid-stride) or on `blocks` blocks."""
    import cupy

    blocks = blocks or max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with stream:
        _module(op).get_function(name)((blocks,), (_THREADS,), args)


def _ptr(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t)


def band_rows(lab: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = lab.shape
    rmin, rmax = torch.empty_like(lab), torch.empty_like(lab)
    _launch(
        "boundary",
        "svs_band_rows",
        h * w,
        _ptr(lab),
        np.int32(h),
        np.int32(w),
        np.int32(r),
        _ptr(rmin),
        _ptr(rmax),
    )
    return rmin, rmax


def band(lab: torch.Tensor, k: int, pad_border: bool) -> torch.Tensor:
    h, w = lab.shape
    rmin, rmax = band_rows(lab, k // 2)
    out = torch.empty_like(lab)
    _launch(
        "boundary",
        "svs_band",
        h * w,
        _ptr(rmin),
        _ptr(rmax),
        np.int32(h),
        np.int32(w),
        np.int32(k // 2),
        np.bool_(pad_border),
        _ptr(out),
    )
    return out.bool()


def frame_counts(
    gt: torch.Tensor, pred: torch.Tensor, c: int, k: int, pad_border: bool, void_drop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = gt.shape
    conf = torch.zeros(c * c, dtype=torch.int64, device=gt.device)  # counted as u64 in the kernels
    bconf = torch.zeros((c + 1) ** 2, dtype=torch.int64, device=gt.device)
    _launch(
        "confusion", "svs_confusion", h * w, _ptr(gt), _ptr(pred), np.int64(h * w), np.int32(c), _ptr(conf)
    )
    gmin, gmax = band_rows(gt, k // 2)
    pmin, pmax = band_rows(pred, k // 2)
    _launch(
        "boundary",
        "svs_band_counts",
        h * w,
        _ptr(gt),
        _ptr(pred),
        _ptr(gmin),
        _ptr(gmax),
        _ptr(pmin),
        _ptr(pmax),
        np.int32(h),
        np.int32(w),
        np.int32(c),
        np.int32(k // 2),
        np.bool_(pad_border),
        np.bool_(void_drop),
        _ptr(bconf),
    )
    return conf, bconf


def vc_step(
    g, p, prev_g, prev_p, run_g, run_p, first: bool, cap: int, ns: list[int], ns_t: torch.Tensor
) -> torch.Tensor:
    """`ns_t`: the window lengths `ns` as an int32 device tensor ([0] for none), uploaded once
    by the caller (a fresh torch.tensor here would be a blocking copy per frame)."""
    if len(ns) > 8:
        raise ValueError(f"vc_step on CUDA supports at most 8 window lengths at once, got {len(ns)}")
    n = g.numel()
    counts = torch.zeros(2 * max(len(ns), 1), dtype=torch.int64, device=g.device)
    _launch(
        "consistency",
        "svs_vc_step",
        n,
        _ptr(g),
        _ptr(p),
        _ptr(prev_g),
        _ptr(prev_p),
        _ptr(run_g),
        _ptr(run_p),
        np.int64(n),
        np.bool_(first),
        np.uint8(cap),
        _ptr(ns_t),
        np.int32(len(ns)),
        _ptr(counts),
    )
    return counts[: 2 * len(ns)]


def aggregate(logits, rank, labels, c: int, by_logit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n, h, w = logits.shape
    big_h, big_w = labels.shape
    ids = torch.empty((big_h, big_w), dtype=torch.int32, device=labels.device)
    hist = torch.zeros((n, c), dtype=torch.int64, device=labels.device)
    _launch(
        "aggregate",
        "svs_aggregate",
        big_h * big_w,
        _ptr(logits),
        np.int32(n),
        np.int32(h),
        np.int32(w),
        _ptr(rank),
        _ptr(labels),
        np.int32(big_h),
        np.int32(big_w),
        np.int32(c),
        np.bool_(by_logit),
        _ptr(ids),
        _ptr(hist),
    )
    return ids, hist


def decide(hist: torch.Tensor) -> torch.Tensor:
    n, c = hist.shape
    classes = torch.empty(n, dtype=torch.uint8, device=hist.device)
    _launch("vote", "svs_decide", max(n, 1), _ptr(hist), np.int32(n), np.int32(c), _ptr(classes))
    return classes


def paint(ids, classes, labels) -> torch.Tensor:
    out = torch.empty_like(labels)
    n = labels.numel()
    _launch("vote", "svs_paint", n, _ptr(ids), _ptr(classes), _ptr(labels), np.int64(n), _ptr(out))
    return out


def amg_stats(logits, thr: float, offset: float, out_hw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, w = logits.shape
    stability = torch.empty(b, dtype=torch.float32, device=logits.device)
    area = torch.empty(b, dtype=torch.int64, device=logits.device)
    boxes = torch.empty((b, 4), dtype=torch.int32, device=logits.device)
    if b:  # one block per candidate
        _launch(
            "amg_stats",
            "svs_amg_stats",
            b * h * w,
            _ptr(logits),
            np.int32(h),
            np.int32(w),
            np.float32(thr),
            np.float32(offset),
            np.int32(out_hw[0]),
            np.int32(out_hw[1]),
            _ptr(stability),
            _ptr(area),
            _ptr(boxes),
            blocks=b,
        )
    return stability, area, boxes
