"""Detection: statistics the automatic mask generator filters candidates on.

`amg_stats` is the torch twin of kernels/amg_stats.cu: from low-resolution mask logits, in one
pass, SAM2's stability score (IoU of the masks thresholded at thr+offset and thr-offset), the
area above thr and that region's box mapped to the output resolution. Filtering on these before
any upsampling is what the fast engine does instead of SAM2's upsample-then-filter.
"""

from __future__ import annotations

import torch


def amg_stats(
    logits: torch.Tensor, thr: float, offset: float, out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, h, w) float32 logits -> stability (B,) float32, area (B,) int64, boxes (B, 4) int32
    [x0, y0, x1, y1] inclusive at the output resolution (all zero for an empty mask)."""
    h, w = logits.shape[1:]
    big_h, big_w = out_hw
    inter = (logits > thr + offset).flatten(1).sum(1)
    union = (logits > thr - offset).flatten(1).sum(1)
    stability = inter.float() / union.float()
    fg = logits > thr
    area = fg.flatten(1).sum(1)
    cols, rows = fg.any(1), fg.any(2)  # (B, w), (B, h)
    xs = torch.arange(w, device=logits.device)
    ys = torch.arange(h, device=logits.device)
    x0 = torch.where(cols, xs, w).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    y0 = torch.where(rows, ys, h).min(1).values
    y1 = torch.where(rows, ys, -1).max(1).values
    boxes = torch.stack(
        [
            x0 * big_w // w,
            y0 * big_h // h,
            ((x1 + 1) * big_w + w - 1) // w - 1,
            ((y1 + 1) * big_h + h - 1) // h - 1,
        ],
        1,
    )
    boxes = torch.where((area > 0)[:, None], boxes, 0).to(torch.int32)
    return stability, area, boxes
