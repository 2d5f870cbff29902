"""Frozen configuration dataclasses. CLI flags map 1:1 to these fields (cli.py).

Defaults are the normative choices of METRICS.md section 8; every flagged ambiguity there is a
field here, so a result can always be reproduced under the other reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sam2vss.labels import NUM_CLASSES


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
        checks = [
            (1 <= self.num_classes <= 254, f"num_classes must be in 1..254, got {self.num_classes}"),
            (
                self.boundary_kernel >= 3 and self.boundary_kernel % 2 == 1,
                f"boundary_kernel must be odd and >= 3, got {self.boundary_kernel}",
            ),
            (self.void_mode in ("drop", "keep"), f"void_mode must be drop or keep, got {self.void_mode!r}"),
            (
                len(self.vc_lengths) > 0 and all(2 <= n <= 250 for n in self.vc_lengths),
                f"vc_lengths must be window lengths in 2..250, got {self.vc_lengths}",
            ),
            (self.vc_skip_rule in ("16", "n"), f"vc_skip_rule must be 16 or n, got {self.vc_skip_rule!r}"),
            (self.vc_gt in ("reduced", "raw"), f"vc_gt must be reduced or raw, got {self.vc_gt!r}"),
            (
                self.vc_aggregate in ("pooled", "per_video"),
                f"vc_aggregate must be pooled or per_video, got {self.vc_aggregate!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MetricConfig: {message}")

    def skips_vc(self, num_frames: int, n: int) -> bool:
        """True when a video of `num_frames` frames contributes no VC_n windows (METRICS.md 3.2.6)."""
        limit = 16 if self.vc_skip_rule == "16" else n
        return num_frames <= limit

    def hash(self) -> str:
        return config_hash(self)


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


def config_hash(cfg: object) -> str:
    """Short stable hash of a config dataclass: keys manifests and cached artifacts."""
    blob = json.dumps({type(cfg).__name__: asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
