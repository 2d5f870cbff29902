"""The reference refiner's parts, written with the official SAM2 classes, and the window types.

The reference pipeline (engine.Pipeline.reference) is, per window of W frames (non-overlapping
by default; METRICS.md 8.5): SAM2AutomaticMaskGenerator on the window's first frame (`OfficialAMG`; or the
dataset's instance masks, masklets.py), then SAM2VideoPredictor (`OfficialTracker`): `init_state`
on a per-window frame folder, `add_new_mask` per mask and `propagate_in_video` over the window;
masklets are `logits > 0` at the label resolution; then aggregate, vote and paint with the plain
torch ops (vote.ReferenceOps). It is deliberately the straightforward way: the fast pipeline is
held to its labels and measured against its speed. Overlapping windows (window_overlap > 0)
follow the carry-over rule written in engine.py: `OfficialTracker` hands the next window its
masks at that window's keyframe (`Carry`).

Labels at another resolution than the frames (one rule for both pipelines): a masklet is SAM2's
low-resolution mask logits resized once, bilinearly (align_corners=False), to the labels'
resolution, then > 0. The official predictor's video-resolution logits are that resize to the
frames' size, so the reference reads the low-resolution logits from the predictor's state
instead of resizing its output a second time; with labels at the frames' size nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2vss import model as sam2_model
from sam2vss.config import RefineConfig
from sam2vss.masklets import tracked_masks
from sam2vss.sources import to_rgb

log = logging.getLogger(__name__)


@dataclass
class Window:
    """The inputs of one window (T frames)."""

    frames: torch.Tensor  # (T, 3, H, W) uint8 RGB, on the device it was decoded to
    labels: torch.Tensor  # (T, h, w) uint8 base predictions S_t (the output resolution), on the
    #                       refiner's device (uploaded once per window, pinned and non-blocking)
    paths: list[Path] | None  # the frames' image files, when they come from a folder
    instances: np.ndarray | None  # (h, w) instance ids of the first frame (masks="instances")
    images: torch.Tensor | None = None  # (T, 3, S, S) uint8 model-size frames on the refiner's
    #                                      device, resized on the decode thread (the tracker's prepare)
    overlap: int = 0  # leading frames the previous window also covered (window_overlap; 0 for a
    #                   video's first window): refined again with this window's masklets, not written
    next_keyframe: int | None = None  # the next window's first frame, as an index in this window,
    #                                   when the next window overlaps this one (else None)
    redetect_instances: dict[int, np.ndarray] = field(default_factory=dict)  # window frame t ->
    #                                   (h, w) instance ids of frame t, at the re-detection frames
    #                                   (masks="instances" with redetect_every > 0)

    def at(self, t: int) -> Window:
        """The window's frames t.. as a window of their own, detected on its first frame (frame
        t's instance ids): what a re-detection at frame t detects on and tracks (engine.py)."""
        if t == 0:
            return self
        images = None if self.images is None else self.images[t:]
        paths = None if self.paths is None else self.paths[t:]
        instances = self.redetect_instances.get(t)
        return Window(self.frames[t:], self.labels[t:], paths, instances, images)


@dataclass
class Carry:
    """What a window hands the next one when they overlap: its masklets' masks at the next
    window's keyframe (the carry-over rule, engine.py), filled in by the tracker as it passes
    that frame, on the masklet source's device."""

    frame: int  # the next window's keyframe, as an index in this window (Window.next_keyframe)
    size: tuple[int, int]  # (H, W) of the masklet source's masks: the carried masks' resolution
    masks: torch.Tensor | None = None  # (N, H, W) bool, low-resolution logits resized to `size`
    #                                     once (bilinear, align_corners=False), then > 0; this
    #                                     window's masklet order; empty ones are kept (the next
    #                                     window drops them, in its one filter sync)


@dataclass(frozen=True)
class WindowStats:
    """What one window's refinement found: the numbers that explain a result (random weights, for
    one, find no masklets and the output silently equals the base labels)."""

    frames: int
    masklets: int  # masklets tracked through the window (superpixels: mean segments per frame)
    covered: float  # share of the window's label pixels inside at least one masklet


@dataclass
class Refined:
    """One window's refined labels on the host. From a GPU they are copied back asynchronously
    into pinned memory: `frame(t)` and `stats` wait for that copy (the PNG writers call them on
    their threads), so the compute thread never blocks on it."""

    labels: torch.Tensor  # (T, h, w) uint8 on the host
    masklets: int
    covered: torch.Tensor | int  # label pixels inside at least one masklet (host)
    ready: object | None = None  # a CUDA event recorded after the copies; None: already complete
    ids: torch.Tensor | None = None  # (T, h, w) uint16 on the host: the index + 1 of the masklet
    #                                   that won each pixel's paint, 0 = none (superpixels: segment
    #                                   id + 1); copied with the labels, under `ready`; None unless
    #                                   refine_window was asked to keep them
    carry: Carry | None = None  # the next window's carried masks (stay on the device), when the
    #                             window had a `next_keyframe`

    def __len__(self) -> int:
        return self.labels.shape[0]

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def frame(self, t: int) -> np.ndarray:
        self.wait()
        return self.labels[t].numpy()

    def frame_ids(self, t: int) -> np.ndarray:
        """Frame t's (h, w) uint16 masklet ids (refine_window(keep_ids=True))."""
        if self.ids is None:
            raise ValueError("Refined.frame_ids: the window was refined without keep_ids=True")
        self.wait()
        return self.ids[t].numpy()

    @property
    def stats(self) -> WindowStats:
        self.wait()
        return WindowStats(len(self), self.masklets, int(self.covered) / max(self.labels.numel(), 1))


class OfficialAMG:
    """The keyframe's masklets from SAM2's official SAM2AutomaticMaskGenerator (the paper's
    settings from RefineConfig), as host tensors; masks of area 0 dropped."""

    shares_keyframe = False
    max_masklets = None  # the reference keeps every masklet

    def __init__(self, predictor, cfg: RefineConfig, device: torch.device):
        self.device = device
        self.generator = sam2_model.mask_generator(
            predictor,
            points_per_side=cfg.grid,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_thresh,
            stability_score_offset=cfg.stability_offset,
            box_nms_thresh=cfg.box_nms_thresh,
        )

    def keyframe(self, window: Window, features: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), sam2_model.autocast(self.device):
            records = self.generator.generate(to_rgb(window.frames[:1])[0])
        found = [torch.from_numpy(r["segmentation"]) for r in records if r["area"] > 0]
        areas = torch.tensor([int(m.sum()) for m in found], dtype=torch.int64)
        masks = torch.stack(found) if found else torch.zeros((0, *window.frames.shape[-2:]), dtype=torch.bool)
        return masks, areas


class OfficialTracker:
    """SAM2's official per-object SAM2VideoPredictor over a window: `init_state` on a per-window
    frame folder, `add_new_mask` per masklet, `propagate_in_video`. Yields (N, h, w) float32
    logits per frame at the labels' resolution, on the host."""

    frames_device = torch.device("cpu")  # the official classes read host frames (a JPEG folder)

    def __init__(self, predictor, device: torch.device):
        self.predictor, self.device = predictor, device

    def prepare(self, frames: torch.Tensor) -> None:
        return None

    def preprocess(self, window: Window) -> None:
        return None

    def precision(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # track() enters SAM2's own autocast

    def track(
        self,
        window: Window,
        masks: torch.Tensor,
        images: None = None,
        keyframe: None = None,
        with_features: bool = False,
        carries: Sequence[Carry] = (),
    ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """(N, h, w) float logits per frame at the label resolution; each of `carries` filled
        with the masks at its frame (the predictor's low-resolution logits resized to its size,
        which at the frames' size is the predictor's own video-resolution output).

        With `with_features`, also the frame's stride-16 encoder features as the predictor
        computed them for tracking ((C, h16, w16), plus no_mem_embed like the image predictor's
        image_embed): I-SAM2 reuses them instead of a second encoder pass."""
        out_hw = window.labels[0].shape
        with tempfile.TemporaryDirectory(prefix="sam2vss_window_") as tmp:
            for t, frame in enumerate(to_rgb(window.frames)):
                dst = Path(tmp) / f"{t:05d}.jpg"
                if window.paths is not None and window.paths[t].suffix.lower() in (".jpg", ".jpeg"):
                    dst.symlink_to(window.paths[t].resolve())
                else:
                    Image.fromarray(frame).save(dst, quality=95)
            with torch.inference_mode(), sam2_model.autocast(self.device):
                state = self.predictor.init_state(video_path=tmp)
                for k, mask in enumerate(masks):
                    self.predictor.add_new_mask(state, frame_idx=0, obj_id=k, mask=mask)
                for t, obj_ids, logits in self.predictor.propagate_in_video(state):
                    order = np.argsort(np.asarray(obj_ids))
                    logits = logits[torch.as_tensor(order)].float()
                    for carry in carries:
                        if t == carry.frame:
                            low = self._low_res_logits(state, t, [obj_ids[k] for k in order])
                            carry.masks = tracked_masks(low, carry.size).cpu()
                    if logits.shape[-2:] != out_hw:  # one resize from low resolution (module docstring)
                        low = self._low_res_logits(state, t, [obj_ids[k] for k in order])
                        logits = F.interpolate(low, size=out_hw, mode="bilinear", align_corners=False)
                    if not with_features:
                        yield logits[:, 0].cpu()
                        continue
                    if t not in state["cached_features"]:  # a prompted frame whose features were evicted
                        self.predictor._get_image_feature(state, t, 1)
                    top = state["cached_features"][t][1]["backbone_fpn"][-1][0]
                    feats = top + self.predictor.no_mem_embed.reshape(-1, 1, 1)
                    yield logits[:, 0].cpu(), feats.float().cpu()
                self.predictor.reset_state(state)

    @staticmethod
    def _low_res_logits(state: dict, t: int, obj_ids: list[int]) -> torch.Tensor:
        """(N, 1, h, w) float32 low-resolution mask logits of frame t, as the predictor stored
        them for each object (what its video-resolution output was resized from)."""
        outs = []
        for obj_id in obj_ids:
            per_obj = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
            out = per_obj["cond_frame_outputs"].get(t) or per_obj["non_cond_frame_outputs"][t]
            outs.append(out["pred_masks"].float())
        return torch.cat(outs).to(state["device"])
