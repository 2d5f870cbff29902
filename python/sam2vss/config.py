"""Frozen configuration dataclasses. CLI flags map 1:1 to these fields (cli.py).

Defaults are the normative choices of METRICS.md section 8; every flagged ambiguity there is a
field here, so a result can always be reproduced under the other reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sam2vss.labels import NUM_CLASSES

# Frame decoders (sources.py), best first for video files; `frames` reads image folders.
VIDEO_BACKENDS = ("torchcodec", "decord", "pyav")
DECODERS = ("auto", "frames", *VIDEO_BACKENDS)
# Model backends of the fast engine (backends.py).
MODEL_BACKENDS = ("eager", "inductor", "tensorrt")


@dataclass(frozen=True)
class MetricConfig:
    """How `eval` computes mIoU, fwIoU, mBIoU and mVC (METRICS.md 8.1-8.4)."""

    num_classes: int = NUM_CLASSES
    # mBIoU (8.3): square kernel side; one erosion with a k x k kernel equals a 3x3 kernel
    # iterated (k-1)/2 times, so "3x3 eroded 5 times" is boundary_kernel=11.
    boundary_kernel: int = 5
    pad_border: bool = False  # True: out-of-image neighbours count as another label
    void_mode: str = "drop"  # "drop": predicted band pixels on GT void do not count; "keep"
    # mVC (8.4)
    vc_lengths: tuple[int, ...] = (8, 16)
    vc_skip_rule: str = "16"  # "16": skip videos with <= 16 frames for every n (CFFM/TV3S); "n"
    vc_gt: str = "reduced"  # "reduced" (CFFM/TV3S) or "raw" (original VSPW script)
    vc_last_window: bool = False  # True: L-n+1 windows instead of the reference's L-n
    vc_aggregate: str = "pooled"  # "pooled" nanmean over all windows, or "per_video" mean

    def __post_init__(self) -> None:
        _check_choices(
            self,
            void_mode=("drop", "keep"),
            vc_skip_rule=("16", "n"),
            vc_gt=("reduced", "raw"),
            vc_aggregate=("pooled", "per_video"),
        )
        checks = [
            (1 <= self.num_classes <= 254, f"num_classes must be in 1..254, got {self.num_classes}"),
            (
                self.boundary_kernel >= 3 and self.boundary_kernel % 2 == 1,
                f"boundary_kernel must be odd and >= 3, got {self.boundary_kernel}",
            ),
            (
                len(self.vc_lengths) > 0 and all(2 <= n <= 250 for n in self.vc_lengths),
                f"vc_lengths must be window lengths in 2..250, got {self.vc_lengths}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MetricConfig: {message}")

    def skips_vc(self, num_frames: int, n: int) -> bool:
        """True when a video of `num_frames` frames contributes no VC_n windows (METRICS.md 3.2.6)."""
        limit = 16 if self.vc_skip_rule == "16" else n
        return num_frames <= limit


@dataclass(frozen=True)
class SynthConfig:
    """A deterministic synthetic VSS dataset in VSPW layout (synth.py)."""

    videos: int = 4
    frames: int = 40
    height: int = 480
    width: int = 854
    classes: int = 24  # classes in use, drawn from the 124 VSPW classes (raw ids 1..classes)
    objects: int = 6  # moving objects per video (instances)
    seed: int = 0
    train_videos: int = 2  # extra videos listed in train.txt

    def __post_init__(self) -> None:
        if self.videos < 1 or self.frames < 1:
            raise ValueError(f"SynthConfig: videos and frames must be >= 1, got {self.videos}, {self.frames}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"SynthConfig: height and width must be >= 32, got {self.height}x{self.width}")
        if not 4 <= self.classes <= NUM_CLASSES:
            raise ValueError(f"SynthConfig: classes must be in 4..{NUM_CLASSES}, got {self.classes}")
        if not 0 <= self.objects <= 200:
            raise ValueError(f"SynthConfig: objects must be in 0..200, got {self.objects}")


def _check_choices(cfg: object, **choices: tuple[str, ...]) -> None:
    for name, options in choices.items():
        value = getattr(cfg, name)
        if value not in options:
            raise ValueError(
                f"{type(cfg).__name__}: {name} must be one of {', '.join(options)}, got {value!r}"
            )


@dataclass(frozen=True)
class EngineConfig:
    """What the fast engine trades for speed; `exact` changes nothing the reference computes
    beyond float rounding. The agreement of each preset with `exact` is measured by `sam2vss bench
    --preset ... --compare-reference` and written in the README."""

    preprocess: str = "sam2"  # sam2: Pillow resize in float64, as SAM2's loader (bit-exact with the
    #                           reference); device: resize + normalise fused on the decode device
    track_scale: float = 1.0  # tracking image size = model image size x this (multiple of 32, >= 128);
    #                           keyframe detection keeps the full size
    memory_frames: int | None = None  # previous frames kept for memory attention and object pointers;
    #                                   None: all of the window's (the model picks its 6 + 16 pointers)
    max_masklets: int | None = None  # track only the N largest keyframe masklets; None: all
    low_res_stability: bool = False  # detection's stability score on the low-resolution logits
    #                                  (amg_stats kernel, nothing upsampled) instead of full size
    encode_batch: int = 8  # frames per image-encoder call
    bf16: str = "off"  # the model's weights, memory bank and position encodings in bf16 (mask
    #                    logits stay fp32): off; cuda (on CUDA devices only: a CPU's bf16 kernels
    #                    are no faster); on (forced, also on a CPU: how its agreement is measured)

    def __post_init__(self) -> None:
        _check_choices(self, preprocess=("sam2", "device"), bf16=("off", "cuda", "on"))
        if not 0 < self.track_scale <= 1:
            raise ValueError(f"EngineConfig: track_scale must be in (0, 1], got {self.track_scale}")
        for name in ("memory_frames", "max_masklets"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EngineConfig: {name} must be >= 1 or None, got {value}")

    def track_size(self, image_size: int) -> int:
        return max(128, round(image_size * self.track_scale / 32) * 32)

    def use_bf16(self, device) -> bool:
        return self.bf16 == "on" or (self.bf16 == "cuda" and getattr(device, "type", device) == "cuda")


# Named speed presets of the fast pipeline, from exact to fastest.
PRESETS = {
    "exact": EngineConfig(),
    "fast": EngineConfig(preprocess="device", memory_frames=3, low_res_stability=True, bf16="cuda"),
    "faster": EngineConfig(
        preprocess="device",
        memory_frames=3,
        track_scale=0.75,
        max_masklets=16,
        low_res_stability=True,
        bf16="cuda",
    ),
    "fastest": EngineConfig(
        preprocess="device",
        memory_frames=2,
        track_scale=0.5,
        max_masklets=12,
        low_res_stability=True,
        bf16="cuda",
    ),
}


def config_hash(cfg: object) -> str:
    """Short stable hash of a config dataclass: keys manifests and cached artifacts."""
    blob = json.dumps({type(cfg).__name__: asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The refiner's thresholds and their valid ranges (RefineConfig checks them, the CLI's flags too):
# the predicted IoU, the stability score and the NMS IoU are shares; the stability offset is a
# margin on the mask logits (SAM2's default 1.0, the paper's 0.9).
THRESHOLD_RANGES: dict[str, tuple[float, float]] = {
    "pred_iou_thresh": (0.0, 1.0),
    "stability_thresh": (0.0, 1.0),
    "stability_offset": (0.0, float("inf")),
    "box_nms_thresh": (0.0, 1.0),
}


@dataclass(frozen=True)
class RefineConfig:
    """The refiner (the paper's Fig. 1, METRICS.md 8.5); defaults are the paper's settings."""

    masks: str = "sam2"  # masklet source: sam2 (AMG + propagation), instances (prompt SAM2 with
    #                      the dataset's instance masks; tests and benchmarks), superpixel (per frame)
    window: int = 32  # frames per non-overlapping window; AMG runs on each window's first frame
    grid: int = 16  # AMG points per side
    pred_iou_thresh: float = 0.6
    stability_thresh: float = 0.8
    stability_offset: float = 0.9
    box_nms_thresh: float = 0.7
    vote_scope: str = "masklet"  # masklet: one class per masklet over its window; frame: per frame
    paint_order: str = "area"  # area (descending, smaller masklets win), logit (highest), amg
    num_classes: int = NUM_CLASSES
    superpixel_method: str = "slic"  # slic | felzenszwalb
    superpixel_size: int = 256  # SLIC: mean superpixel area in pixels (n_segments = H * W / size)
    superpixel_compactness: float = 10.0  # SLIC compactness
    felzenszwalb_scale: float = 200.0  # Felzenszwalb scale (min_size = scale / 4)
    preset: str = "exact"  # the fast pipeline's speed preset (PRESETS); the reference ignores it
    backend: str = "eager"  # the fast pipeline's model backend (MODEL_BACKENDS); eager is SAM2 as is

    def __post_init__(self) -> None:
        _check_choices(
            self,
            preset=tuple(PRESETS),
            backend=MODEL_BACKENDS,
            masks=("sam2", "instances", "superpixel"),
            vote_scope=("masklet", "frame"),
            paint_order=("area", "logit", "amg"),
            superpixel_method=("slic", "felzenszwalb"),
        )
        checks = [
            (self.window >= 1, f"window must be >= 1, got {self.window}"),
            (self.grid >= 1, f"grid must be >= 1, got {self.grid}"),
            (self.superpixel_size >= 4, f"superpixel_size must be >= 4 pixels, got {self.superpixel_size}"),
            (1 <= self.num_classes <= 254, f"num_classes must be in 1..254, got {self.num_classes}"),
            (
                not (self.masks == "superpixel" and self.vote_scope == "masklet"),
                "superpixels are per frame and untracked: use vote_scope='frame' (--vote-scope frame)",
            ),
            (
                not (self.masks == "superpixel" and self.paint_order == "logit"),
                "superpixels have no logits: use paint_order area or amg",
            ),
            *(
                (
                    lo <= getattr(self, name) <= hi,
                    f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}",
                )
                for name, (lo, hi) in THRESHOLD_RANGES.items()
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RefineConfig: {message}")
