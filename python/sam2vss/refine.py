"""`sam2vss refine`: run a refiner over a dataset (or one video file) with resumable outputs.

Outputs follow the prediction-folder layout OUT/<video>/<frame>.png. Every frame is written to a
temporary name and renamed; OUT/manifest.json records the configuration hash and each video's
status (done with its frame count and time, or failed with the error and traceback). A rerun
with the same configuration skips videos that are done and whose files are all there, and
redoes the rest from their first frame; a failing video is reported and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from sam2vss import envs
from sam2vss.config import RefineConfig
from sam2vss.data import DataError, Dataset, list_frames, match_frames, read_label_png
from sam2vss.model import ModelConfig
from sam2vss.reference import ReferenceRefiner, Window
from sam2vss.sinks import write_json, write_label_png
from sam2vss.sources import FrameFolder, VideoFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """One unit of work: a video's frames, its base predictions, and where outputs go."""

    name: str
    source: FrameFolder | VideoFile
    label_dir: Path  # base predictions S, one PNG per frame
    label_names: tuple[str, ...]
    instance_dir: Path | None = None


def dataset_jobs(dataset: Dataset, pred_dir: Path, split: str) -> list[VideoJob]:
    jobs = []
    for video in dataset.videos(split):
        source = FrameFolder(dataset.image_dir(video))
        names = [n + ".png" for n in source.names]
        labels = match_frames(names, Path(pred_dir) / video, video)
        inst = dataset.instance_dir(video)
        jobs.append(
            VideoJob(video, source, Path(pred_dir) / video, tuple(labels), inst if inst.is_dir() else None)
        )
    return jobs


def video_job(video: Path, labels: Path) -> VideoJob:
    from sam2vss.data import open_video_with_labels

    pair = open_video_with_labels(video, labels)
    return VideoJob(pair.name, VideoFile(pair.video), pair.labels, pair.frames)


def refine_config_hash(cfg: RefineConfig, model_cfg: ModelConfig | None) -> str:
    """What changes the outputs: the refiner config and, for SAM2 masklets, the model and weights."""
    parts: dict = {"refine": asdict(cfg)}
    if cfg.masks != "superpixel" and model_cfg is not None:
        m = asdict(model_cfg)
        m.pop("device")
        ckpt = Path(model_cfg.checkpoint)
        m["checkpoint"] = "none" if model_cfg.random_weights else f"{ckpt.name}:{ckpt.stat().st_size}"
        parts["model"] = m
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """OUT/manifest.json: configuration hash and per-video status, rewritten atomically."""

    def __init__(self, out: Path, cfg_hash: str, config: dict, overwrite: bool = False):
        self.path = Path(out) / "manifest.json"
        self.data = {"config_hash": cfg_hash, "config": config, "videos": {}}
        if self.path.is_file() and not overwrite:
            old = json.loads(self.path.read_text())
            if old.get("config_hash") != cfg_hash:
                raise DataError(
                    f"{self.path}: this output folder holds results of another configuration"
                    f" ({old.get('config_hash')} != {cfg_hash}); use a new --out, or --overwrite"
                )
            self.data = old

    def done(self, job: VideoJob, out: Path) -> bool:
        entry = self.data["videos"].get(job.name, {})
        if entry.get("status") != "done":
            return False
        want = [Path(n).stem + ".png" for n in job.label_names]
        return all((out / job.name / n).is_file() for n in want)

    def record(self, name: str, **entry) -> None:
        self.data["videos"][name] = entry
        write_json(self.path, self.data)


def _windows(job: VideoJob, window: int) -> Iterator[tuple[int, Window]]:
    names = list(job.label_names)
    paths = job.source.paths
    if paths is not None and len(paths) != len(names):
        raise DataError(f"{job.name}: {len(paths)} frames but {len(names)} base predictions")
    frames = job.source.frames()
    inst_names = list_frames(job.instance_dir) if job.instance_dir is not None else []
    for start in range(0, len(names), window):
        stop = min(start + window, len(names))
        imgs = [next(frames) for _ in range(start, stop)]
        labels = [read_label_png(job.label_dir / n) for n in names[start:stop]]
        inst = read_label_png(job.instance_dir / inst_names[start]) if len(inst_names) == len(names) else None
        yield start, Window(imgs, labels, None if paths is None else paths[start:stop], inst)


def refine_video(refiner: ReferenceRefiner, job: VideoJob, out: Path, num_classes: int, bar: tqdm) -> int:
    """Refine one video into OUT/<video>/; returns its frame count."""
    written = 0
    for start, window in _windows(job, refiner.cfg.window):
        for t, refined in enumerate(refiner.refine_window(window)):
            if refined.max(initial=0) >= num_classes:
                raise RuntimeError(f"refined labels out of range in {job.name} frame {start + t}")
            write_label_png(out / job.name / (Path(job.label_names[start + t]).stem + ".png"), refined)
            written += 1
            bar.update()
            _fault_hook()
    return written


_frames_written = 0


def _fault_hook() -> None:
    """SAM2VSS_FAULT_EXIT_AFTER=N: exit abruptly after N frames in this process (tests only)."""
    global _frames_written
    _frames_written += 1
    if envs.SAM2VSS_FAULT_EXIT_AFTER is not None and _frames_written >= envs.SAM2VSS_FAULT_EXIT_AFTER:
        os._exit(77)  # like a killed worker: no cleanup, no manifest update


@dataclass
class RefineReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    frames: int
    seconds: float


def refine_jobs(
    jobs: list[VideoJob],
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RefineReport:
    out = Path(out)
    cfg_hash = refine_config_hash(cfg, model_cfg)
    manifest = Manifest(
        out, cfg_hash, {"refine": asdict(cfg), "model": asdict(model_cfg) if model_cfg else None}, overwrite
    )
    todo = [j for j in jobs if not manifest.done(j, out)]
    report = RefineReport([], [j.name for j in jobs if j not in todo], {}, 0, 0.0)
    if not todo:
        return report
    refiner = ReferenceRefiner(cfg, model_cfg)
    t_all = time.perf_counter()
    for job in todo:
        bar = tqdm(total=len(job.label_names), desc=job.name, unit="frame", disable=not progress, leave=False)
        t0 = time.perf_counter()
        try:
            n = refine_video(refiner, job, out, cfg.num_classes, bar)
        except Exception as e:  # one bad video never takes down the batch
            log.error("video %s failed: %s", job.name, e)
            manifest.record(
                job.name, status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()
            )
            report.failed[job.name] = f"{type(e).__name__}: {e}"
            continue
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        manifest.record(job.name, status="done", frames=n, seconds=round(dt, 3), fps=round(n / dt, 3))
        report.done.append(job.name)
        report.frames += n
        if progress:
            tqdm.write(f"{job.name}: {n} frames, {n / dt:.2f} frames/s")
    report.seconds = time.perf_counter() - t_all
    return report
