"""What a `refine` run tells its user: the run header, each video's masklet summary and line, and
the run's report.

The numbers that explain a result are printed, not only stored: random weights (or thresholds
too strict) find no masklets and the output silently equals the base labels, so every video's
line carries its masklets per window and the share of pixels they cover, with a warning below
1%. The header says what actually ran (the resolved device, not "auto").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sam2vss import versions
from sam2vss.config import RefineConfig
from sam2vss.data import DataError
from sam2vss.model import ModelConfig, resolve_device
from sam2vss.outdir import now
from sam2vss.reference import WindowStats
from sam2vss.sources import choose_decoder

LOW_COVERAGE = 0.01  # below this share of pixels in masklets the output is nearly the base labels


def run_header(
    refiner: object | None,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None,
    runner: str,
    video: tuple[Path, str] | None,
    checkpoint_sha256: str | None,
) -> dict:
    """The resolved device, pipeline, preset (with its engine overrides), backend, kernels, decoder
    (of `video`: (path, --decoder)), model, checkpoint digest and library versions. The refiner's
    internals are read defensively: a superpixel refiner has no device, the reference has no kernel
    ops."""
    uses_model = cfg.masks != "superpixel" and model_cfg is not None
    device = getattr(refiner, "model_device", None)
    if device is None:
        device = resolve_device(model_cfg.device) if uses_model else "cpu (superpixels: no model)"
    pipeline = cfg.pipeline
    fast = pipeline == "fast" and uses_model  # superpixels run the reference code in both pipelines
    try:
        decoder = choose_decoder(*video) if video else "-"
    except DataError:
        decoder = "none available"
    model = "- (superpixel masklets)"
    if uses_model:
        weights = "random weights" if model_cfg.random_weights else Path(model_cfg.checkpoint).name
        if checkpoint_sha256:
            weights += f" sha256:{checkpoint_sha256[:16]}"
        model = f"{model_cfg.name} at {model_cfg.image_size}, {weights}"
    return {
        "device": str(device),
        "pipeline": pipeline,
        "preset": _preset(cfg) if fast else "-",
        "backend": cfg.backend if fast else "-",
        "kernels": getattr(getattr(refiner, "ops", None), "backend", "torch") if fast else "torch",
        "decoder": decoder,
        "model": model,
        "runner": runner,
        "versions": versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now(),
    }


def _preset(cfg: RefineConfig) -> str:
    """`fast`, or `fast with memory_frames=2` when the engine overrides the preset."""
    overrides = ", ".join(f"{k}={'none' if v is None else v}" for k, v in cfg.engine_overrides().items())
    return f"{cfg.preset} with {overrides}" if overrides else cfg.preset


def format_header(h: dict) -> str:
    keys = ("device", "pipeline", "preset", "backend", "kernels", "decoder", "model", "runner")
    libs = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
    return "run: " + ", ".join(f"{k} {h[k]}" for k in keys) + f"; {libs}"


def masklet_summary(stats: Sequence[WindowStats]) -> dict:
    """Per window [masklets, covered share], and the video's mean / min / max masklets and its
    covered share over all frames."""
    frames = sum(w.frames for w in stats)
    counts = [w.masklets for w in stats]
    return {
        "per_window": [[w.masklets, round(w.covered, 4)] for w in stats],
        "mean": round(sum(counts) / max(len(counts), 1), 2),
        "min": min(counts, default=0),
        "max": max(counts, default=0),
        "covered": round(sum(w.covered * w.frames for w in stats) / max(frames, 1), 4),
    }


def video_line(name: str, entry: dict) -> str:
    m = entry["masklets"]
    return (
        f"{name}: {entry['frames']} frames, {entry['fps']:.2f} frames/s, masklets per window"
        f" {m['mean']:g} (min {m['min']}, max {m['max']}), {m['covered']:.1%} of pixels covered,"
        f" decode wait {entry.get('decode_wait_share', 0.0):.1%}"
    )


def low_coverage_warning(name: str, entry: dict) -> str | None:
    covered = entry["masklets"]["covered"]
    if covered >= LOW_COVERAGE:
        return None
    return (
        f"{name}: masklets cover {covered:.2%} of the pixels, so the output is nearly the base labels"
        " (random weights, --checkpoint none, or too strict thresholds find no masks)"
    )


@dataclass
class RefineReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    frames: int
    seconds: float
    redone: dict[str, str] = field(default_factory=dict)  # video -> why it was refined again
    header: str = ""  # the run header line

    def add(self, name: str, entry: dict) -> None:
        if entry["status"] == "done":
            self.done.append(name)
            self.frames += entry["frames"]
        else:
            self.failed[name] = entry["error"]
