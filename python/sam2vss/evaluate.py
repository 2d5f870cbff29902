"""`sam2vss eval`: stream every (GT, prediction) frame pair of a split through the accumulators.

PNG decoding and validation run on a thread pool (Pillow's zlib releases the GIL), a bounded
number of frames ahead, across video boundaries; the metric updates run on the main thread on
the chosen device. Bad inputs stop the run with an error naming the file: a metric over part of a
split would silently be a different number.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sam2vss.config import MetricConfig
from sam2vss.data import Dataset, check_prediction, match_frames, read_label_png
from sam2vss.kernels import KernelOps, kernel_ops
from sam2vss.metrics import VideoMetrics, VideoStats, Workspace, summarize
from sam2vss.model import use_device

METRIC_COLUMNS = (
    ("mIoU", "miou"),
    ("WIoU", "fwiou"),
    ("mBIoU", "mbiou"),
    ("mVC8", "mvc8"),
    ("mVC16", "mvc16"),
)


@dataclass(frozen=True)
class _Frame:
    video: int
    gt: Path
    pred: Path


@dataclass
class EvalResult:
    metrics: dict[str, float | int]
    videos: list[VideoStats]


class _FrameWork:
    """Per-thread work on one frame: decode, validate, and the order-free metric counts."""

    def __init__(self, dataset: Dataset, cfg: MetricConfig, device: torch.device, ops: KernelOps):
        self.dataset, self.cfg, self.device, self.ops = dataset, cfg, device, ops
        self._local = threading.local()

    def __call__(self, frame: _Frame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(conf counts, boundary counts, GT for VC, prediction) of one frame."""
        gt, raw = self.dataset.read_gt(frame.gt, self.cfg.num_classes)
        pred = read_label_png(frame.pred)
        check_prediction(pred, gt.shape, frame.pred, self.cfg.num_classes)
        if not hasattr(self._local, "ws"):
            self._local.ws = Workspace()
            if self.device.type == "cuda":  # a thread's current device starts at 0; CuPy follows it
                torch.cuda.set_device(self.device)
        g, p = self._upload(gt), self._upload(pred)
        conf, bconf = self.ops.frame_counts(g, p, self.cfg, self._local.ws)
        vc_gt = self._upload(raw) if self.cfg.vc_gt == "raw" else g
        return conf, bconf, vc_gt, p

    def _upload(self, array) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":  # pinned and non-blocking: no sync on the decode threads
            return t.pin_memory().to(self.device, non_blocking=True)
        return t


def plan_frames(dataset: Dataset, pred_dir: Path, videos: list[str]) -> list[list[_Frame]]:
    """Every video's frame pairs, validated (folders, names, counts) before any decoding."""
    plan = []
    for i, video in enumerate(videos):
        gt_names = dataset.gt_frames(video)
        pred_names = match_frames(gt_names, Path(pred_dir) / video, video)
        gt_dir, p_dir = dataset.gt_dir(video), Path(pred_dir) / video
        plan.append([_Frame(i, gt_dir / g, p_dir / p) for g, p in zip(gt_names, pred_names, strict=True)])
    return plan


def _in_order(work: _FrameWork, frames: list[_Frame], workers: int) -> Iterator[tuple[_Frame, tuple]]:
    """work(frame) on a thread pool, at most 4 * workers frames ahead, yielded in order."""
    ahead = 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="eval") as pool:
        queue: deque[tuple[_Frame, Future]] = deque()
        it = iter(frames)
        for f in it:
            queue.append((f, pool.submit(work, f)))
            if len(queue) >= ahead:
                break
        while queue:
            f, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(work, nxt)))
            yield f, fut.result()


def evaluate(
    dataset: Dataset,
    pred_dir: Path,
    split: str = "val",
    cfg: MetricConfig | None = None,
    device: torch.device | str | None = None,
    workers: int | None = None,
    progress: bool = True,
    kernels: str | None = None,
) -> EvalResult:
    """Metrics of the predictions in `pred_dir` for `split`. `kernels` forces a backend of the
    per-pixel ops (torch, host, cupy); by default it is chosen once per device (kernels.py)."""
    cfg = cfg or MetricConfig()
    device = use_device(str(device) if device is not None else "auto")  # indexed, and current
    workers = workers or os.cpu_count() or 1
    videos = dataset.videos(split)
    plan = plan_frames(dataset, pred_dir, videos)
    flat = [f for frames in plan for f in frames]
    stats: list[VideoStats] = []
    acc: VideoMetrics | None = None
    bar = tqdm(total=len(flat), desc=f"eval {split}", unit="frame", disable=not progress)
    ops = KernelOps(kernels) if kernels else kernel_ops(device)
    work = _FrameWork(dataset, cfg, device, ops)
    for frame, (conf, bconf, vc_gt, pred) in _in_order(work, flat, workers):
        if acc is None:
            acc = VideoMetrics(cfg, len(plan[frame.video]), ops, device)
        acc.add_counts(conf, bconf)
        acc.update_vc(vc_gt, pred)
        if acc.frames_seen == acc.num_frames:
            stats.append(acc.finish(videos[frame.video]))
            acc = None
        bar.update()
    bar.close()
    return EvalResult(summarize(stats, cfg), stats)


def format_table(rows: list[tuple[str, dict[str, float | int]]], title: str = "") -> str:
    """A paper-style table (Table 1 columns) in percent."""
    width = max([len("method")] + [len(name) for name, _ in rows])
    head = f"{'method':<{width}}  " + "  ".join(f"{c:>6}" for c, _ in METRIC_COLUMNS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, m in rows:
        cells = []
        for _, key in METRIC_COLUMNS:
            v = m.get(key, float("nan"))
            cells.append(f"{100 * v:6.2f}" if v == v else f"{'n/a':>6}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def describe_counts(m: dict[str, float | int]) -> str:
    parts = [f"{m['videos']} videos", f"{m['frames']} frames"]
    parts += [f"{m[k]} VC{k[7:]} windows" for k in m if k.startswith("windows")]
    return ", ".join(parts) + f"; mIoU over GT-present classes {100 * m['miou_present']:.2f}"
