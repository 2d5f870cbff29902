"""Masklet sources: what a refiner prompts its tracker with on a window's keyframe.

Every source answers `keyframe(window, features=None) -> (masks (N, H, W) bool, areas (N,)
int64)` on its device, at the frames' resolution, in the order the paint order's ties keep.
Here: the dataset's instance masks and per-frame superpixels (no model); SAM2's official
automatic mask generator is in reference.py, the batched detector in engine.py. `features` is
the keyframe's backbone output when the tracker already encoded it (sources that can reuse it say
so with `shares_keyframe`).

The decision a reader must know: the preset's masklet cap (`max_masklets`, the N largest) is the
source's, applied before the masks leave it, so a tracker never sees a masklet it would drop.
With overlapping windows `carry_over` builds a later window's list (the rule is written in
engine.py) from the previous window's tracked masks and the source's, capped the same way;
re-detection within a window (`redetected`) drops a frame's detections with the same filter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2vss.config import RefineConfig


def keep_largest(
    masks: torch.Tensor, areas: torch.Tensor, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `cap` largest masks (ties: the earlier), in their original order; all when cap is None."""
    if cap is not None and masks.shape[0] > cap:
        keep = torch.argsort(areas, descending=True, stable=True)[:cap].sort().values
        masks, areas = masks[keep], areas[keep]
    return masks, areas


def tracked_masks(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) low-resolution mask logits -> (N, H, W) bool masks at `size`: one bilinear
    resize (align_corners=False, as the official predictor's video-resolution output), then > 0.
    Both trackers hand the next overlapping window its carried masks through it."""
    return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)[:, 0] > 0


def carry_over(
    carried: torch.Tensor, masks: torch.Tensor, areas: torch.Tensor, cap: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A later overlapping window's keyframe masklets (the carry-over rule, engine.py): first the
    previous window's masklets non-empty here (`carried`: (M, H, W) bool, its order), then the
    source's (`masks` (N, H, W) bool, `areas` (N,) int64) except those with more than half of
    their area inside the union of the carried ones (objects already tracked); areas are the
    masks' pixel counts; then the source's cap (`keep_largest`). Plain torch on the masks'
    device: one host sync on a GPU (the boolean filter, `nonzero`), none per carried masklet."""
    if carried.shape[1:] != masks.shape[1:]:
        raise ValueError(
            f"carry_over: the carried masks are {tuple(carried.shape[1:])} and the keyframe's"
            f" {tuple(masks.shape[1:])}; both must be at the masklet source's resolution (Carry.size)"
        )
    carried_areas = carried.flatten(1).sum(1)
    keep = torch.cat([carried_areas > 0, untracked(carried, masks, areas)])
    index = keep.nonzero()[:, 0]  # the one sync
    both = torch.cat([carried, masks.to(carried.device)])[index]
    return keep_largest(both, torch.cat([carried_areas, areas.to(carried.device)])[index], cap)


def untracked(tracked: torch.Tensor, masks: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """(N,) bool on `tracked`'s device: which of `masks` (N, H, W) bool, `areas` (N,) their pixel
    counts, are new objects, i.e. have at most half of their area inside the union of `tracked`
    (M, H, W) bool (masks already tracked there). The filter of both the carry-over and the
    re-detection rules (engine.py); no sync."""
    union = tracked.any(0)
    inside = (masks.to(union.device) & union).flatten(1).sum(1)
    return 2 * inside <= areas.to(inside.device)


def redetected(
    tracked: torch.Tensor, masks: torch.Tensor, areas: torch.Tensor, cap: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The re-detection rule's new masklets (engine.py): of a frame's detections (`masks` (N, H, W)
    bool, `areas` (N,) int64), those `untracked` by the window's masklets tracked at that frame
    (`tracked` (M, H, W) bool, at the source's resolution), in detection order; then the `cap`
    largest (`keep_largest`; cap: the masklets the window may still add, None: all). On the
    detections' device: one host sync on a GPU (the boolean filter), per re-detection frame."""
    if tracked.shape[1:] != masks.shape[1:]:
        raise ValueError(
            f"redetected: the tracked masks are {tuple(tracked.shape[1:])} and the detections'"
            f" {tuple(masks.shape[1:])}; both must be at the masklet source's resolution"
        )
    index = untracked(tracked, masks, areas).to(masks.device).nonzero()[:, 0]  # the one sync
    return keep_largest(masks[index], areas.to(masks.device)[index], cap)


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: through pinned memory, non-blocking, on CUDA."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class InstanceMasks:
    """The dataset's instance masks of the keyframe (DATA/data/<video>/instance/*.png), one masklet
    per id > 0 in id order: tests and benchmarks prompt SAM2 with them for a known masklet count."""

    shares_keyframe = False

    def __init__(self, device: torch.device | str = "cpu", max_masklets: int | None = None):
        self.device, self.max_masklets = torch.device(device), max_masklets

    def keyframe(self, window, features: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids = window.instances
        if ids is None:
            raise ValueError("masks='instances' needs instance masks (DATA/data/<video>/instance/*.png)")
        found = [ids == k for k in np.unique(ids) if k != 0]
        areas = torch.tensor([int(m.sum()) for m in found], dtype=torch.int64)
        masks = torch.from_numpy(np.stack(found)) if found else torch.zeros((0, *ids.shape), dtype=torch.bool)
        masks, areas = keep_largest(masks, areas, self.max_masklets)
        return upload(masks, self.device), upload(areas, self.device)


def superpixels(image: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """(H, W) int32 segment ids 0..n-1 of one frame."""
    from skimage.segmentation import felzenszwalb, slic

    if cfg.superpixel_method == "slic":
        n_segments = max(1, image.shape[0] * image.shape[1] // cfg.superpixel_size)
        seg = slic(image, n_segments=n_segments, compactness=cfg.superpixel_compactness,
                   start_label=0, enforce_connectivity=True)  # fmt: skip
    else:
        seg = felzenszwalb(
            image, scale=cfg.felzenszwalb_scale, sigma=0.8, min_size=int(cfg.felzenszwalb_scale / 4)
        )
    return seg.astype(np.int32)


class Superpixels:
    """Per-frame superpixels (scikit-image SLIC or Felzenszwalb) at the labels' resolution: a
    partition, untracked, so the refiner votes per frame and needs no model."""

    def __init__(self, cfg: RefineConfig):
        self.cfg = cfg

    def frame(self, image: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """(h, w) int32 segment ids of one (H, W, 3) uint8 frame, resized bilinearly to `hw`."""
        if image.shape[:2] != hw:
            image = np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))
        return torch.from_numpy(superpixels(image, self.cfg))
