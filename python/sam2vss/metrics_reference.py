"""The reference twin of `eval`: per-frame numpy, written the way the field's scripts work.

- mIoU: mmseg 0.x `intersect_and_union` per frame with `np.histogram`, summed over frames.
- miou_present / fwIoU: the VSPW "Evaluator" confusion matrix (`np.bincount` per frame).
- mBIoU: per class, the inner band `M_c minus erode(M_c)` with a k x k erosion (cv2.erode's
  border rule: out-of-image pixels count as foreground unless `pad_border`).
- mVC_n: `VC_perclip.py`: load a whole video, then for every window re-compare its n frames.

It is the baseline of benchmarks/bench_eval.py and a second implementation the tests hold the
streaming accumulators (metrics.py) to. Slow by design; single-threaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam2vss.config import MetricConfig
from sam2vss.data import Dataset, check_prediction, match_frames, read_label_png

IGNORE = 255


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """mmseg 0.x, with the GT already reduced (0..C-1, 255 ignore)."""
    mask = label != IGNORE
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    bins, rng = num_classes, (0, num_classes - 1)
    area_i, _ = np.histogram(inter, bins=bins, range=rng)
    area_p, _ = np.histogram(pred, bins=bins, range=rng)
    area_l, _ = np.histogram(label, bins=bins, range=rng)
    return area_i, area_p + area_l - area_i, area_p, area_l


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The Evaluator's `_generate_matrix`: rows GT, cols prediction, GT in 0..C-1 only."""
    valid = (gt >= 0) & (gt < num_classes)
    idx = num_classes * gt[valid].astype(np.int64) + pred[valid]
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def erode(mask: np.ndarray, k: int, pad_border: bool) -> np.ndarray:
    """k x k binary erosion; out-of-image pixels are foreground (cv2 default) or background."""
    r = k // 2
    padded = np.pad(mask, r, constant_values=not pad_border)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(k):
        for dx in range(k):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def boundary_counts(gt: np.ndarray, pred: np.ndarray, cfg: MetricConfig) -> tuple[np.ndarray, ...]:
    """Per-class |Gc & Pc| and |Gc | Pc| of the inner bands (METRICS.md 8.3)."""
    c = cfg.num_classes
    valid = gt < c
    bi, bu = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for cls in np.union1d(np.unique(gt[valid]), np.unique(pred)):
        g_mask, p_mask = gt == cls, pred == cls
        g_band = g_mask & ~erode(g_mask, cfg.boundary_kernel, cfg.pad_border)
        p_band = p_mask & ~erode(p_mask, cfg.boundary_kernel, cfg.pad_border)
        if cfg.void_mode == "drop":
            p_band &= valid
        bi[cls] += np.count_nonzero(g_band & p_band)
        bu[cls] += np.count_nonzero(g_band | p_band)
    return bi, bu


def video_consistency(
    gts: list[np.ndarray], preds: list[np.ndarray], n: int, last_window: bool
) -> list[float]:
    """VC_perclip.py's per-window accuracies for one video."""
    scores = []
    for i in range(len(gts) - n + (1 if last_window else 0)):
        gt_const = np.ones(gts[i].shape, bool)
        pred_const = np.ones(preds[i].shape, bool)
        for j in range(1, n):
            gt_const &= gts[i] == gts[i + j]
            pred_const &= preds[i] == preds[i + j]
        den = gt_const.sum()
        scores.append(float((gt_const & pred_const).sum() / den) if den else math.nan)
    return scores


def evaluate_reference(
    dataset: Dataset,
    pred_dir: Path,
    split: str = "val",
    cfg: MetricConfig | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    cfg = cfg or MetricConfig()
    c = cfg.num_classes
    total_i, total_u = np.zeros(c, np.int64), np.zeros(c, np.int64)
    conf = np.zeros((c, c), np.int64)
    total_bi, total_bu = np.zeros(c, np.int64), np.zeros(c, np.int64)
    vc: dict[int, list[float]] = {n: [] for n in cfg.vc_lengths}
    vc_per_video: dict[int, list[float]] = {n: [] for n in cfg.vc_lengths}
    frames = 0
    videos = dataset.videos(split)
    for video in tqdm(videos, desc="eval (reference)", unit="video", disable=not progress):
        gt_names = dataset.gt_frames(video)
        pred_names = match_frames(gt_names, Path(pred_dir) / video, video)
        vc_gts, preds = [], []
        for g_name, p_name in zip(gt_names, pred_names, strict=True):
            gt, raw = dataset.read_gt(dataset.gt_dir(video) / g_name, c)
            pred_path = Path(pred_dir) / video / p_name
            pred = read_label_png(pred_path)
            check_prediction(pred, gt.shape, pred_path, c)
            i, u, _, _ = intersect_and_union(pred, gt, c)
            total_i += i
            total_u += u
            conf += confusion(gt, pred, c)
            bi, bu = boundary_counts(gt, pred, cfg)
            total_bi += bi
            total_bu += bu
            vc_gts.append(raw if cfg.vc_gt == "raw" else gt)
            preds.append(pred)
            frames += 1
        for n in cfg.vc_lengths:
            if not cfg.skips_vc(len(gt_names), n):
                scores = video_consistency(vc_gts, preds, n, cfg.vc_last_window)
                vc[n] += scores
                vc_per_video[n].append(_nanmean(scores))

    with np.errstate(divide="ignore", invalid="ignore"):
        iou = total_i / total_u
        biou = total_bi / total_bu
        iu = np.diag(conf) / (conf.sum(1) + conf.sum(0) - np.diag(conf))
    present = conf.sum(1) > 0
    freq = conf.sum(1) / conf.sum()
    out: dict[str, float | int] = {
        "miou": _nanmean(iou),
        "miou_present": float(np.nansum(iu * present) / present.sum()) if present.any() else math.nan,
        "fwiou": float((freq[freq > 0] * iu[freq > 0]).sum()),
        "mbiou": _nanmean(biou),
        "frames": frames,
        "videos": len(videos),
    }
    for n in cfg.vc_lengths:
        out[f"mvc{n}"] = _nanmean(vc[n] if cfg.vc_aggregate == "pooled" else vc_per_video[n])
        out[f"windows{n}"] = int(np.isfinite(np.asarray(vc[n], dtype=float)).sum())
        out[f"vc_videos{n}"] = len(vc_per_video[n])
    return out


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return math.nan if x.size == 0 or np.isnan(x).all() else float(np.nanmean(x))
