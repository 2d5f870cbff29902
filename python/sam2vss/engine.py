"""The refiner pipeline: a masklet source, a tracker and vote ops, composed and driven by one loop.

`Pipeline.refine_window` is the engine loop (decode and PNG writes overlap it in video.py):
    preprocess (the tracker's model input: `exact` resizes with Pillow on the decode thread and
       normalises on the device; the other presets resize + normalise fused on the device)
    -> encode the keyframe, when detection can share it
    -> detect (the masklet source: the dataset's instance masks, SAM2's official generator, the
       batched detector (all grid prompts in one decoder call, device NMS, no RLE), superpixels)
    -> propagate (the tracker: the official per-object SAM2VideoPredictor, or BatchedTracker with
       each frame encoded once, in batches, and all masklets in one forward per frame)
    -> aggregate + vote (vote.Votes with vote ops: the plain torch ops, or the kernels: bilinear
       upsampling of the low-resolution logits fused with the paint winner and each masklet's
       votes, no N x H x W tensor ever built)
    -> the painted uint8 labels copied back once per window (pinned, non-blocking, an event the
       PNG writers wait on), with the uint16 masklet ids when asked (refine --save-masklets).
Two named constructors pick the parts: `Pipeline.reference` = official generator + official
predictor + plain ops on the host (the oracle and the baseline); `Pipeline.fast` = batched
detector + batched tracker + kernels on the model's device. Superpixels have no tracker: both
vote per frame over the partition with the plain ops.

Overlapping windows (RefineConfig.window_overlap = K > 0; K = 0 is the paper's non-overlapping
windows, unchanged). Windows start at s_i = i * (W - K) and cover [s_i, min(s_i + W, T)) until one
reaches T (video.window_starts). Two rules, the same in both pipelines:
- carry-over: the keyframe of window i > 0 is frame s_i, which window i-1 also tracked. Window
  i's masklets are first the masklets of window i-1 that are non-empty at frame s_i (their mask
  there: the tracker's logits > 0 at s_i, resized once to the masklet source's resolution; in
  their order in window i-1), then the keyframe's masklets from the source (SAM2's generator or
  the instance masks, as without overlap) except those with more than half of their area inside
  the union of the carried masks (objects already tracked). Paint order and ranks come from
  this list's keyframe areas, as without overlap; the preset's masklet cap applies to the list.
- vote: each window votes over all its frames, the overlap included (a carried masklet's class in
  window i uses the overlap's evidence too). An overlap frame's output is the earlier window's
  label (written once, when window i-1 painted it); window i's painting of its first K frames is
  discarded (video.refine_video, api.Refiner). Window stats count all of a window's frames.
The tracker fills a `Carry` at frame s_i of window i-1 (fast pipeline: on the device, a resize
and a compare in that frame, no sync); window i filters it with its keyframe masks in one
boolean filter (masklets.carry_over): one more host sync per window, in its setup.

Re-detection within a window (RefineConfig.redetect_every = K > 0; K = 0 detects on the
keyframe only, unchanged). At the window's frames t = K, 2K, ... (< its length) the source
detects on frame t (`Window.at(t)`: SAM2's generator on that frame, or frame t's instance masks);
the detections with more than half of their area inside the union of the masklets tracked at t
(logits > 0 there, resized to the source's resolution: masklets.redetected, the carry-over's
filter) are dropped, the preset's masklet cap bounds the window's total; the rest are a new
group (`Groups`), tracked from t to the window's end by a tracker run of its own
(BatchedTracker.track on images[t:], OfficialTracker on the frames t..), absent before t (no
pixel, no vote). Paint ranks cover all the window's masklets by their detection-frame areas
(paint_rank), ties in detection order; the masklet vote sums each masklet's frames; the masklet
count and the next window's carried masks cover all groups. Syncs: detection's own and one for
the filter, per re-detection frame; none on other frames.

The decision a reader must know: in the fast pipeline everything from the labels' upload to the
painted labels stays on the model's device. The frames after the keyframe make no host sync (the
emulated CUDA device counts it: tests/test_gpu_path.py); the per-window syncs are detection's
filters and NMS. The `exact` preset (config.PRESETS) preprocesses as SAM2's loaders do and
detects on the image predictor's own input, so labels agree with the reference on >= 99.9% of
pixels (100% in tests/test_golden.py and tests/test_engine.py in fp32; the only differences come
from upsampling rounding at logits within ~1e-5 of 0). The other presets share the keyframe's
tracking features with detection and trade exactness for speed, on CUDA with a bf16 model;
`sam2vss bench` measures their agreement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from sam2vss import model as sam2_model
from sam2vss.backends import apply_backend, fit_rope_tables
from sam2vss.config import EngineConfig, RefineConfig
from sam2vss.detect import BatchedDetector
from sam2vss.kernels import kernel_ops
from sam2vss.masklets import (
    InstanceMasks,
    Superpixels,
    carry_over,
    keep_largest,
    redetected,
    tracked_masks,
    upload,
)
from sam2vss.model import ModelConfig
from sam2vss.propagate import (
    BatchedTracker,
    default_chunk_tokens,
    normalize_images,
    resize_frames,
    to_bf16,
    to_model_input,
)
from sam2vss.reference import Carry, OfficialAMG, OfficialTracker, Refined, Window, WindowStats
from sam2vss.sources import to_rgb
from sam2vss.stages import Stages
from sam2vss.vote import ReferenceOps, Votes, id_histogram, paint_rank


def _fast_models(
    model_cfg: ModelConfig, engine: EngineConfig, backend: str, device: torch.device, bf16: bool
):
    """The fast pipeline's models: the predictor (detection), the tracking model (the same one,
    or the same weights at the preset's smaller input) and its BatchedTracker."""
    predictor = sam2_model.build(model_cfg, video=True)
    size = engine.track_size(predictor.image_size)
    if bf16:  # detection and tracking share the bf16 weights
        to_bf16(predictor)
    track_model = predictor
    if size != predictor.image_size:  # same weights, smaller input: a second, cheaper tracker
        track_model = sam2_model.build(replace(model_cfg, image_size=size))
        if bf16:
            to_bf16(track_model)
    fit_rope_tables(track_model)
    apply_backend(track_model, backend, model_cfg, engine.encode_batch)
    batched = BatchedTracker(
        track_model, engine.encode_batch, engine.memory_frames, default_chunk_tokens(device, size)
    )
    return predictor, track_model, batched


class FastTracker:
    """BatchedTracker with the fast pipeline's model input and precision (EngineConfig): yields
    (N, h, w) low-resolution logits per frame on the model's device."""

    def __init__(
        self, batched: BatchedTracker, engine: EngineConfig, device: torch.device, bf16: bool, stages: Stages
    ):
        self.batched, self.engine, self.device, self.bf16 = batched, engine, device, bf16
        self.model, self.stages = batched.model, stages  # the pipeline's stage timer (encode, propagate)
        # `exact` decodes on the host (Pillow resizes there, on the decode thread); the device
        # presets decode straight to the device (NVDEC / nvJPEG) and resize there
        self.frames_device = device if engine.preprocess == "device" else torch.device("cpu")

    def prepare(self, frames: torch.Tensor) -> torch.Tensor | None:
        """On the decode thread, one window ahead: `exact`'s Pillow resize of the (T, 3, H, W)
        uint8 host frames to (T, 3, S, S) uint8, uploaded to the device (pinned, non-blocking).
        None for the device presets (they resize on the device)."""
        if self.engine.preprocess != "sam2":
            return None
        return upload(resize_frames(frames, self.model.image_size), self.device)

    def preprocess(self, window: Window) -> torch.Tensor:
        """The tracker's (T, 3, S, S) input on the device, Pillow-exact or fused on the device."""
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        if self.engine.preprocess == "sam2":
            images = window.images if window.images is not None else self.prepare(window.frames)
            return normalize_images(images.to(self.device)).to(dtype)
        return to_model_input(window.frames.to(self.device), self.model.image_size, dtype)

    def precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (on CUDA, SAM2's own recipe; with a bf16 model it no longer casts the
        weights, and on a CPU it is only on when bf16 is forced); fp32 on a CPU."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return sam2_model.autocast(self.device)

    def encode_keyframe(self, images: torch.Tensor) -> dict:
        return self.batched.encode_frame(images[0])

    def track(
        self,
        window: Window,
        masks: torch.Tensor,
        images: torch.Tensor,
        keyframe: dict | None = None,
        carries: Sequence[Carry] = (),
    ) -> Iterator[torch.Tensor]:
        """Each of `carries`: filled with the masks at its frame, on the device (a resize and a
        compare, no sync)."""
        for t, logits in enumerate(self.batched.track(images, masks, self.stages, keyframe)):
            for carry in carries:
                if t == carry.frame:
                    carry.masks = tracked_masks(logits, carry.size)
            yield logits[:, 0]


class DetectedMasks:
    """The keyframe's masklets from the batched detector (detect.BatchedDetector) on the device,
    the preset's largest N. Detection encodes the keyframe itself unless it can share the
    tracker's encoding (`shares_keyframe`: same model, same input): `exact` detects on the image
    predictor's own input (model.image_transform), a smaller tracker's input is not full size."""

    def __init__(
        self, model, detector: BatchedDetector, engine: EngineConfig, device, bf16: bool, shares: bool
    ):
        self.model, self.detector, self.engine, self.device, self.bf16 = model, detector, engine, device, bf16
        self.shares_keyframe, self.max_masklets = shares, engine.max_masklets
        self.transform = sam2_model.image_transform(model) if engine.preprocess == "sam2" else None

    def keyframe(self, window: Window, features: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if features is None and self.transform is not None:  # the image predictor's own input
            image = self.transform(to_rgb(window.frames[:1])[0])[None]  # (host)
            features = self.model.forward_image(upload(image, self.device))
        elif features is None:  # a smaller tracker: detection encodes the keyframe at full size
            dtype = torch.bfloat16 if self.bf16 else torch.float32
            image = to_model_input(window.frames[:1].to(self.device), self.model.image_size, dtype)
            features = self.model.forward_image(image)
        found = self.detector.detect(features, tuple(window.frames.shape[-2:]))
        nonempty = found.areas > 0  # a boolean filter: one sync, per window
        return keep_largest(found.masks[nonempty], found.areas[nonempty], self.max_masklets)


class ModelCache:
    """SAM2 built once per (pipeline, model, engine, backend) for every Pipeline built with the
    same cache (`sam2vss sweep`: the settings of a window or threshold sweep share one model).
    Sound because nothing a refinement does changes the model: the weights, the bf16 cast, the
    RoPE tables and a compiled backend depend only on the key, and the trackers keep no state
    between windows (tests/test_sweep.py compares each swept row with a refine of its own)."""

    def __init__(self) -> None:
        self._built: dict[tuple, object] = {}

    def get(self, key: tuple, build):
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    @property
    def builds(self) -> int:
        return len(self._built)


def model_key(
    cfg: RefineConfig, model_cfg: ModelConfig | None, engine: EngineConfig | None = None
) -> tuple | None:
    """What a pipeline's SAM2 depends on (ModelCache's key); None for superpixels (no model)."""
    if cfg.masks == "superpixel":
        return None
    model_cfg = model_cfg or ModelConfig()
    if cfg.pipeline == "reference":
        return ("reference", model_cfg)
    return ("fast", model_cfg, engine or cfg.fast_engine(), cfg.backend)


class Pipeline:
    """Refines one window at a time; build it once (it builds SAM2 once) with `Pipeline.build`,
    `Pipeline.reference` or `Pipeline.fast`. Parts: `source` (keyframe masklets), `tracker`
    (per-frame logits; None for superpixels), `ops` (aggregate / decide / paint on `device`)."""

    def __init__(self, cfg: RefineConfig, source, tracker, ops, device: torch.device, stages: Stages,
                 model_dtype: str = "float32", model_device: torch.device | None = None):  # fmt: skip
        self.cfg, self.source, self.tracker, self.ops = cfg, source, tracker, ops
        self.device = device  # where labels are uploaded to and voted on
        self.model_device = model_device or device  # where SAM2 runs
        self.frames_device = tracker.frames_device if tracker is not None else torch.device("cpu")
        self.stages, self.model_dtype = stages, model_dtype
        self._last: Refined | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def build(
        cls,
        cfg: RefineConfig,
        model_cfg: ModelConfig | None = None,
        pipeline: str | None = None,
        models: ModelCache | None = None,
    ) -> Pipeline:
        """The refiner of `pipeline` (reference or fast; default cfg.pipeline); `models`: reuse
        the SAM2 built for an earlier pipeline with the same model settings."""
        pipeline = pipeline or cfg.pipeline
        if pipeline == "reference":
            return cls.reference(cfg, model_cfg, models)
        if pipeline == "fast":
            return cls.fast(cfg, model_cfg, models=models)
        raise ValueError(f"unknown pipeline {pipeline!r}; expected reference or fast")

    @classmethod
    def reference(
        cls, cfg: RefineConfig, model_cfg: ModelConfig | None = None, models: ModelCache | None = None
    ) -> Pipeline:
        """The paper's refiner with the official SAM2 classes: the official generator (or the
        instance masks), SAM2VideoPredictor per object, the plain torch vote ops on the host."""
        host = torch.device("cpu")
        if cfg.masks == "superpixel":
            return cls(cfg, Superpixels(cfg), None, ReferenceOps(), host, Stages())
        model_cfg = model_cfg or ModelConfig()
        device = sam2_model.use_device(model_cfg.device)
        key = model_key(replace(cfg, pipeline="reference"), model_cfg)
        predictor = (models or ModelCache()).get(key, lambda: sam2_model.build(model_cfg, video=True))
        source = OfficialAMG(predictor, cfg, device) if cfg.masks == "sam2" else InstanceMasks(host)
        tracker = OfficialTracker(predictor, device)
        return cls(cfg, source, tracker, ReferenceOps(), host, Stages(), model_device=device)

    @classmethod
    def fast(
        cls,
        cfg: RefineConfig,
        model_cfg: ModelConfig | None = None,
        synced_stages: bool = False,
        engine: EngineConfig | None = None,
        models: ModelCache | None = None,
    ) -> Pipeline:
        """The fast pipeline: the batched detector (or the instance masks), BatchedTracker and the
        kernels, all on the model's device. `engine` overrides cfg's (cfg.fast_engine(): the
        preset's with cfg.engine's overrides); `synced_stages` times stages with device syncs;
        `models`: reuse the SAM2 built for an earlier pipeline with the same model settings."""
        engine = engine or cfg.fast_engine()
        if cfg.masks == "superpixel":  # no model stage: the reference's parts
            return cls.reference(cfg, model_cfg)
        model_cfg = model_cfg or ModelConfig()
        device = sam2_model.use_device(model_cfg.device)
        ops = kernel_ops(device)  # labels, votes and painted maps live on the model's device
        bf16 = engine.use_bf16(device)
        key = model_key(replace(cfg, pipeline="fast"), model_cfg, engine)
        predictor, track_model, batched = (models or ModelCache()).get(
            key, lambda: _fast_models(model_cfg, engine, cfg.backend, device, bf16)
        )
        stages = Stages(device, synced=synced_stages)
        tracker = FastTracker(batched, engine, device, bf16, stages)
        if cfg.masks == "sam2":
            detector = BatchedDetector(predictor, cfg, ops, engine.low_res_stability)
            # The keyframe's tracking features serve detection too when both run the same model
            # on the same input; `exact` keeps the image predictor's own preprocessing for detection.
            shares = engine.preprocess == "device" and track_model is predictor
            source = DetectedMasks(predictor, detector, engine, device, bf16, shares)
        else:
            source = InstanceMasks(device, engine.max_masklets)
        return cls(cfg, source, tracker, ops, device, stages, "bfloat16" if bf16 else "float32")

    @property
    def last_window(self) -> WindowStats | None:
        """What the last refine_window call found (waits for its device copy, if any)."""
        return None if self._last is None else self._last.stats

    def prepare(self, frames: torch.Tensor) -> torch.Tensor | None:
        """The tracker's model-size images of a window's frames, on the decode thread (or None)."""
        return self.tracker.prepare(frames) if self.tracker is not None else None

    # ------------------------------------------------------------------ the loop
    def refine_window(self, window: Window, keep_ids: bool = False, carried: Carry | None = None) -> Refined:
        """One window refined. `keep_ids`: also return each pixel's winning masklet (Refined.ids,
        refine --save-masklets), copied back with the labels. `carried`: the previous window's
        Refined.carry, required when `window.overlap` > 0 (the carry-over rule, module docstring)."""
        cfg, st, tracker = self.cfg, self.stages, self.tracker
        labels = window.labels.to(self.device)  # uploaded by the decode thread: a no-op here
        if tracker is None:
            return self._superpixel_window(window, labels, keep_ids)
        with st.time("preprocess"):
            images = tracker.preprocess(window)
        redetect = redetect_frames(cfg.redetect_every, len(labels))
        with torch.inference_mode(), tracker.precision():
            keyframe = self._encode(images, 0)
            with st.time("detect"):
                masks, areas = self.source.keyframe(window, keyframe)
                if window.overlap > 0:  # the carry-over rule; one sync on a GPU (its filter)
                    cap = self.source.max_masklets
                    masks, areas = carry_over(_carried(window, carried), masks, areas, cap)
            carry = None
            if window.next_keyframe is not None:
                carry = Carry(window.next_keyframe, tuple(masks.shape[-2:]))
            if masks.shape[0] == 0 and not redetect:
                if carry is not None:
                    carry.masks = masks  # no masklet to carry on
                return self._nothing(labels, keep_ids, carry)
            groups = Groups(tracker, window, images, redetect, carry, masks)
            groups.add(0, masks, areas, keyframe)
            by_logit = cfg.paint_order == "logit"
            votes = Votes(self.ops, groups.rank(self.device, cfg.paint_order), cfg.num_classes,
                          cfg.vote_scope, by_logit, keep_ids)  # fmt: skip
            for t, s in enumerate(labels):
                logits = groups.step()  # the masklets tracked so far, at frame t
                if t in redetect:  # the re-detection rule; syncs: detection's and its filter's
                    new = self._redetect(window, images, t, groups)
                    if new is not None:
                        logits = torch.cat([logits, new]) if logits.shape[0] else new
                        votes.grow(groups.rank(self.device, cfg.paint_order))
                with st.time("aggregate+vote"):
                    votes.add(logits, s)
            groups.close()
            if carry is not None:
                carry.masks = groups.carried()
            if groups.count == 0:
                return self._nothing(labels, keep_ids, carry)
            with st.time("aggregate+vote"):
                ids = votes.masklet_ids() if keep_ids else None
                return self._finish(votes.painted(), groups.count, votes.covered, ids, carry)

    def _encode(self, images: torch.Tensor, t: int) -> dict | None:
        """Frame t's backbone output when detection shares the tracker's encoding, else None."""
        if not self.source.shares_keyframe:
            return None
        with self.stages.time("encode"):
            return self.tracker.encode_keyframe(images[t:])

    def _redetect(self, window: Window, images, t: int, groups: Groups) -> torch.Tensor | None:
        """Frame t's new masklets (the re-detection rule) tracked from t as a new group: their
        logits at frame t, or None when the frame adds none."""
        features = self._encode(images, t)
        with self.stages.time("detect"):
            masks, areas = self.source.keyframe(window.at(t), features)
            cap = self.source.max_masklets
            left = None if cap is None else max(cap - groups.count, 0)
            masks, areas = redetected(groups.tracked_at(t, masks.device), masks, areas, left)
        if masks.shape[0] == 0:
            return None
        groups.add(t, masks, areas, features)
        return groups.step_new()

    def _nothing(self, labels: torch.Tensor, keep_ids: bool, carry: Carry | None) -> Refined:
        """A window without masklets: its base labels."""
        none = torch.zeros(labels.shape, dtype=torch.uint16, device=self.device) if keep_ids else None
        covered = torch.zeros((), dtype=torch.int64, device=self.device)
        return self._finish(labels, 0, covered, none, carry)

    def _superpixel_window(self, window: Window, labels: torch.Tensor, keep_ids: bool) -> Refined:
        """Superpixels: each frame's partition voted and painted on its own (vote scope frame)."""
        c = self.cfg.num_classes
        votes = Votes(self.ops, torch.zeros(0, dtype=torch.int32), c, "frame", keep_ids=keep_ids)
        segments = 0
        for frame, s in zip(to_rgb(window.frames), labels, strict=True):
            seg = self.source.frame(frame, tuple(s.shape))
            n = int(seg.max()) + 1
            segments += n
            votes.add_ids(seg, id_histogram(seg, s, n, c), s)
        ids = votes.masklet_ids() if keep_ids else None
        return self._finish(votes.painted(), round(segments / len(labels)), votes.covered, ids)

    def _finish(
        self,
        painted: torch.Tensor,
        masklets: int,
        covered: torch.Tensor,
        ids: torch.Tensor | None = None,
        carry: Carry | None = None,
    ) -> Refined:
        """The painted (T, h, w) uint8 labels, the covered-pixel count and, when kept, the (T, h, w)
        uint16 masklet ids, on the host. From a GPU: one non-blocking copy each into pinned memory
        and one event after them that the writers wait on (no sync on the compute thread). The
        next window's `carry` stays where it is (on the device)."""
        if self.device.type != "cuda":
            self._last = Refined(painted, masklets, covered, ids=ids, carry=carry)
            return self._last
        host = torch.empty(painted.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(painted, non_blocking=True)
        count = torch.empty(1, dtype=torch.int64, pin_memory=True)
        count.copy_(covered.view(1), non_blocking=True)
        host_ids = None
        if ids is not None:
            host_ids = torch.empty(ids.shape, dtype=torch.uint16, pin_memory=True)
            host_ids.copy_(ids, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        self._last = Refined(host, masklets, count, ready, host_ids, carry)
        return self._last


def redetect_frames(every: int, frames: int) -> range:
    """The window frames the re-detection rule detects on: K, 2K, ... < the window's length (none
    when K is 0 or >= the window)."""
    return range(every, frames, every) if every > 0 else range(0)


class Groups:
    """A window's masklets as groups, each detected on one frame (the keyframe, or a re-detection
    frame) and tracked from there to the window's end by a tracker run of its own (a
    BatchedTracker.track call on images[t:], or an OfficialTracker run on the frames t..). Groups
    are in detection order, so the masklets present at frame t are a prefix of the window's list
    and a paint winner's index is its index in that list.

    Each group's tracker fills a `Carry` (its masks at the source's resolution) at every later
    re-detection frame (the filter's tracked masks) and at the next window's keyframe."""

    def __init__(
        self, tracker, window: Window, images, redetect: range, carry: Carry | None, like: torch.Tensor
    ):
        self.tracker, self.window, self.images = tracker, window, images
        self.redetect, self.carry = redetect, carry
        self.size, self.device = tuple(like.shape[-2:]), like.device  # the keyframe masks' (the source's)
        self.starts: list[int] = []  # each group's detection frame
        self.counts: list[int] = []  # its masklets
        self.areas: list[torch.Tensor] = []  # (n,) int64 detection-frame areas
        self.frames: list[Iterator[torch.Tensor]] = []  # its tracker's (n, h, w) logits per frame
        self.carries: list[dict[int, Carry]] = []  # window frame -> its masks there

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, t: int, masks: torch.Tensor, areas: torch.Tensor, keyframe: dict | None) -> None:
        """A group of masks (N, H, W) bool detected on window frame t (none: no group)."""
        if masks.shape[0] == 0:
            return
        wanted = {f for f in self.redetect if f > t}
        if self.carry is not None and self.carry.frame >= t:
            wanted.add(self.carry.frame)
        carries = {f: Carry(f - t, self.size) for f in sorted(wanted)}
        images = self.images if self.images is None or t == 0 else self.images[t:]
        run = self.tracker.track(self.window.at(t), masks, images, keyframe, carries=list(carries.values()))
        self.starts.append(t)
        self.counts.append(masks.shape[0])
        self.areas.append(areas)
        self.frames.append(run)
        self.carries.append(carries)

    def rank(self, device: torch.device, order: str) -> torch.Tensor:
        """(N,) int32 paint ranks of all masklets so far (paint_rank over their detection-frame
        areas, ties in detection order); (0,) when there are none."""
        if not self.areas:
            return torch.zeros(0, dtype=torch.int32, device=device)
        areas = self.areas[0] if len(self.areas) == 1 else torch.cat(self.areas)
        return paint_rank(areas.to(device), order)

    def step(self) -> torch.Tensor:
        """The next frame's (N, h, w) logits of every group, in group order ((0, 1, 1): none)."""
        if not self.frames:
            return torch.zeros((0, 1, 1))
        if len(self.frames) == 1:
            return next(self.frames[0])
        return torch.cat([next(run) for run in self.frames])

    def step_new(self) -> torch.Tensor:
        """The newest group's logits at its detection frame (its first)."""
        return next(self.frames[-1])

    def tracked_at(self, t: int, device: torch.device) -> torch.Tensor:
        """(M, H, W) bool: the masks at frame t (after `step` passed it) of the groups detected
        before t; (0, H, W) on `device` when there are none."""
        masks = [c[t].masks for c in self.carries]
        return torch.cat(masks) if masks else torch.zeros((0, *self.size), dtype=torch.bool, device=device)

    def carried(self) -> torch.Tensor:
        """(N, H, W) bool: every masklet's mask at the next window's keyframe, in the window's
        masklet order; the groups detected after it are empty there."""
        frame = self.carry.frame
        masks = [
            c[frame].masks
            if t <= frame
            else torch.zeros((n, *self.size), dtype=torch.bool, device=self.device)
            for t, n, c in zip(self.starts, self.counts, self.carries, strict=True)
        ]
        if len(masks) == 1:
            return masks[0]
        return (
            torch.cat(masks) if masks else torch.zeros((0, *self.size), dtype=torch.bool, device=self.device)
        )

    def close(self) -> None:
        """Runs each tracker to its end, the newest first (the official tracker's autocast and
        temporary folder are left in the order they were entered)."""
        for run in reversed(self.frames):
            if next(run, None) is not None:
                raise RuntimeError("Groups.close: a tracker yielded more frames than the window has")


def _carried(window: Window, carried: Carry | None) -> torch.Tensor:
    """The previous window's carried masks, which a window with `overlap` > 0 must be given."""
    if carried is None or carried.masks is None:
        raise ValueError(
            f"refine_window: the window overlaps the previous one by {window.overlap} frames, so it"
            " needs carried= the previous window's Refined.carry (refine the video's windows in order;"
            " video.window_spans gives the schedule)"
        )
    return carried.masks
