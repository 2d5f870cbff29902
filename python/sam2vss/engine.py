"""The fast refiner: the reference refiner's labels with the per-object loop, the full-size
intermediates and the host round trips removed.

Per window (`refine_window`, the engine loop; decode and PNG writes overlap it in refine.py):
    preprocess (Pillow-exact, or fused on the device)
    -> encode the keyframe -> detect (detect.BatchedDetector: all grid prompts in one decoder
       call, device NMS, no RLE; or the dataset's instance masks)
    -> encode + propagate (propagate.BatchedTracker: each frame encoded once, in batches; all
       masklets in one forward per frame)
    -> aggregate (kernels: bilinear upsampling of the low-resolution logits fused with the paint
       winner and each masklet's votes; no N x H x W tensor is ever built)
    -> vote (kernels: decide per masklet over the window, or per frame; paint).
The `exact` preset (config.PRESETS) preprocesses as SAM2's loaders do and detects on the image
predictor's own input, so labels agree with the reference on >= 99.9% of pixels (measured 100%
in tests/test_engine.py; the only differences come from upsampling rounding at logits within
~1e-5 of 0). The other presets share the keyframe's tracking features with detection and trade
exactness for speed; `sam2vss bench` measures their agreement. Superpixel masklets have no model
stage: they run the reference code.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from sam2vss import model as sam2_model
from sam2vss.backends import apply_backend
from sam2vss.config import PRESETS, RefineConfig
from sam2vss.detect import BatchedDetector
from sam2vss.kernels import kernel_ops
from sam2vss.model import ModelConfig
from sam2vss.propagate import BatchedTracker, default_chunk_tokens, preprocess, to_model_input
from sam2vss.reference import ReferenceRefiner, Window, WindowStats
from sam2vss.sources import to_rgb
from sam2vss.stages import Stages
from sam2vss.vote import paint_order


class FastRefiner(ReferenceRefiner):
    """Same interface and configuration as ReferenceRefiner; `refine_window` is the fast path."""

    def __init__(self, cfg: RefineConfig, model_cfg: ModelConfig | None = None, synced_stages: bool = False):
        super().__init__(cfg, model_cfg)
        self.engine = PRESETS[cfg.preset]
        self.ops = kernel_ops("cpu")  # labels and votes live on the host; logits come back from the device
        if self.predictor is None:
            return
        size = self.engine.track_size(self.predictor.image_size)
        track_model = self.predictor
        if size != self.predictor.image_size:  # same weights, smaller input: a second, cheaper tracker
            track_model = sam2_model.build(replace(model_cfg or ModelConfig(), image_size=size))
        apply_backend(track_model, cfg.backend, model_cfg, self.engine.encode_batch)
        self.tracker = BatchedTracker(
            track_model,
            self.engine.encode_batch,
            self.engine.memory_frames,
            default_chunk_tokens(self.device),
        )
        self.detector = None
        if cfg.masks == "sam2":
            ops = kernel_ops(self.device)
            self.detector = BatchedDetector(self.predictor, cfg, ops, self.engine.low_res_stability)
        # The keyframe's tracking features serve detection too when both run the same model on
        # the same input; `exact` keeps the image predictor's own preprocessing for detection.
        self.share_keyframe = self.engine.preprocess == "device" and track_model is self.predictor
        self.frames_device = self.device  # decoded (or copied from pinned memory) straight to the device
        self.stages = Stages(self.device, synced=synced_stages)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 -> (T, 3, S, S) tracker input, Pillow-exact or fused on the device."""
        size = self.tracker.model.image_size
        if self.engine.preprocess == "sam2":
            return torch.stack([preprocess(f, size) for f in to_rgb(frames)])
        return to_model_input(frames, size)

    def detect(self, window: Window, keyframe: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The keyframe's masklets (N, H, W) bool and areas (N,), capped to the preset's largest N.
        `keyframe`: the tracker's backbone output of frame 0, reused when shareable."""
        if self.detector is None:
            masks, areas = self._keyframe_masks(window)
            masks = (
                torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros((0, *window.labels[0].shape), dtype=torch.bool)
            )
        else:
            if keyframe is None:  # the image predictor's own preprocessing (SAM2Transforms)
                image = self.generator.predictor._transforms(to_rgb(window.frames[:1])[0])[None]
                keyframe = self.predictor.forward_image(image.to(self.device))
            found = self.detector.detect(keyframe, tuple(window.frames.shape[-2:]))
            nonempty = found.areas > 0
            masks, areas = found.masks[nonempty], found.areas[nonempty]
        cap = self.engine.max_masklets
        if cap is not None and masks.shape[0] > cap:
            keep = torch.argsort(areas, descending=True, stable=True)[:cap].sort().values
            masks, areas = masks[keep], areas[keep]
        return masks, areas.cpu()

    def refine_window(self, window: Window) -> list[np.ndarray]:
        cfg, c, st = self.cfg, self.cfg.num_classes, self.stages
        if cfg.masks == "superpixel":
            return super().refine_window(window)
        labels = [torch.from_numpy(s) for s in window.labels]
        with st.time("preprocess"):
            images = self.preprocess(window.frames)
        by_logit = cfg.paint_order == "logit"
        with torch.inference_mode(), sam2_model.autocast(self.device):
            keyframe = None
            if self.detector is not None and self.share_keyframe:
                with st.time("encode"):
                    keyframe = self.tracker.encode_frame(images[0])
            with st.time("detect"):
                masks0, areas = self.detect(window, keyframe)
            n = masks0.shape[0]
            if n == 0:
                self.last_window = WindowStats(len(labels), 0, 0.0)
                return [s.numpy() for s in labels]
            rank = torch.empty(n, dtype=torch.int32)
            rank[paint_order(areas, cfg.paint_order)] = torch.arange(n, dtype=torch.int32)  # later wins
            ids, hists, out = [], torch.zeros((n, c), dtype=torch.int64), []
            covered = torch.zeros((), dtype=torch.int64)
            for logits, s in zip(self.tracker.track(images, masks0, st, keyframe), labels, strict=True):
                with st.time("aggregate+vote"):
                    frame_ids, hist = self.ops.aggregate(logits[:, 0].float().cpu(), rank, s, c, by_logit)
                    covered += (frame_ids >= 0).sum()
                    if cfg.vote_scope == "frame":
                        out.append(self.ops.paint(frame_ids, self.ops.decide(hist), s).numpy())
                    else:
                        ids.append(frame_ids)
                        hists += hist
        if cfg.vote_scope == "masklet":
            with st.time("aggregate+vote"):
                classes = self.ops.decide(hists)
                out = [self.ops.paint(i, classes, s).numpy() for i, s in zip(ids, labels, strict=True)]
        pixels = sum(s.numel() for s in labels)
        self.last_window = WindowStats(len(labels), n, int(covered) / pixels)  # one read per window
        return out


def make_refiner(cfg: RefineConfig, model_cfg: ModelConfig | None, pipeline: str) -> ReferenceRefiner:
    if pipeline == "reference":
        return ReferenceRefiner(cfg, model_cfg)
    if pipeline == "fast":
        return FastRefiner(cfg, model_cfg)
    raise ValueError(f"unknown pipeline {pipeline!r}; expected reference or fast")
