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

import numpy as np
import torch
from tqdm import tqdm

from sam2vss.config import MetricConfig
from sam2vss.data import Dataset, check_prediction, match_frames, read_label_png
from sam2vss.kernels import KernelOps, kernel_ops
from sam2vss.labels import CLASS_NAMES
from sam2vss.metrics import VideoMetrics, VideoStats, Workspace, class_iou, summarize
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
    preds: tuple[Path, ...]  # one per method


@dataclass
class EvalResult:
    metrics: dict[str, float | int]  # the dataset metrics (shares in [0, 1]) and counts
    videos: list[VideoStats]  # per video, in split order

    def class_iou(self, cfg: MetricConfig) -> np.ndarray:
        """(C,) IoU of each class over the split (NaN where a class is in neither GT nor prediction)."""
        return class_iou(self.videos, cfg)

    def details(self, cfg: MetricConfig) -> dict:
        """The JSON's per-method detail: each class's IoU by name (None where undefined) and each
        video's metrics."""
        iou = [None if v != v else float(v) for v in self.class_iou(cfg)]
        return {
            "class_iou": {CLASS_NAMES[c]: iou[c] for c in range(cfg.num_classes)},
            "videos": [{"name": v.name} | summarize([v], cfg) for v in self.videos],
        }


class _FrameWork:
    """Per-thread work on one frame: decode the GT once and each method's prediction, validate,
    and the order-free metric counts of each."""

    def __init__(self, dataset: Dataset, cfg: MetricConfig, device: torch.device, ops: KernelOps):
        self.dataset, self.cfg, self.device, self.ops = dataset, cfg, device, ops
        self._local = threading.local()

    def __call__(
        self, frame: _Frame
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """(GT for VC, [(conf counts, boundary counts, prediction) per method]) of one frame."""
        gt, raw = self.dataset.read_gt(frame.gt, self.cfg.num_classes)
        if not hasattr(self._local, "ws"):
            self._local.ws = Workspace()
            if self.device.type == "cuda":  # a thread's current device starts at 0; CuPy follows it
                torch.cuda.set_device(self.device)
        g = self._upload(gt)
        per_method = []
        for path in frame.preds:
            pred = read_label_png(path)
            check_prediction(pred, gt.shape, path, self.cfg.num_classes)
            p = self._upload(pred)
            conf, bconf = self.ops.frame_counts(g, p, self.cfg, self._local.ws)
            per_method.append((conf, bconf, p))
        vc_gt = self._upload(raw) if self.cfg.vc_gt == "raw" else g
        return vc_gt, per_method

    def _upload(self, array) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":  # pinned and non-blocking: no sync on the decode threads
            return t.pin_memory().to(self.device, non_blocking=True)
        return t


def plan_frames(dataset: Dataset, pred_dirs: list[Path], videos: list[str]) -> list[list[_Frame]]:
    """Every video's frame pairs for each prediction folder, validated (folders, names, counts)
    before any decoding."""
    plan = []
    for i, video in enumerate(videos):
        gt_names = dataset.gt_frames(video)
        preds = [
            [Path(d) / video / p for p in match_frames(gt_names, Path(d) / video, video)] for d in pred_dirs
        ]
        gt_dir = dataset.gt_dir(video)
        plan.append([_Frame(i, gt_dir / g, tuple(p[t] for p in preds)) for t, g in enumerate(gt_names)])
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
    return evaluate_methods(dataset, [pred_dir], split, cfg, device, workers, progress, kernels)[0]


def evaluate_methods(
    dataset: Dataset,
    pred_dirs: list[Path],
    split: str = "val",
    cfg: MetricConfig | None = None,
    device: torch.device | str | None = None,
    workers: int | None = None,
    progress: bool = True,
    kernels: str | None = None,
) -> list[EvalResult]:
    """`evaluate` of several prediction folders at once (one result each, in order): each GT frame
    is decoded once for all of them, and every folder is validated before any decoding."""
    cfg = cfg or MetricConfig()
    device = use_device(str(device) if device is not None else "auto")  # indexed, and current
    workers = workers or os.cpu_count() or 1
    videos = dataset.videos(split)
    plan = plan_frames(dataset, list(pred_dirs), videos)
    flat = [f for frames in plan for f in frames]
    stats: list[list[VideoStats]] = [[] for _ in pred_dirs]
    accs: list[VideoMetrics] = []
    bar = tqdm(total=len(flat), desc=f"eval {split}", unit="frame", disable=not progress)
    ops = KernelOps(kernels) if kernels else kernel_ops(device)
    work = _FrameWork(dataset, cfg, device, ops)
    for frame, (vc_gt, per_method) in _in_order(work, flat, workers):
        if not accs:
            accs = [VideoMetrics(cfg, len(plan[frame.video]), ops, device) for _ in pred_dirs]
        for acc, (conf, bconf, pred) in zip(accs, per_method, strict=True):
            acc.add_counts(conf, bconf)
            acc.update_vc(vc_gt, pred)
        if accs[0].frames_seen == accs[0].num_frames:
            for out, acc in zip(stats, accs, strict=True):
                out.append(acc.finish(videos[frame.video]))
            accs = []
        bar.update()
    bar.close()
    return [EvalResult(summarize(s, cfg), s) for s in stats]


def metric_deltas(rows: list[tuple[str, dict[str, float | int]]]) -> list[tuple[str, dict[str, float]]]:
    """Each method after the first against the first: ("B - A", metric differences), the
    table's delta rows (NaN where either is undefined)."""
    (first, base), *others = rows
    return [
        (
            f"{name} - {first}",
            {key: float(m[key]) - float(base[key]) for _, key in METRIC_COLUMNS if key in m},
        )
        for name, m in others
    ]


def format_table(
    rows: list[tuple[str, dict[str, float | int]]],
    title: str = "",
    deltas: list[tuple[str, dict[str, float]]] = (),
) -> str:
    """A paper-style table (Table 1 columns) in percent; `deltas` rows (metric_deltas) below a rule,
    in percentage points with a sign."""
    width = max([len("method")] + [len(name) for name, _ in [*rows, *deltas]])
    head = f"{'method':<{width}}  " + "  ".join(f"{c:>6}" for c, _ in METRIC_COLUMNS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]

    def line(name: str, m: dict, fmt: str) -> str:
        cells = []
        for _, key in METRIC_COLUMNS:
            v = m.get(key, float("nan"))
            cells.append(format(100 * v, fmt) if v == v else f"{'n/a':>6}")
        return f"{name:<{width}}  " + "  ".join(cells)

    lines += [line(name, m, "6.2f") for name, m in rows]
    if deltas:
        lines.append("-" * len(head))
        lines += [line(name, m, "+6.2f") for name, m in deltas]
    return "\n".join(lines)


def plural(n: int, noun: str) -> str:
    """'1 video', '3 videos': the count and the noun, -s for any count but one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe_counts(m: dict[str, float | int]) -> str:
    parts = [plural(m["videos"], "video"), plural(m["frames"], "frame")]
    parts += [plural(m[k], f"VC{k[7:]} window") for k in m if k.startswith("windows")]
    return ", ".join(parts) + f"; mIoU over GT-present classes {100 * m['miou_present']:.2f}"
