"""The paper's refiner written with the official SAM2 classes: the oracle and the baseline.

Per non-overlapping window of W frames (METRICS.md 8.5): SAM2AutomaticMaskGenerator on the
window's first frame (or the dataset's instance masks with `masks="instances"`), then
SAM2VideoPredictor: `init_state` on a per-window frame folder, `add_new_mask` per mask and
`propagate_in_video` over the window; masklets are `logits > 0` at the label resolution. Then
aggregate, vote and paint (vote.py). Superpixel masklets (scikit-image, per frame, vote scope
frame) need no model. It is deliberately the straightforward way: the fast engine is held to
its labels and measured against its speed.

Labels at another resolution than the frames (one rule for both pipelines): a masklet is SAM2's
low-resolution mask logits resized once, bilinearly (align_corners=False), to the labels'
resolution, then > 0. The official predictor's video-resolution logits are that resize to the
frames' size, so the reference reads the low-resolution logits from the predictor's state
instead of resizing its output a second time; with labels at the frames' size nothing changes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2vss import model as sam2_model
from sam2vss.config import RefineConfig
from sam2vss.model import ModelConfig
from sam2vss.sources import to_rgb
from sam2vss.stages import Stages
from sam2vss.vote import aggregate, aggregate_logits, decide, id_histogram, paint, paint_order, vote_histogram

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
    #                                      device, resized on the decode thread (FastRefiner.prepare)


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

    def __len__(self) -> int:
        return self.labels.shape[0]

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def frame(self, t: int) -> np.ndarray:
        self.wait()
        return self.labels[t].numpy()

    @property
    def stats(self) -> WindowStats:
        self.wait()
        return WindowStats(len(self), self.masklets, int(self.covered) / max(self.labels.numel(), 1))


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


def _resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


class ReferenceRefiner:
    """Refines one video at a time; construct once (it builds the model once)."""

    def __init__(self, cfg: RefineConfig, model_cfg: ModelConfig | None = None):
        self.cfg = cfg
        self.predictor = None
        self.generator = None
        self.stages = Stages()
        self.device = torch.device("cpu")  # where the model runs and the labels are uploaded to
        self.frames_device = torch.device(
            "cpu"
        )  # where windows are decoded to: the official classes take host frames
        self.model_dtype = "float32"
        self._last: Refined | None = None
        if cfg.masks != "superpixel":
            model_cfg = model_cfg or ModelConfig()
            self.device = sam2_model.use_device(model_cfg.device)
            self.predictor = sam2_model.build(model_cfg, video=True)
            if cfg.masks == "sam2":
                self.generator = sam2_model.mask_generator(
                    self.predictor,
                    points_per_side=cfg.grid,
                    pred_iou_thresh=cfg.pred_iou_thresh,
                    stability_score_thresh=cfg.stability_thresh,
                    stability_score_offset=cfg.stability_offset,
                    box_nms_thresh=cfg.box_nms_thresh,
                )

    @property
    def last_window(self) -> WindowStats | None:
        """What the last refine_window call found (waits for its device copy, if any)."""
        return None if self._last is None else self._last.stats

    # ------------------------------------------------------------------ masklets
    def _keyframe_masks(self, window: Window) -> tuple[list[np.ndarray], torch.Tensor]:
        """Masks to prompt on the window's first frame, and their areas (for the paint order)."""
        if self.cfg.masks == "instances":
            ids = window.instances
            if ids is None:
                raise ValueError("masks='instances' needs instance masks (DATA/data/<video>/instance/*.png)")
            masks = [ids == k for k in np.unique(ids) if k != 0]
        else:
            with torch.inference_mode(), sam2_model.autocast(self.device):
                records = self.generator.generate(to_rgb(window.frames[:1])[0])
            masks = [r["segmentation"] for r in records if r["area"] > 0]
        areas = torch.tensor([int(m.sum()) for m in masks], dtype=torch.int64)
        return masks, areas

    def _propagate(
        self, window: Window, masks: list[np.ndarray], with_features: bool = False
    ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """(N, h, w) float logits per frame at the label resolution, via the official predictor.

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

    # ------------------------------------------------------------------ refine
    def refine_window(self, window: Window) -> Refined:
        cfg, c = self.cfg, self.cfg.num_classes
        labels = list(window.labels.cpu())
        if cfg.masks == "superpixel":
            out, segments = [], 0
            for frame, s in zip(to_rgb(window.frames), labels, strict=True):
                seg = torch.from_numpy(superpixels(_resize_image(frame, tuple(s.shape)), cfg))
                n = int(seg.max()) + 1
                segments += n
                out.append(paint(seg, decide(id_histogram(seg, s, n, c)), s))
            self._last = Refined(torch.stack(out), round(segments / len(out)), sum(s.numel() for s in labels))
            return self._last

        masks0, areas = self._keyframe_masks(window)
        if not masks0:
            self._last = Refined(torch.stack(labels), 0, 0)
            return self._last
        order = paint_order(areas, cfg.paint_order)
        ids, hists = [], torch.zeros((len(masks0), c), dtype=torch.int64)
        out: list[torch.Tensor] = []
        covered = 0
        for logits, s in zip(self._propagate(window, masks0), labels, strict=True):
            masks = logits > 0
            ids.append(aggregate_logits(logits) if cfg.paint_order == "logit" else aggregate(masks, order))
            covered += int((ids[-1] >= 0).sum())
            hist = vote_histogram(masks, s, c)
            if cfg.vote_scope == "frame":
                out.append(paint(ids[-1], decide(hist), s))
            else:
                hists += hist
        if cfg.vote_scope == "masklet":
            classes = decide(hists)
            out = [paint(i, classes, s) for i, s in zip(ids, labels, strict=True)]
        self._last = Refined(torch.stack(out), len(masks0), covered)
        return self._last
