"""A brute-force numpy oracle written straight from METRICS.md section 8, for small inputs.

Deliberately naive and independent of both implementations in the package: per-pixel
neighbourhood tests by explicit offsets (not erosion, not min/max filters), per-class loops,
per-window loops over every frame pair.
"""

from __future__ import annotations

import math

import numpy as np

from sam2vss.config import MetricConfig


def reduce(raw: np.ndarray) -> np.ndarray:
    """0 -> 255, 255 -> 255, k -> k - 1 (METRICS.md 1.2)."""
    out = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    out[raw == 255] = 255
    return out.astype(np.uint8)


def band(lab: np.ndarray, k: int, pad_border: bool) -> np.ndarray:
    """x is in the band iff some pixel of its k x k footprint has another label; out-of-image
    neighbours are ignored, or count as another label when pad_border. One explicit
    comparison per offset (vectorised over pixels)."""
    h, w = lab.shape
    r = k // 2
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w), bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            other = lab[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out |= inside & (other != lab)
            if pad_border:
                out |= ~inside
    return out


def metrics(videos: list[tuple[list[np.ndarray], list[np.ndarray]]], cfg: MetricConfig) -> dict[str, float]:
    """videos: (raw GT frames, prediction frames) per video, in split order."""
    c = cfg.num_classes
    inter, gt_area, pred_area = np.zeros(c), np.zeros(c), np.zeros(c)
    b_inter, b_union = np.zeros(c), np.zeros(c)
    pooled: dict[int, list[float]] = {n: [] for n in cfg.vc_lengths}
    per_video: dict[int, list[float]] = {n: [] for n in cfg.vc_lengths}
    for raws, preds in videos:
        gts = [reduce(r) for r in raws]
        for g, p in zip(gts, preds, strict=True):
            valid = g < c
            bg = band(g, cfg.boundary_kernel, cfg.pad_border) & valid
            bp = band(p, cfg.boundary_kernel, cfg.pad_border)
            if cfg.void_mode == "drop":
                bp &= valid
            for cls in range(c):
                inter[cls] += np.sum(valid & (g == cls) & (p == cls))
                gt_area[cls] += np.sum(g == cls)
                pred_area[cls] += np.sum(valid & (p == cls))
                gc, pc = bg & (g == cls), bp & (p == cls)
                b_inter[cls] += np.sum(gc & pc)
                b_union[cls] += np.sum(gc | pc)
        vc_frames = raws if cfg.vc_gt == "raw" else gts
        length = len(gts)
        for n in cfg.vc_lengths:
            if length <= (16 if cfg.vc_skip_rule == "16" else n):
                continue
            starts = length - n + (1 if cfg.vc_last_window else 0)
            scores = []
            for i in range(starts):
                gc = np.ones(gts[0].shape, bool)
                pc = np.ones(gts[0].shape, bool)
                for j in range(1, n):
                    gc &= vc_frames[i] == vc_frames[i + j]
                    pc &= preds[i] == preds[i + j]
                scores.append(np.sum(gc & pc) / np.sum(gc) if np.sum(gc) else math.nan)
            pooled[n] += scores
            per_video[n].append(_mean_finite(scores))

    iou = [
        inter[k] / (gt_area[k] + pred_area[k] - inter[k]) for k in range(c) if gt_area[k] + pred_area[k] > 0
    ]
    present = [k for k in range(c) if gt_area[k] > 0]
    iou_of = {k: inter[k] / (gt_area[k] + pred_area[k] - inter[k]) for k in present}
    total = sum(gt_area)
    biou = [b_inter[k] / b_union[k] for k in range(c) if b_union[k] > 0]
    out = {
        "miou": _mean_finite(iou),
        "miou_present": _mean_finite([iou_of[k] for k in present]),
        "fwiou": sum(gt_area[k] / total * iou_of[k] for k in present) if present else math.nan,
        "mbiou": _mean_finite(biou),
    }
    for n in cfg.vc_lengths:
        out[f"mvc{n}"] = _mean_finite(pooled[n] if cfg.vc_aggregate == "pooled" else per_video[n])
        out[f"windows{n}"] = sum(1 for s in pooled[n] if not math.isnan(s))
    return out


def _mean_finite(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
