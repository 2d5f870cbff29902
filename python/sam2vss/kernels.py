"""One dispatch for the per-pixel ops: `torch` twin, `host` build or `cupy` (DESIGN.md "Kernels").

Dispatch happens once, when a KernelOps is built: it takes the backend's implementation from a
table (`_IMPLS`: one class per backend with the same methods, STYLE.md 20), and each op checks
its inputs and calls it; no op branches on the backend.

The backend is chosen once per device with written-out guards and logged once:
- CPU tensors: `host` when the native module sam2vss._host imports (it is built by every
  install), else `torch`;
- CUDA tensors: `cupy` when CuPy works with the device and the kernels are loadable, else
  `torch`;
- SAM2VSS_KERNELS=torch|host|cupy forces one (an unavailable forced backend is an error, never
  a silent fallback).
All input checks (dtype, shape, device, contiguity) live here, at each op's entry. The host ops write
into fresh int64 outputs, so callers may run them on several threads at once (each op releases
the GIL; one OpenMP thread each, since the callers already parallelise over frames).
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache

import torch

from sam2vss import cuda_kernels, envs
from sam2vss.config import MetricConfig
from sam2vss.detect import amg_stats
from sam2vss.metrics import VCState, Workspace, frame_counts, label_band, vc_step
from sam2vss.vote import aggregate_logits, aggregate_ranked, decide, paint, upsample_logits, vote_counts

log = logging.getLogger(__name__)

BACKENDS = ("torch", "host", "cupy")


@cache
def _host_module():
    try:
        from sam2vss import _host
    except ImportError as e:  # a source checkout that was never built with `pip install -e .`
        log.debug("sam2vss._host unavailable: %s", e)
        return None
    return _host


def _labels(*tensors: torch.Tensor, device_type: str) -> list[torch.Tensor]:
    """Label maps must be (H, W) uint8 on one device and of one shape; returns contiguous ones."""
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.dtype != torch.uint8 or t.dim() != 2:
            raise ValueError(
                f"kernel input {i}: expected an (H, W) uint8 label map, got {t.dtype} {tuple(t.shape)}"
            )
        if t.shape != shape:
            raise ValueError(f"kernel input {i}: shape {tuple(t.shape)} differs from input 0 {tuple(shape)}")
        if t.device.type != device_type:
            raise ValueError(f"kernel input {i}: on {t.device}, expected a {device_type} tensor")
        if t.numel() >= 2**31:
            raise ValueError(f"kernel input {i}: {t.numel()} pixels exceed the 2^31 index limit")
    return [t.contiguous() for t in tensors]


def _check(op: str, device_type: str, **tensors: torch.Tensor) -> torch.device:
    """Every tensor argument on one device of `device_type` (a host kernel must never read a
    device pointer, a CUDA kernel a host one); errors name the argument. Returns the device."""
    devices = set()
    for name, t in tensors.items():
        if t.device.type != device_type:
            raise ValueError(f"{op}: {name} is on {t.device}, expected a {device_type} tensor")
        devices.add(t.device)
    if len(devices) > 1:
        raise ValueError(f"{op}: arguments on several devices {sorted(map(str, devices))}; move them to one")
    return devices.pop()


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """CuPy launches on the tensors' device, whatever the current one (DLPack exports only
    tensors of the current device, and CuPy compiles for it)."""
    return torch.cuda.device(device)


class _TorchOps:
    """The reference twins, on any device; no host sync (usable on a GPU without CuPy)."""

    def __init__(self, ops: KernelOps):
        self.ops = ops

    def frame_counts(self, gt, pred, cfg: MetricConfig, ws: Workspace):
        return frame_counts(gt, pred, cfg, ws)

    def band(self, lab, k: int, pad_border: bool):
        return label_band(lab, k, pad_border).clone()

    def vc_step(self, g, p, state: VCState, first: bool, cap: int, ns: list[int], ws: Workspace):
        return vc_step(g, p, state, first, cap, ns, ws)

    def aggregate(self, logits, rank, labels, num_classes: int, by_logit: bool):
        up = upsample_logits(logits, tuple(labels.shape))
        masks = up > 0
        ids = aggregate_logits(up) if by_logit else aggregate_ranked(masks, rank)
        return ids, vote_counts(masks, labels, num_classes)

    def decide(self, hist):
        return decide(hist)

    def paint(self, ids, classes, labels):
        return paint(ids, classes, labels)

    def amg_stats(self, logits, thr: float, offset: float, out_hw: tuple[int, int]):
        return amg_stats(logits, thr, offset, out_hw)


class _HostOps:
    """The native build of kernels/*.cuh (sam2vss._host) on CPU tensors."""

    def __init__(self, ops: KernelOps):
        self.ops, self.lib = ops, _host_module()

    def frame_counts(self, gt, pred, cfg: MetricConfig, ws: Workspace):
        gt, pred = _labels(gt, pred, device_type="cpu")
        c = cfg.num_classes
        conf = torch.zeros(c * c, dtype=torch.int64)
        bconf = torch.zeros((c + 1) ** 2, dtype=torch.int64)
        h, w = gt.shape
        self.lib.frame_counts(
            gt.data_ptr(),
            pred.data_ptr(),
            h,
            w,
            c,
            cfg.boundary_kernel,
            cfg.pad_border,
            cfg.void_mode == "drop",
            conf.data_ptr(),
            bconf.data_ptr(),
            self.ops.threads,
        )
        return conf, bconf

    def band(self, lab, k: int, pad_border: bool):
        (lab,) = _labels(lab, device_type="cpu")
        out = torch.empty(lab.shape, dtype=torch.uint8)
        self.lib.band(
            lab.data_ptr(), lab.shape[0], lab.shape[1], k, pad_border, out.data_ptr(), self.ops.threads
        )
        return out.bool()

    def vc_step(self, g, p, state: VCState, first: bool, cap: int, ns: list[int], ws: Workspace):
        _check_cap(cap)
        g, p = _labels(g, p, device_type="cpu")
        ns_t = torch.tensor(ns, dtype=torch.int64)
        counts = torch.zeros(2 * len(ns), dtype=torch.int64)
        self.lib.vc_step(
            g.data_ptr(),
            p.data_ptr(),
            state.prev_gt.data_ptr(),
            state.prev_pred.data_ptr(),
            state.run_gt.data_ptr(),
            state.run_pred.data_ptr(),
            g.numel(),
            first,
            cap,
            ns_t.data_ptr(),
            len(ns),
            counts.data_ptr(),
            self.ops.threads,
        )
        return counts

    def aggregate(self, logits, rank, labels, num_classes: int, by_logit: bool):
        logits, rank = logits.contiguous(), rank.to(torch.int32).contiguous()
        _check("aggregate", "cpu", logits=logits, rank=rank, labels=labels)
        (labels,) = _labels(labels, device_type="cpu")
        (n, h, w), (big_h, big_w) = logits.shape, labels.shape
        ids = torch.empty((big_h, big_w), dtype=torch.int32)
        hist = torch.zeros((n, num_classes), dtype=torch.int64)
        self.lib.aggregate(
            logits.data_ptr(),
            n,
            h,
            w,
            rank.data_ptr(),
            labels.data_ptr(),
            big_h,
            big_w,
            num_classes,
            by_logit,
            ids.data_ptr(),
            hist.data_ptr(),
            self.ops.threads,
        )
        return ids, hist

    def decide(self, hist):
        hist = hist.to(torch.int64).contiguous()
        _check("decide", "cpu", hist=hist)
        classes = torch.empty(hist.shape[0], dtype=torch.uint8)
        self.lib.decide(hist.data_ptr(), hist.shape[0], hist.shape[1], classes.data_ptr())
        return classes

    def paint(self, ids, classes, labels):
        ids, classes, labels = _paint_args(ids, classes, labels, "cpu")
        out = torch.empty_like(labels)
        self.lib.paint(
            ids.data_ptr(),
            classes.data_ptr(),
            labels.data_ptr(),
            labels.numel(),
            out.data_ptr(),
            self.ops.threads,
        )
        return out

    def amg_stats(self, logits, thr: float, offset: float, out_hw: tuple[int, int]):
        logits = _amg_logits(logits)
        _check("amg_stats", "cpu", logits=logits)
        b, h, w = logits.shape
        stability = torch.empty(b, dtype=torch.float32)
        area = torch.empty(b, dtype=torch.int64)
        boxes = torch.empty((b, 4), dtype=torch.int32)
        self.lib.amg_stats(
            logits.data_ptr(),
            b,
            h,
            w,
            thr,
            offset,
            out_hw[0],
            out_hw[1],
            stability.data_ptr(),
            area.data_ptr(),
            boxes.data_ptr(),
            self.ops.threads,
        )
        return stability, area, boxes


class _CupyOps:
    """The CUDA kernels through CuPy (cuda_kernels.py), launched on the tensors' device."""

    def __init__(self, ops: KernelOps):
        self.ops = ops

    def frame_counts(self, gt, pred, cfg: MetricConfig, ws: Workspace):
        gt, pred = _labels(gt, pred, device_type="cuda")
        with _on(_check("frame_counts", "cuda", gt=gt, pred=pred)):
            return cuda_kernels.frame_counts(
                gt, pred, cfg.num_classes, cfg.boundary_kernel, cfg.pad_border, cfg.void_mode == "drop"
            )

    def band(self, lab, k: int, pad_border: bool):
        (lab,) = _labels(lab, device_type="cuda")
        with _on(lab.device):
            return cuda_kernels.band(lab, k, pad_border)

    def vc_step(self, g, p, state: VCState, first: bool, cap: int, ns: list[int], ws: Workspace):
        _check_cap(cap)
        g, p = _labels(g, p, device_type="cuda")
        state_tensors = {"prev_gt": state.prev_gt, "prev_pred": state.prev_pred, "run_gt": state.run_gt}
        with _on(_check("vc_step", "cuda", gt=g, pred=p, run_pred=state.run_pred, **state_tensors)):
            return cuda_kernels.vc_step(
                g, p, state.prev_gt, state.prev_pred, state.run_gt, state.run_pred, first, cap, ns,
                self.ops._window_lengths(ns, g.device),
            )  # fmt: skip

    def aggregate(self, logits, rank, labels, num_classes: int, by_logit: bool):
        logits, rank = logits.contiguous(), rank.to(torch.int32).contiguous()
        device = _check("aggregate", "cuda", logits=logits, rank=rank, labels=labels)
        (labels,) = _labels(labels, device_type="cuda")
        with _on(device):
            return cuda_kernels.aggregate(logits, rank, labels, num_classes, by_logit)

    def decide(self, hist):
        hist = hist.to(torch.int64).contiguous()
        with _on(_check("decide", "cuda", hist=hist)):
            return cuda_kernels.decide(hist)

    def paint(self, ids, classes, labels):
        ids, classes, labels = _paint_args(ids, classes, labels, "cuda")
        with _on(labels.device):
            return cuda_kernels.paint(ids, classes, labels)

    def amg_stats(self, logits, thr: float, offset: float, out_hw: tuple[int, int]):
        logits = _amg_logits(logits)
        with _on(_check("amg_stats", "cuda", logits=logits)):
            return cuda_kernels.amg_stats(logits, thr, offset, out_hw)


def _check_cap(cap: int) -> None:
    if not 1 <= cap <= 255:
        raise ValueError(f"vc_step: cap must be in 1..255, got {cap}")


def _paint_args(ids, classes, labels, device_type: str):
    """The native paint's arguments, checked: (H, W) int32 ids, uint8 classes and labels."""
    (labels,) = _labels(labels, device_type=device_type)
    if ids.shape != labels.shape or ids.dtype != torch.int32:
        raise ValueError(
            f"paint: ids must be int32 of shape {tuple(labels.shape)}, got {ids.dtype} {tuple(ids.shape)}"
        )
    ids, classes = ids.contiguous(), classes.to(torch.uint8).contiguous()
    _check("paint", device_type, ids=ids, classes=classes, labels=labels)
    return ids, classes, labels


def _amg_logits(logits):
    if logits.dtype != torch.float32 or logits.dim() != 3:
        raise ValueError(
            f"amg_stats: logits must be (B, h, w) float32, got {logits.dtype} {tuple(logits.shape)}"
        )
    return logits.contiguous()


_IMPLS = {"torch": _TorchOps, "host": _HostOps, "cupy": _CupyOps}


class KernelOps:
    """The per-pixel ops of one backend; torch is the reference twin of the others. The backend's
    implementation is picked here, once (`impl`)."""

    def __init__(self, backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown kernel backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if backend == "host" and _host_module() is None:
            raise RuntimeError(
                "kernel backend 'host' requested but sam2vss._host is not built; reinstall with"
                " `pip install -e .` (CMake builds it) or set SAM2VSS_KERNELS=torch"
            )
        if backend == "cupy" and not cuda_kernels.available():
            raise RuntimeError(
                "kernel backend 'cupy' requested but CuPy cannot use a CUDA device here; install"
                " cupy-cuda13x on a GPU machine or set SAM2VSS_KERNELS=torch"
            )
        self.backend = backend
        self.threads = 1
        self._lengths: dict[tuple, torch.Tensor] = {}
        self.impl = _IMPLS[backend](self)

    def _window_lengths(self, ns: list[int], device: torch.device) -> torch.Tensor:
        """The VC window lengths as a device tensor, uploaded once (not a blocking copy per frame)."""
        key = (tuple(ns), str(device))
        if key not in self._lengths:
            self._lengths[key] = torch.tensor(ns or [0], dtype=torch.int32, device=device)
        return self._lengths[key]

    def frame_counts(
        self, gt: torch.Tensor, pred: torch.Tensor, cfg: MetricConfig, ws: Workspace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(C*C,) IoU confusion and ((C+1)^2,) band co-occurrence int64 counts of one frame."""
        return self.impl.frame_counts(gt, pred, cfg, ws)

    def band(self, lab: torch.Tensor, k: int, pad_border: bool) -> torch.Tensor:
        """(H, W) bool boundary band of a label map (METRICS.md 8.3)."""
        return self.impl.band(lab, k, pad_border)

    def vc_step(
        self,
        g: torch.Tensor,
        p: torch.Tensor,
        state: VCState,
        first: bool,
        cap: int,
        ns: list[int],
        ws: Workspace,
    ) -> torch.Tensor:
        """Advance the VC run lengths one frame; counts as in metrics.vc_step."""
        return self.impl.vc_step(g, p, state, first, cap, ns, ws)

    # ------------------------------------------------------------------ refiner ops
    def aggregate(
        self, logits: torch.Tensor, rank: torch.Tensor, labels: torch.Tensor, num_classes: int, by_logit: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, h, w) float32 low-res logits -> ((H, W) int32 ids at the labels' resolution, -1 for
        none; (N, C) int64 votes of the labels over each masklet's upsampled mask). `rank` (N,)
        int32: paint position, the highest covering rank wins (ignored when by_logit)."""
        if not logits.is_floating_point() or logits.dim() != 3:
            raise ValueError(
                f"aggregate: logits must be (N, h, w) floats, got {logits.dtype} {tuple(logits.shape)}"
            )
        if rank.shape != (logits.shape[0],):
            raise ValueError(f"aggregate: rank must be ({logits.shape[0]},), got {tuple(rank.shape)}")
        return self.impl.aggregate(logits.float(), rank, labels, num_classes, by_logit)  # bf16 widens exactly

    def decide(self, hist: torch.Tensor) -> torch.Tensor:
        """(N, C) int64 votes -> (N,) uint8 majority classes, ties to the lowest class."""
        return self.impl.decide(hist)

    def paint(self, ids: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """R = classes[id] where a masklet won, else the base label; (H, W) uint8."""
        return self.impl.paint(ids, classes, labels)

    def amg_stats(
        self, logits: torch.Tensor, thr: float, offset: float, out_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stability, area and output-resolution boxes of (B, h, w) candidate logits (detect.py)."""
        return self.impl.amg_stats(logits, thr, offset, out_hw)


def select_backend(device: torch.device | str) -> str:
    device = torch.device(device)
    forced = envs.SAM2VSS_KERNELS
    if forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"SAM2VSS_KERNELS={forced!r}: expected auto, {', '.join(BACKENDS)}")
        return forced
    if device.type == "cpu":
        return "host" if _host_module() is not None else "torch"
    return "cupy" if cuda_kernels.available() else "torch"


@cache
def kernel_ops(device: torch.device | str = "cpu") -> KernelOps:
    """The KernelOps for `device`, chosen once and logged once."""
    device = torch.device(device)
    backend = select_backend(device)
    log.info("kernels on %s: %s", device.type, backend)
    return KernelOps(backend)
