"""Streaming metric accumulators in torch: mIoU, fwIoU, mBIoU, mVC_n (METRICS.md section 8).

One pass over each video's frames, on any device, with no host sync until the video ends:
- IoU: a C x C confusion matrix; void pixels go to an overflow bin instead of being masked out
  (boolean indexing would sync on CUDA).
- mBIoU: the class-agnostic band of a label map is `maxfilter(L) != L or minfilter(L) != L`
  (separable k x k filters on uint8), and one (C+1) x (C+1) co-occurrence of "GT class in band"
  and "predicted class in band" gives |Gc & Pc|, |Gc| and |Pc| for every class at once.
- mVC_n: per-pixel run lengths of constant GT and constant prediction. The window of n frames
  ending at t is GT-constant at x iff run_gt(x, t) >= n, so all n share one pass and one frame of
  state, instead of re-comparing n frames per window as the reference scripts do.
The numpy twin written the way the field's scripts work is `metrics_reference.py`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sam2vss.config import MetricConfig


@dataclass
class VideoStats:
    """Everything one video contributes; datasets are sums and concatenations of these."""

    name: str
    frames: int
    conf: np.ndarray  # (C, C) int64, rows = GT class, cols = predicted class, valid GT only
    bconf: np.ndarray  # (C+1, C+1) int64, index C = "not in the band" (see module docstring)
    vc_num: dict[int, np.ndarray] = field(default_factory=dict)  # n -> (windows,) |gc & pc|
    vc_den: dict[int, np.ndarray] = field(default_factory=dict)  # n -> (windows,) |gc|


class Workspace:
    """Reusable per-shape buffers and constants for the per-frame updates.

    On CPU a fresh 480x853 int32 tensor costs ~0.7 ms in page faults (allocations that large go
    back to the OS when freed), more than the arithmetic on it; and torch compares uint8 against
    a Python scalar ~15x slower than against a tensor. Reusing buffers took the update from
    ~17 ms to ~3 ms per 480x853 frame on one core. Not thread-safe: one per accumulating thread.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def buf(self, name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or like.dtype
        key = (name, dtype, tuple(like.shape), like.device)
        if key not in self._bufs:
            self._bufs[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return self._bufs[key]

    def const(self, value: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        key = ("const", value, dtype or like.dtype, tuple(like.shape), like.device)
        if key not in self._bufs:
            self._bufs[key] = torch.full(like.shape, value, dtype=dtype or like.dtype, device=like.device)
        return self._bufs[key]


def label_band(
    lab: torch.Tensor, k: int, pad_border: bool, ws: Workspace | None = None, tag: str = ""
) -> torch.Tensor:
    """Boundary band of a (H, W) uint8 label map with a k x k square footprint (METRICS.md 8.3).

    A pixel is in the band when some in-image pixel of its footprint has another label; with
    `pad_border` the out-of-image neighbours count as another label too. Max and min filters
    are separable: 2(k-1) shifted max/min passes per filter instead of k*k comparisons. The
    result lives in `ws` (named by `tag`) when a workspace is given.
    """
    ws = ws or Workspace()
    r = k // 2
    mx, mn = ws.buf(tag + "mx", lab).copy_(lab), ws.buf(tag + "mn", lab).copy_(lab)
    src_mx, src_mn = ws.buf(tag + "src_mx", lab), ws.buf(tag + "src_mn", lab)
    for dim in (0, 1):
        src_mx.copy_(mx)
        src_mn.copy_(mn)
        size = lab.shape[dim]
        for d in range(1, min(r, size - 1) + 1):
            lo, hi = slice(0, size - d), slice(d, size)
            for dst, src in ((hi, lo), (lo, hi)):
                idx_dst = (dst, slice(None)) if dim == 0 else (slice(None), dst)
                idx_src = (src, slice(None)) if dim == 0 else (slice(None), src)
                torch.maximum(mx[idx_dst], src_mx[idx_src], out=mx[idx_dst])
                torch.minimum(mn[idx_dst], src_mn[idx_src], out=mn[idx_dst])
    # min <= L <= max over the footprint, so "some neighbour differs" is exactly max != min.
    band = torch.ne(mx, mn, out=ws.buf(tag + "band", lab, torch.bool))
    if pad_border:
        band[:r] = True
        band[-r:] = True
        band[:, :r] = True
        band[:, -r:] = True
    return band


def frame_counts(
    gt: torch.Tensor, pred: torch.Tensor, cfg: MetricConfig, ws: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame's IoU confusion counts (C*C,) and boundary co-occurrence ((C+1)^2,), int64.

    gt is reduced (0..C-1 valid, anything else ignored as in mmseg and the Evaluator), pred is
    0..C-1 (validated at the file boundary); both (H, W) uint8 on the same device.
    """
    c = cfg.num_classes
    valid = torch.lt(gt, ws.const(c, gt), out=ws.buf("valid", gt, torch.bool))
    g32 = ws.buf("g32", gt, torch.int32).copy_(gt)
    p32 = ws.buf("p32", gt, torch.int32).copy_(pred)

    # Invalid GT rows land at index >= C*C, past the bins we keep: no masking needed.
    idx = torch.mul(g32, c, out=ws.buf("idx", gt, torch.int32)).add_(p32)
    conf = torch.bincount(idx.view(-1), minlength=256 * c)[: c * c]

    k, pad = cfg.boundary_kernel, cfg.pad_border
    in_gt = label_band(gt, k, pad, ws, "gt_").logical_and_(valid)
    in_pred = label_band(pred, k, pad, ws, "pred_")
    if cfg.void_mode == "drop":
        in_pred.logical_and_(valid)
    a = torch.sub(g32, c, out=ws.buf("a", gt, torch.int32)).mul_(in_gt).add_(c)  # C: not in band
    b = torch.sub(p32, c, out=ws.buf("b", gt, torch.int32)).mul_(in_pred).add_(c)
    bconf = torch.bincount(a.mul_(c + 1).add_(b).view(-1), minlength=(c + 1) ** 2)
    bconf[-1] = 0  # (C, C): in neither band; never read, and the kernels do not count it
    return conf, bconf


@dataclass
class VCState:
    """Per-pixel video-consistency state of one video (all (H, W) uint8 on the device)."""

    run_gt: torch.Tensor  # frames the GT label has stayed constant up to now, saturating at cap
    run_pred: torch.Tensor  # the same for the prediction
    prev_gt: torch.Tensor  # last frame's GT (as VC sees it: reduced or raw)
    prev_pred: torch.Tensor  # last frame's prediction

    @staticmethod
    def like(g: torch.Tensor, ws: Workspace) -> VCState:
        return VCState(*(ws.buf(name, g) for name in ("run_gt", "run_pred", "prev_gt", "prev_pred")))


def vc_step(
    g: torch.Tensor, p: torch.Tensor, state: VCState, first: bool, cap: int, ns: list[int], ws: Workspace
) -> torch.Tensor:
    """Advance the run lengths by one frame; (2 * len(ns),) int64 counts: for each n,
    |run_gt >= n and run_pred >= n| then |run_gt >= n|. The window of n frames ending at this
    frame is GT-constant at x iff run_gt(x) >= n. Torch twin of kernels/consistency.cu."""
    runs, prevs = (state.run_gt, state.run_pred), (state.prev_gt, state.prev_pred)
    if first:
        for run in runs:
            run.fill_(1)
    else:
        cap_t, same = ws.const(cap, g), ws.buf("same", g, torch.bool)
        for run, cur, prev in zip(runs, (g, p), prevs, strict=True):
            # run = min(run + 1, cap) where the label is unchanged, else 1
            torch.minimum(run.add_(1), cap_t, out=run).mul_(torch.eq(cur, prev, out=same)).clamp_(min=1)
    prevs[0].copy_(g)
    prevs[1].copy_(p)
    gc, both = ws.buf("gc", g, torch.bool), ws.buf("both", g, torch.bool)
    counts = []
    for n in ns:
        n_t = ws.const(n, g)
        torch.ge(runs[0], n_t, out=gc)
        torch.ge(runs[1], n_t, out=both).logical_and_(gc)
        counts += [x.view(torch.uint8).sum(dtype=torch.int64) for x in (both, gc)]
    return torch.stack(counts) if counts else torch.zeros(0, dtype=torch.int64, device=g.device)


class MetricOps(Protocol):
    """The per-pixel ops VideoMetrics runs: `kernels.KernelOps` (any backend), whose torch twins
    are this module's `frame_counts` and `vc_step`. A protocol so that this module does not import
    kernels, which imports those twins."""

    def frame_counts(
        self, gt: torch.Tensor, pred: torch.Tensor, cfg: MetricConfig, ws: Workspace
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def vc_step(
        self,
        g: torch.Tensor,
        p: torch.Tensor,
        state: VCState,
        first: bool,
        cap: int,
        ns: list[int],
        ws: Workspace,
    ) -> torch.Tensor: ...


class VideoMetrics:
    """Accumulates one video's metric counts, frame by frame, on `device`.

    update() takes reduced GT (0..C-1, 255 ignore), the prediction (0..C-1, validated by the
    caller at the file boundary) and, for `vc_gt="raw"`, the raw GT; all (H, W) uint8 tensors.
    `ops` is the caller's backend, usually `kernels.kernel_ops(device)`. Pass one Workspace to
    successive videos to keep reusing its buffers.
    """

    def __init__(
        self,
        cfg: MetricConfig,
        num_frames: int,
        ops: MetricOps,
        device: torch.device | str = "cpu",
        ws: Workspace | None = None,
    ):
        self.cfg = cfg
        self.ops = ops
        self.num_frames = num_frames
        self.device = torch.device(device)
        self.ws = ws or Workspace()
        c = cfg.num_classes
        self._conf = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        self._bconf = torch.zeros((c + 1) ** 2, dtype=torch.int64, device=self.device)
        # VC windows ending at frame t: start i = t - n + 1 must lie in 0 .. last_start(n).
        self._vc_ns = [n for n in cfg.vc_lengths if not cfg.skips_vc(num_frames, n)]
        self._cap = max(cfg.vc_lengths)
        self._vc_counts: dict[int, list[torch.Tensor]] = {n: [] for n in self._vc_ns}
        self._vc_state: VCState | None = None
        self._t = 0

    @property
    def frames_seen(self) -> int:
        return self._t

    def _last_start(self, n: int) -> int:
        return self.num_frames - n - (0 if self.cfg.vc_last_window else 1)

    def update(self, gt: torch.Tensor, pred: torch.Tensor, gt_raw: torch.Tensor | None = None) -> None:
        """Add one frame (frames must come in order)."""
        gt, pred = gt.to(self.device), pred.to(self.device)
        self.add_counts(*self.ops.frame_counts(gt, pred, self.cfg, self.ws))
        self.update_vc(gt_raw.to(self.device) if self.cfg.vc_gt == "raw" else gt, pred)

    def add_counts(self, conf: torch.Tensor, bconf: torch.Tensor) -> None:
        """Add a frame's `frame_counts` (any order; lets callers compute them in parallel)."""
        self._conf += conf.to(self.device)
        self._bconf += bconf.to(self.device)

    def update_vc(self, g: torch.Tensor, p: torch.Tensor) -> None:
        """Advance the VC run lengths by one frame (in order): g is the GT that VC uses."""
        if self._t >= self.num_frames:
            raise ValueError(f"VideoMetrics: got more than the announced {self.num_frames} frames")
        if self._vc_ns:
            self._update_vc(g.to(self.device), p.to(self.device))
        self._t += 1

    def _update_vc(self, g: torch.Tensor, p: torch.Tensor) -> None:
        if self._vc_state is None:
            self._vc_state = VCState.like(g, self.ws)
        t = self._t
        active = [n for n in self._vc_ns if n - 1 <= t <= self._last_start(n) + n - 1]
        counts = self.ops.vc_step(g, p, self._vc_state, t == 0, self._cap, active, self.ws)
        for k, n in enumerate(active):
            self._vc_counts[n].append(counts[2 * k : 2 * k + 2])

    def finish(self, name: str) -> VideoStats:
        if self._t != self.num_frames:
            raise ValueError(f"VideoMetrics({name}): announced {self.num_frames} frames, got {self._t}")
        c = self.cfg.num_classes
        stats = VideoStats(
            name=name,
            frames=self.num_frames,
            conf=self._conf.view(c, c).cpu().numpy(),
            bconf=self._bconf.view(c + 1, c + 1).cpu().numpy(),
        )
        for n, counts in self._vc_counts.items():
            arr = torch.stack(counts).cpu().numpy() if counts else np.zeros((0, 2), np.int64)
            stats.vc_num[n], stats.vc_den[n] = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        return stats


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.isnan(x).all():
        return math.nan
    return float(np.nanmean(x))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def class_iou(stats: list[VideoStats], cfg: MetricConfig) -> np.ndarray:
    """(C,) IoU of each class over the videos' summed confusion; NaN when a class is in neither
    the GT nor the prediction (the mIoU is their nanmean)."""
    conf = sum((s.conf for s in stats), np.zeros((cfg.num_classes, cfg.num_classes), np.int64))
    inter = np.diag(conf)
    return _ratio(inter, conf.sum(1) + conf.sum(0) - inter)


def summarize(stats: list[VideoStats], cfg: MetricConfig) -> dict[str, float | int]:
    """Dataset metrics (fractions in [0, 1]) and counts from per-video stats, in split order."""
    c = cfg.num_classes
    conf = np.zeros((c, c), np.int64)
    bconf = np.zeros((c + 1, c + 1), np.int64)
    for s in stats:
        conf += s.conf
        bconf += s.bconf

    gt_area = conf.sum(1)
    iou = class_iou(stats, cfg)  # NaN when the class is in neither
    present = gt_area > 0
    freq = gt_area / max(int(gt_area.sum()), 1)

    b_inter = np.diag(bconf)[:c]
    b_gt, b_pred = bconf[:c].sum(1), bconf[:, :c].sum(0)
    biou = _ratio(b_inter, b_gt + b_pred - b_inter)

    out: dict[str, float | int] = {
        "miou": _nanmean(iou),
        "miou_present": float(iou[present].mean()) if present.any() else math.nan,
        "fwiou": float((freq[present] * iou[present]).sum()) if present.any() else math.nan,
        "mbiou": _nanmean(biou),
        "frames": int(sum(s.frames for s in stats)),
        "videos": len(stats),
    }
    for n in cfg.vc_lengths:
        per_video = [_ratio(s.vc_num[n], s.vc_den[n]) for s in stats if n in s.vc_num]
        pooled = np.concatenate(per_video) if per_video else np.zeros(0)
        if cfg.vc_aggregate == "pooled":
            out[f"mvc{n}"] = _nanmean(pooled)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[f"mvc{n}"] = _nanmean(np.array([_nanmean(v) for v in per_video]))
        out[f"windows{n}"] = int(np.isfinite(pooled).sum())
        out[f"vc_videos{n}"] = len(per_video)
    return out
