"""The fast refiner: the reference refiner's labels with the per-object loop, the full-size
intermediates and the host round trips removed.

Per window (`refine_window`, the engine loop; decode and PNG writes overlap it in refine.py):
    model input (`exact`: frames resized by Pillow on the decode thread, normalised on the
       device; other presets: resize + normalise fused on the device)
    -> encode the keyframe -> detect (detect.BatchedDetector: all grid prompts in one decoder
       call, device NMS, no RLE; or the dataset's instance masks)
    -> encode + propagate (propagate.BatchedTracker: each frame encoded once, in batches; all
       masklets in one forward per frame)
    -> aggregate (kernels: bilinear upsampling of the low-resolution logits fused with the paint
       winner and each masklet's votes; no N x H x W tensor is ever built)
    -> vote (kernels: decide per masklet over the window, or per frame; paint)
    -> the painted uint8 labels copied back once per window (pinned, non-blocking, an event the
       PNG writers wait on).
The decision a reader must know: everything from the labels' upload to the painted labels stays
on the model's device. The frames after the keyframe make no host sync (the emulated CUDA device
counts it: tests/test_gpu_path.py); the per-window syncs are detection's filters and NMS.

The `exact` preset (config.PRESETS) preprocesses as SAM2's loaders do and detects on the image
predictor's own input, so labels agree with the reference on >= 99.9% of pixels (measured 100%
in tests/test_engine.py in fp32; the only differences come from upsampling rounding at logits
within ~1e-5 of 0). The other presets share the keyframe's tracking features with detection and
trade exactness for speed, on CUDA with a bf16 model; `sam2vss bench` measures their agreement.
Superpixel masklets have no model stage: they run the reference code.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch

from sam2vss import model as sam2_model
from sam2vss.backends import apply_backend, fit_rope_tables
from sam2vss.config import PRESETS, EngineConfig, RefineConfig
from sam2vss.detect import BatchedDetector
from sam2vss.kernels import kernel_ops
from sam2vss.model import ModelConfig
from sam2vss.propagate import (
    BatchedTracker,
    default_chunk_tokens,
    normalize_images,
    resize_frames,
    to_bf16,
    to_model_input,
)
from sam2vss.reference import ReferenceRefiner, Refined, Window
from sam2vss.sources import to_rgb
from sam2vss.stages import Stages
from sam2vss.vote import paint_order


class FastRefiner(ReferenceRefiner):
    """Same interface and configuration as ReferenceRefiner; `refine_window` is the fast path.
    `engine` overrides the preset's EngineConfig (benchmarks and tests)."""

    def __init__(
        self,
        cfg: RefineConfig,
        model_cfg: ModelConfig | None = None,
        synced_stages: bool = False,
        engine: EngineConfig | None = None,
    ):
        super().__init__(cfg, model_cfg)
        self.engine = engine or PRESETS[cfg.preset]
        self.ops = kernel_ops(self.device)  # labels, votes and painted maps live on the model's device
        self.stages = Stages(self.device, synced=synced_stages)
        if self.predictor is None:
            return
        self.bf16 = self.engine.use_bf16(self.device)
        self.model_dtype = "bfloat16" if self.bf16 else "float32"
        size = self.engine.track_size(self.predictor.image_size)
        if self.bf16:  # detection and tracking share the bf16 weights
            to_bf16(self.predictor)
        track_model = self.predictor
        if size != self.predictor.image_size:  # same weights, smaller input: a second, cheaper tracker
            track_model = sam2_model.build(replace(model_cfg or ModelConfig(), image_size=size))
            if self.bf16:
                to_bf16(track_model)
        fit_rope_tables(track_model)
        apply_backend(track_model, cfg.backend, model_cfg, self.engine.encode_batch)
        self.tracker = BatchedTracker(
            track_model,
            self.engine.encode_batch,
            self.engine.memory_frames,
            default_chunk_tokens(self.device, size),
        )
        self.detector = None
        if cfg.masks == "sam2":
            self.detector = BatchedDetector(self.predictor, cfg, self.ops, self.engine.low_res_stability)
        # The keyframe's tracking features serve detection too when both run the same model on
        # the same input; `exact` keeps the image predictor's own preprocessing for detection.
        self.share_keyframe = self.engine.preprocess == "device" and track_model is self.predictor
        # `exact` decodes on the host (Pillow resizes there, on the decode thread); the device
        # presets decode straight to the device (NVDEC / nvJPEG) and resize there
        self.frames_device = self.device if self.engine.preprocess == "device" else torch.device("cpu")

    # ------------------------------------------------------------------ model input
    def prepare(self, frames: torch.Tensor) -> torch.Tensor | None:
        """On the decode thread, one window ahead: `exact`'s Pillow resize of the (T, 3, H, W)
        uint8 host frames to (T, 3, S, S) uint8, uploaded to the device (pinned, non-blocking).
        None for the device presets (they resize on the device)."""
        if self.predictor is None or self.engine.preprocess != "sam2":
            return None
        images = resize_frames(frames, self.tracker.model.image_size)
        if self.device.type == "cuda":
            return images.pin_memory().to(self.device, non_blocking=True)
        return images

    def preprocess(self, window: Window) -> torch.Tensor:
        """The tracker's (T, 3, S, S) input on the device, Pillow-exact or fused on the device."""
        size = self.tracker.model.image_size
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        if self.engine.preprocess == "sam2":
            images = window.images if window.images is not None else self.prepare(window.frames)
            return normalize_images(images.to(self.device)).to(dtype)
        return to_model_input(window.frames.to(self.device), size, dtype)

    def precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (on CUDA, SAM2's own recipe; with a bf16 model it no longer casts the
        weights, and on a CPU it is only on when bf16 is forced); fp32 on a CPU."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return sam2_model.autocast(self.device)

    # ------------------------------------------------------------------ masklets
    def detect(self, window: Window, keyframe: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The keyframe's masklets (N, H, W) bool and areas (N,) int64, on the device, capped to
        the preset's largest N. `keyframe`: the tracker's backbone output of frame 0, reused
        when shareable."""
        if self.detector is None:
            found, areas = self._keyframe_masks(window)  # host instance masks
            masks = torch.from_numpy(np.stack(found)) if found else torch.zeros((0, *window.labels.shape[1:]))
            masks, areas = self._cap(masks.bool(), areas)
            return self._upload(masks), self._upload(areas)
        if keyframe is None and self.engine.preprocess == "sam2":  # the image predictor's own
            image = self.generator.predictor._transforms(to_rgb(window.frames[:1])[0])[None]  # (host)
            keyframe = self.predictor.forward_image(self._upload(image))
        elif keyframe is None:  # a smaller tracker: detection encodes the keyframe at full size
            dtype = torch.bfloat16 if self.bf16 else torch.float32
            image = to_model_input(window.frames[:1].to(self.device), self.predictor.image_size, dtype)
            keyframe = self.predictor.forward_image(image)
        found = self.detector.detect(keyframe, tuple(window.frames.shape[-2:]))
        nonempty = found.areas > 0  # a boolean filter: one sync, per window
        return self._cap(found.masks[nonempty], found.areas[nonempty])

    def _cap(self, masks: torch.Tensor, areas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cap = self.engine.max_masklets
        if cap is not None and masks.shape[0] > cap:
            keep = torch.argsort(areas, descending=True, stable=True)[:cap].sort().values
            masks, areas = masks[keep], areas[keep]
        return masks, areas

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ the loop
    def refine_window(self, window: Window) -> Refined:
        cfg, c, st, ops = self.cfg, self.cfg.num_classes, self.stages, self.ops
        if cfg.masks == "superpixel":
            return super().refine_window(window)
        labels = window.labels.to(self.device)  # uploaded by the decode thread: a no-op here
        with st.time("preprocess"):
            images = self.preprocess(window)
        by_logit = cfg.paint_order == "logit"
        with torch.inference_mode(), self.precision():
            keyframe = None
            if self.detector is not None and self.share_keyframe:
                with st.time("encode"):
                    keyframe = self.tracker.encode_frame(images[0])
            with st.time("detect"):
                masks0, areas = self.detect(window, keyframe)
            n = masks0.shape[0]
            if n == 0:
                return self._finish(labels, 0, torch.zeros((), dtype=torch.int64, device=self.device))
            rank = torch.empty(n, dtype=torch.int32, device=self.device)  # paint position: later wins
            rank[paint_order(areas, cfg.paint_order)] = torch.arange(n, dtype=torch.int32, device=self.device)
            ids, out = [], []
            hists = torch.zeros((n, c), dtype=torch.int64, device=self.device)
            covered = torch.zeros((), dtype=torch.int64, device=self.device)
            for logits, s in zip(self.tracker.track(images, masks0, st, keyframe), labels, strict=True):
                with st.time("aggregate+vote"):
                    frame_ids, hist = ops.aggregate(logits[:, 0], rank, s, c, by_logit)
                    covered += (frame_ids >= 0).sum()
                    if cfg.vote_scope == "frame":
                        out.append(ops.paint(frame_ids, ops.decide(hist), s))
                    else:
                        ids.append(frame_ids)
                        hists += hist
            with st.time("aggregate+vote"):
                if cfg.vote_scope == "masklet":
                    classes = ops.decide(hists)
                    out = [ops.paint(i, classes, s) for i, s in zip(ids, labels, strict=True)]
                return self._finish(torch.stack(out), n, covered)

    def _finish(self, painted: torch.Tensor, masklets: int, covered: torch.Tensor) -> Refined:
        """The painted (T, h, w) uint8 labels and the covered-pixel count, on the host. From a
        GPU: one non-blocking copy into pinned memory and an event the writers wait on."""
        if self.device.type != "cuda":
            self._last = Refined(painted, masklets, covered)
            return self._last
        host = torch.empty(painted.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(painted, non_blocking=True)
        count = torch.empty(1, dtype=torch.int64, pin_memory=True)
        count.copy_(covered.view(1), non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        self._last = Refined(host, masklets, count, ready)
        return self._last


def make_refiner(cfg: RefineConfig, model_cfg: ModelConfig | None) -> ReferenceRefiner:
    """cfg.pipeline's refiner; the fast one runs cfg.engine (None: the preset's)."""
    if cfg.pipeline == "reference":
        return ReferenceRefiner(cfg, model_cfg)
    if cfg.pipeline == "fast":
        return FastRefiner(cfg, model_cfg, engine=cfg.engine)
    raise ValueError(f"unknown pipeline {cfg.pipeline!r}; expected reference or fast")
