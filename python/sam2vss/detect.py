"""Detection: SAM2's automatic mask generator, batched, on features the engine already has.

`BatchedDetector` runs the paper's generator settings (one crop, a point grid, multimask, no
mask-to-mask refinement, no small-region removal) with all grid prompts in one decoder call, the
filters and NMS on the device and no RLE; tests/test_detect.py holds its candidates and outputs
to the official SAM2AutomaticMaskGenerator's on the same features. `amg_stats` is the torch twin
of kernels/amg_stats.cu: from low-resolution logits, in one pass, the stability score (IoU of
the masks thresholded at thr+offset and thr-offset), the area above thr and that region's box
mapped to the output resolution; the faster presets filter on it before any upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


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


def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 points (x, y) in [0, 1], cell centres, x fastest: SAM's point grid."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


@dataclass
class Detection:
    """A keyframe's masks after every filter, in the official generator's output order (NMS keep
    order: predicted IoU descending). K masks; candidates before filtering are M = 3 x points."""

    masks: torch.Tensor  # (K, H, W) bool at the frame's resolution
    areas: torch.Tensor  # (K,) int64 pixels
    boxes: torch.Tensor  # (K, 4) float32 x0, y0, x1, y1 (SAM's batched_mask_to_box convention)
    iou: torch.Tensor  # (K,) predicted IoU
    stability: torch.Tensor  # (K,) stability score on the low-resolution logits
    points: torch.Tensor  # (K, 2) the prompting point in frame pixels


class BatchedDetector:
    """SAM2's automatic mask generator as the paper runs it (one crop, multimask, no mask-to-mask
    refinement, no small-region removal) on features the engine already has.

    Differences from SAM2AutomaticMaskGenerator, each for speed: all grid points go through the
    prompt encoder and mask decoder in one call, padded to a multiple of `bucket` (static shapes);
    stability is computed on the low-resolution logits by the amg_stats kernel, before anything is
    upsampled; only the survivors of the IoU and stability filters are upsampled (bilinear, as
    SAM2's postprocess_masks) for their boxes, NMS (torchvision's batched_nms on the device, as
    SAM2) and masks; no RLE, no per-mask host sync. Tests hold the candidates' IoU predictions,
    boxes and kept masks to the official generator's on the same features."""

    def __init__(self, model: torch.nn.Module, cfg, ops, low_res_stability: bool = False, bucket: int = 64):
        self.model, self.cfg, self.ops, self.bucket = model, cfg, ops, bucket
        self.low_res_stability = low_res_stability
        self.grid = torch.from_numpy(point_grid(cfg.grid))
        self._prompt_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        size = model.image_size
        self.feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]

    def features(self, backbone_out: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image embedding and high-resolution features of one frame's backbone output (batch 1),
        exactly as SAM2ImagePredictor.set_image derives them."""
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [
            f.permute(1, 2, 0).reshape(1, -1, *size)
            for f, size in zip(vision_feats[::-1], self.feat_sizes[::-1], strict=True)
        ][::-1]
        return feats[-1], feats[:-1]

    def _prompts(self, orig_hw: tuple[int, int], device: torch.device):
        """Grid points in frame pixels (P, 2), their padded model coordinates and labels, built
        as SAM2 builds them and uploaded once per frame size and device."""
        key = (orig_hw, str(device))
        if key not in self._prompt_cache:
            h, w = orig_hw
            points = (self.grid * torch.tensor([w, h], dtype=torch.float64)).float()  # as SAM2
            coords = points.clone()
            coords[:, 0] /= w
            coords[:, 1] /= h
            coords = coords * self.model.image_size
            p = coords.shape[0]
            padded = -(-p // self.bucket) * self.bucket
            coords = torch.cat([coords, coords[-1:].expand(padded - p, 2)])  # repeats of the last point
            labels = torch.ones((padded, 1), dtype=torch.int)
            self._prompt_cache[key] = tuple(t.to(device) for t in (points, coords, labels))
        return self._prompt_cache[key]

    def candidates(
        self, image_embed: torch.Tensor, high_res: list[torch.Tensor], orig_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-resolution logits (3P, h, w), predicted IoU (3P,) and points (3P, 2) in frame pixels
        for all P grid points in one decoder call."""
        points, coords, labels = self._prompts(orig_hw, image_embed.device)
        p = points.shape[0]
        sparse, dense = self.model.sam_prompt_encoder(
            points=(coords[:, None], labels), boxes=None, masks=None
        )
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=high_res,
        )
        k = low_res.shape[1]
        return (
            low_res[:p].flatten(0, 1).float(),
            iou[:p].flatten(0, 1).float(),
            points.repeat_interleave(k, 0),
        )

    def detect(self, backbone_out: dict, orig_hw: tuple[int, int]) -> Detection:
        from torchvision.ops import batched_nms

        cfg = self.cfg
        low_res, iou, points = self.candidates(*self.features(backbone_out), orig_hw)
        keep = (
            iou > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        )
        low_res, iou, points = low_res[keep], iou[keep], points[keep]
        stability = self.stability(low_res, orig_hw)
        if cfg.stability_thresh > 0:
            keep = stability >= cfg.stability_thresh
            low_res, iou, points, stability = low_res[keep], iou[keep], points[keep], stability[keep]
        masks = F.interpolate(low_res[:, None], orig_hw, mode="bilinear", align_corners=False)[:, 0] > 0
        boxes = mask_boxes(masks)
        order = batched_nms(boxes, iou, torch.zeros_like(iou), iou_threshold=cfg.box_nms_thresh)
        masks = masks[order]
        return Detection(
            masks, masks.flatten(1).sum(1), boxes[order], iou[order], stability[order], points[order]
        )

    def stability(self, low_res: torch.Tensor, orig_hw: tuple[int, int], chunk: int = 64) -> torch.Tensor:
        """SAM's stability score of each candidate. Exact (default): on the logits upsampled to the
        frame, as SAM2 computes it, `chunk` candidates at a time and never kept. Low-resolution
        (the faster presets): the amg_stats kernel on the logits as they are, no upsampling; with
        random weights it moves the score by up to ~0.2 (flat logits), so it is a preset."""
        offset = self.cfg.stability_offset
        if self.low_res_stability:
            on_host = self.ops.backend == "host"
            stability, _, _ = self.ops.amg_stats(low_res.cpu() if on_host else low_res, 0.0, offset, orig_hw)
            return stability.to(low_res.device)
        scores = []
        for part in low_res.split(chunk):
            up = F.interpolate(part[:, None], orig_hw, mode="bilinear", align_corners=False)[:, 0]
            inter = (up > offset).sum((1, 2), dtype=torch.int64)
            union = (up > -offset).sum((1, 2), dtype=torch.int64)
            scores.append(inter.float() / union.float())
        return torch.cat(scores) if scores else low_res.new_zeros(0)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) float32 [x0, y0, x1, y1] of the set pixels (inclusive), zeros for
    an empty mask: SAM's batched_mask_to_box."""
    k, h, w = masks.shape
    if k == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, -1).max(1).values
    y0 = torch.where(rows, ys, h).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    x0 = torch.where(cols, xs, w).min(1).values
    boxes = torch.stack([x0, y0, x1, y1], 1)
    empty = (x1 < x0) | (y1 < y0)
    return torch.where(empty[:, None], 0, boxes).float()
