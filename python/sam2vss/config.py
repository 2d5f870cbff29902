"""Frozen configuration dataclasses; the command line is generated from them (cli.py).

Each field's `option(...)` metadata carries its flag: help text, choices (written once: the
field's check in __post_init__ reads the same tuple), the flag's name where it is not the
field's, and its valid range (checked by the flag's parser and by __post_init__).
Defaults are the normative choices of METRICS.md section 8; every flagged ambiguity there is a
field here, so a result can always be reproduced under the other reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sam2vss.labels import NUM_CLASSES

# Frame decoders (sources.py), best first for video files; `frames` reads image folders.
VIDEO_BACKENDS = ("torchcodec", "decord", "pyav")
DECODERS = ("auto", "frames", *VIDEO_BACKENDS)
# Model backends of the fast engine (backends.py).
MODEL_BACKENDS = ("eager", "inductor", "tensorrt")


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A config field with what its command-line flag needs: `help` (argparse's; the default is
    appended unless the text mentions it), `choices`, `flag` (the flag's name when it is not the
    field's), and the range [low, high] (high None: no upper bound) that both the flag's parser and
    `check_fields` enforce. A field without `option` has no flag (cli.py's test refuses that)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if flag is not None:
        meta["flag"] = flag
    if low is not None:
        meta["range"] = (low, high)
    return field(default=default, metadata=meta)


def check_fields(cfg: object) -> None:
    """The choices and ranges of `cfg`'s fields (their `option` metadata); None passes a range."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        options = f.metadata.get("choices")
        if options is not None and value not in options:
            raise ValueError(
                f"{type(cfg).__name__}: {f.name} must be one of {', '.join(options)}, got {value!r}"
            )
        if "range" not in f.metadata or value is None:
            continue
        lo, hi = f.metadata["range"]
        if hi is None and value < lo:
            raise ValueError(f"{type(cfg).__name__}: {f.name} must be >= {lo}, got {value}")
        if hi is not None and not lo <= value <= hi:
            raise ValueError(f"{type(cfg).__name__}: {f.name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class MetricConfig:
    """How `eval` computes mIoU, fwIoU, mBIoU and mVC (METRICS.md 8.1-8.4)."""

    num_classes: int = option(NUM_CLASSES, "evaluated classes")
    # mBIoU (8.3): square kernel side; one erosion with a k x k kernel equals a 3x3 kernel
    # iterated (k-1)/2 times, so "3x3 eroded 5 times" is boundary_kernel=11.
    boundary_kernel: int = option(5, "mBIoU square erosion kernel side, odd")
    pad_border: bool = option(False, "mBIoU: the image border counts as a boundary")
    void_mode: str = option(
        "drop",
        "mBIoU: drop predicted band pixels on GT void, or keep them",
        choices=("drop", "keep"),
    )
    # mVC (8.4)
    vc_lengths: tuple[int, ...] = option((8, 16), "mVC window lengths n, comma-separated")
    vc_skip_rule: str = option(
        "16",
        "skip videos with <= 16 frames for every n (CFFM/TV3S) or <= n",
        choices=("16", "n"),
    )
    vc_gt: str = option(
        "reduced", "GT used by mVC: reduced (CFFM/TV3S) or raw VSPW ids", choices=("reduced", "raw")
    )
    vc_last_window: bool = option(False, "mVC: L-n+1 windows per video instead of the reference scripts' L-n")
    vc_aggregate: str = option(
        "pooled",
        "mVC: nanmean over all windows, or mean of per-video means",
        choices=("pooled", "per_video"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
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

    videos: int = option(4, "val videos")
    frames: int = option(40, "frames per video")
    height: int = option(480, "frame height")
    width: int = option(854, "frame width")
    classes: int = option(24, "classes in use, drawn from the 124 VSPW classes (raw ids 1..classes)")
    objects: int = option(6, "moving objects per video (instances)")
    seed: int = option(0, "random seed")
    train_videos: int = option(2, "train videos (extra videos listed in train.txt)")

    def __post_init__(self) -> None:
        if self.videos < 1 or self.frames < 1:
            raise ValueError(f"SynthConfig: videos and frames must be >= 1, got {self.videos}, {self.frames}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"SynthConfig: height and width must be >= 32, got {self.height}x{self.width}")
        if not 4 <= self.classes <= NUM_CLASSES:
            raise ValueError(f"SynthConfig: classes must be in 4..{NUM_CLASSES}, got {self.classes}")
        if not 0 <= self.objects <= 200:
            raise ValueError(f"SynthConfig: objects must be in 0..200, got {self.objects}")


@dataclass(frozen=True)
class EngineConfig:
    """What the fast engine trades for speed; `exact` changes nothing the reference computes
    beyond float rounding. The agreement of each preset with `exact` is measured by `sam2vss bench
    --preset ... --compare-reference` and written in the README. On the command line each field
    overrides the --preset's value (`refine --memory-frames 2`)."""

    preprocess: str = option(
        "sam2",
        "sam2: Pillow resize in float64, as SAM2's loader (bit-exact with the reference); device:"
        " resize + normalise fused on the decode device",
        choices=("sam2", "device"),
    )
    track_scale: float = option(
        1.0,
        "tracking image size = model image size x this, in (0, 1] (multiple of 32, >= 128);"
        " keyframe detection keeps the full size",
    )
    memory_frames: int | None = option(
        None,
        "previous frames kept for memory attention and object pointers; none: all of the window's"
        " (the model picks its 6 + 16 pointers)",
        low=1,
    )
    max_masklets: int | None = option(None, "track only the N largest keyframe masklets; none: all", low=1)
    low_res_stability: bool = option(
        False,
        "detection's stability score on the low-resolution logits (amg_stats kernel, nothing"
        " upsampled) instead of full size",
    )
    encode_batch: int = option(8, "frames per image-encoder call", low=1)
    bf16: str = option(
        "off",
        "the model's weights, memory bank and position encodings in bf16 (mask logits stay fp32):"
        " off; cuda (on CUDA devices only: a CPU's bf16 kernels are no faster); on (forced, also on"
        " a CPU: how its agreement is measured)",
        choices=("off", "cuda", "on"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.track_scale <= 1:
            raise ValueError(f"EngineConfig: track_scale must be in (0, 1], got {self.track_scale}")

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


@dataclass(frozen=True)
class RefineConfig:
    """The refiner (the paper's Fig. 1, METRICS.md 8.5); defaults are the paper's settings.

    The thresholds' ranges: the predicted IoU, the stability score and the NMS IoU are shares;
    the stability offset is a margin on the mask logits (SAM2's default 1.0, the paper's 0.9)."""

    masks: str = option(
        "sam2",
        "masklet source: sam2 (AMG + propagation), instances (prompt SAM2 with the dataset's instance"
        " masks; tests and benchmarks), superpixel (per frame, no model)",
        choices=("sam2", "instances", "superpixel"),
    )
    window: int = option(
        32,
        "frames per window (non-overlapping unless --window-overlap); AMG runs on each window's first frame",
        low=1,
    )
    window_overlap: int = option(
        0,
        "frames each window shares with the previous one, < --window (0: non-overlapping windows, the"
        " paper's); a window then starts on the previous one's tracked frame and carries its masklets"
        " on (README: the carry-over and vote rules)",
        low=0,
    )
    redetect_every: int = option(
        0,
        "re-detect new objects every K frames within a window (0: only on its first frame, the"
        " paper's); detections mostly inside the tracked masklets are dropped, the rest tracked to the"
        " window's end (README: the re-detection rule); K >= --window does nothing",
        low=0,
    )
    grid: int = option(16, "AMG points per side", low=1)
    pred_iou_thresh: float = option(0.6, "AMG predicted-IoU threshold, in [0, 1]", low=0.0, high=1.0)
    stability_thresh: float = option(0.8, "AMG stability-score threshold, in [0, 1]", low=0.0, high=1.0)
    stability_offset: float = option(
        0.9, "AMG stability offset, a logit margin >= 0", low=0.0, high=float("inf")
    )
    box_nms_thresh: float = option(0.7, "AMG box NMS IoU, in [0, 1]", low=0.0, high=1.0)
    vote_scope: str = option(
        "masklet",
        "one class per masklet over its window (masklet), or per frame (frame)",
        choices=("masklet", "frame"),
    )
    paint_order: str = option(
        "area",
        "overlaps: area descending (smaller wins), highest logit, or AMG order",
        choices=("area", "logit", "amg"),
    )
    num_classes: int = option(NUM_CLASSES, "classes of the base labels")
    superpixel_method: str = option(
        "slic", "superpixel masklets: SLIC or Felzenszwalb", choices=("slic", "felzenszwalb")
    )
    superpixel_size: int = option(256, "SLIC mean superpixel area in pixels (n_segments = H * W / size)")
    superpixel_compactness: float = option(10.0, "SLIC compactness")
    felzenszwalb_scale: float = option(200.0, "Felzenszwalb scale (min_size = scale / 4)")
    preset: str = option(
        "exact",
        "the fast pipeline's speed preset (default %(default)s: the reference's labels; faster ones"
        " trade tracking size, memory frames and masklets for speed, see the README); the reference"
        " ignores it",
        choices=tuple(PRESETS),
    )
    backend: str = option(
        "eager",
        "the fast pipeline's model backend (default %(default)s: SAM2 as is; inductor: torch.compile;"
        " tensorrt: CUDA + torch-tensorrt, engines cached in SAM2VSS_CACHE)",
        choices=MODEL_BACKENDS,
    )
    pipeline: str = option(
        "fast",
        "fast (default): batched tracking and fused kernels, the reference's labels on >= 99.9%% of"
        " pixels with --preset exact; reference: the official SAM2 classes, the paper's way",
        choices=("reference", "fast"),
    )
    # The fast pipeline's EngineConfig when it is not the preset's (flags: one per EngineConfig
    # field, each overriding the preset's value). Hashed only as its fields that differ from the
    # preset's, so a configuration without overrides keeps its hash (refine.refine_settings).
    engine: EngineConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        checks = [
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
            (
                self.window_overlap < self.window,
                f"window_overlap (--window-overlap) must be < window (--window): got window_overlap"
                f" {self.window_overlap} with window {self.window}; windows start every window -"
                " window_overlap frames, so lower --window-overlap or raise --window",
            ),
            (
                not (self.masks == "superpixel" and self.window_overlap > 0),
                f"window_overlap (--window-overlap {self.window_overlap}) needs tracked masklets, and"
                " superpixels (--masks superpixel) are per frame and untracked: use --window-overlap 0,"
                " or --masks sam2 / instances",
            ),
            (
                not (self.masks == "superpixel" and self.redetect_every > 0),
                f"redetect_every (--redetect-every {self.redetect_every}) needs tracked masklets, and"
                " superpixels (--masks superpixel) are computed on every frame anyway: use"
                " --redetect-every 0, or --masks sam2 / instances",
            ),
            (
                self.engine is None or isinstance(self.engine, EngineConfig),
                f"engine must be an EngineConfig or None, got {type(self.engine).__name__}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RefineConfig: {message}")

    def fast_engine(self) -> EngineConfig:
        """The fast pipeline's EngineConfig: `engine`, else the preset's."""
        return self.engine if self.engine is not None else PRESETS[self.preset]

    def engine_overrides(self) -> dict[str, Any]:
        """The fields of `engine` that differ from the preset's ({} without an engine)."""
        preset = PRESETS[self.preset]
        return {k: v for k, v in asdict(self.fast_engine()).items() if v != getattr(preset, k)}


@dataclass(frozen=True)
class RunConfig:
    """How `refine_jobs` runs its videos; the outputs do not depend on it (never hashed)."""

    runner: str = option(
        "local",
        "local: one process; ray: Ray Data actors, one video per task",
        choices=("local", "ray"),
    )
    retries: int = option(1, "retries of a video that raises (bad input data is not retried)", low=0)
    workers: int | None = option(
        None, "Ray actors (default: one per GPU; one per CPU for superpixels or CPU-only clusters)", low=1
    )
    ray_address: str | None = option(None, "Ray cluster address (default: start a local Ray)")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class BenchConfig:
    """`sam2vss bench`: the synthetic clip, the sweeps and what each row measures (bench.py)."""

    frames: int = option(64, "clip length")
    masklets: int = option(25, "objects in the clip")
    height: int = option(480, "clip height")
    width: int = option(854, "clip width")
    windows: tuple[int, ...] = option(
        (32,),
        "comma-separated window sizes (default 32; empty with --grid: detection only)",
        flag="window",
    )
    grids: tuple[int, ...] = option(
        (),
        "comma-separated AMG grid sizes, e.g. 8,16,32,64: adds a keyframe-detection table (each"
        " preset's detector, and the official generator with --compare-reference, on the clip's first"
        " frame; with random weights the thresholds are lowered so that masks are kept)",
        flag="grid",
    )
    presets: tuple[str, ...] = option(
        ("exact",),
        f"comma-separated fast-pipeline presets ({', '.join(PRESETS)}), each run with every --backend;"
        " PRESET@BACKEND runs one pair only (default exact)",
        flag="preset",
    )
    backends: tuple[str, ...] = option(
        ("eager",),
        f"comma-separated model backends ({', '.join(MODEL_BACKENDS)}) for the plain presets (default eager)",
        flag="backend",
    )
    compare_reference: bool = option(
        False, "also run the reference refiner in the same run; rows then carry their label agreement"
    )
    masks: str = option(
        "instances",
        "masklets prompted from the clip's instance masks (default), or found by SAM2's generator"
        " (grid 16, thresholds lowered for random weights)",
        choices=("instances", "sam2"),
    )
    emulate_cuda: bool = option(
        False,
        "run on the emulated CUDA device (CPU compute) and add its counts to each row: launches and"
        " syncs per frame, syncs per window, bytes copied each way, device mismatches",
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def runs(self) -> tuple[tuple[str, str], ...]:
        """(preset, backend) pairs: each plain preset with each backend; "preset@backend" alone."""
        runs: list[tuple[str, str]] = []
        for item in self.presets:
            preset, _, backend = item.partition("@")
            runs += [(preset, backend)] if backend else [(preset, b) for b in self.backends]
        return tuple(runs)
