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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam2vss import envs
from sam2vss.config import RefineConfig
from sam2vss.data import IMAGE_SUFFIXES, DataError, Dataset, list_frames, match_frames, read_label_png
from sam2vss.engine import make_refiner
from sam2vss.model import ModelConfig, model_identity
from sam2vss.reference import ReferenceRefiner, Refined, Window
from sam2vss.sinks import write_json, write_label_png
from sam2vss.sources import Prefetcher, open_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """One unit of work: a video's frames, its base predictions, and where outputs go."""

    name: str
    video: Path  # a frame folder (VSPW origin/) or a video file
    label_dir: Path  # base predictions S, one PNG per frame
    label_names: tuple[str, ...]
    instance_dir: Path | None = None
    error: str | None = None  # set when the inputs failed validation: reported, never run
    decoder: str = "auto"  # sources.DECODERS; frame-exact, so not part of the configuration hash


def dataset_jobs(dataset: Dataset, pred_dir: Path, split: str, decoder: str = "auto") -> list[VideoJob]:
    """One job per video of the split; a video whose inputs are invalid becomes a job that only
    reports its error, so it never stops the others."""
    jobs = []
    for video in dataset.videos(split):
        folder = dataset.image_dir(video)
        try:
            names = [Path(n).stem + ".png" for n in list_frames(folder, IMAGE_SUFFIXES, "frame folder")]
            labels = tuple(match_frames(names, Path(pred_dir) / video, video))
        except DataError as e:
            jobs.append(VideoJob(video, folder, Path(pred_dir) / video, (), error=str(e), decoder=decoder))
            continue
        inst = dataset.instance_dir(video)
        inst = inst if inst.is_dir() else None
        jobs.append(VideoJob(video, folder, Path(pred_dir) / video, labels, inst, decoder=decoder))
    return jobs


def video_job(video: Path, labels: Path, decoder: str = "auto") -> VideoJob:
    from sam2vss.data import open_video_with_labels

    pair = open_video_with_labels(video, labels)
    return VideoJob(pair.name, pair.video, pair.labels, pair.frames, decoder=decoder)


def refine_config_hash(cfg: RefineConfig, model_cfg: ModelConfig | None, pipeline: str = "reference") -> str:
    """What changes the outputs: the refiner config, the pipeline and, for SAM2 masklets, the model
    and weights (the fast pipeline agrees with the reference on >= 99.9% of pixels, not all)."""
    if pipeline == "reference" or cfg.masks == "superpixel":  # presets and backends act in the fast one
        cfg, pipeline = replace(cfg, preset="exact", backend="eager"), "reference"
    parts: dict = {"refine": asdict(cfg), "pipeline": pipeline}
    if cfg.masks != "superpixel" and model_cfg is not None:
        parts["model"] = model_identity(model_cfg)
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
        """Finished: recorded done, and every output file there with the recorded checksum."""
        entry = self.data["videos"].get(job.name, {})
        if job.error is not None or entry.get("status") != "done":
            return False
        try:
            return output_digest(job, out) == entry.get("sha256")
        except FileNotFoundError:
            return False

    def record(self, name: str, entry: dict) -> None:
        self.data["videos"][name] = entry
        write_json(self.path, self.data)


def output_names(job: VideoJob) -> list[str]:
    return [Path(n).stem + ".png" for n in job.label_names]


def output_digest(job: VideoJob, out: Path) -> str:
    """sha256 over a video's output files in frame order (raises FileNotFoundError if one is missing)."""
    h = hashlib.sha256()
    for name in output_names(job):
        h.update(name.encode())
        h.update(hashlib.sha256((Path(out) / job.name / name).read_bytes()).digest())
    return h.hexdigest()


def _windows(
    job: VideoJob,
    window: int,
    device: str | torch.device = "cpu",
    compute_device: str | torch.device | None = None,
    prepare=None,
) -> Iterator[tuple[int, Window]]:
    """The job's windows in order: frames decoded by its source (onto `device` where the backend
    can), base predictions (one uint8 tensor per window on `compute_device`, default `device`,
    uploaded pinned and non-blocking), `prepare(frames)` (the refiner's model-size images, when
    it has them) and, for masks="instances", the first frame's instance ids. Runs on the decode
    thread (Prefetcher), one window ahead of the compute."""
    names = list(job.label_names)
    compute_device = torch.device(compute_device or device)
    with open_source(job.video, job.decoder, device) as source:
        if len(source) != len(names):
            raise DataError(
                f"{job.name}: {job.video} holds {len(source)} frames but {job.label_dir} holds"
                f" {len(names)} base predictions; there must be one label PNG per frame"
            )
        inst_names = list_frames(job.instance_dir) if job.instance_dir is not None else []
        for start, frames in zip(range(0, len(names), window), source.windows(window), strict=True):
            stop = start + frames.shape[0]
            labels = _stack_labels([job.label_dir / n for n in names[start:stop]])
            if compute_device.type == "cuda":
                labels = labels.pin_memory().to(compute_device, non_blocking=True)
            inst = None
            if len(inst_names) == len(names):
                inst = read_label_png(job.instance_dir / inst_names[start])
            paths = None if source.paths is None else source.paths[start:stop]
            images = prepare(frames) if prepare is not None else None
            yield start, Window(frames, labels, paths, inst, images)


def _stack_labels(paths: list[Path]) -> torch.Tensor:
    """(T, h, w) uint8 base labels of one window."""
    arrays = [read_label_png(p) for p in paths]
    for p, a in zip(paths, arrays, strict=True):
        if a.shape != arrays[0].shape:
            raise DataError(
                f"{p}: label map is {a.shape[1]}x{a.shape[0]} (WxH) but {paths[0].name} is"
                f" {arrays[0].shape[1]}x{arrays[0].shape[0]}; all of a video's labels must have one size"
            )
    return torch.from_numpy(np.stack(arrays))


def refiner_windows(refiner: ReferenceRefiner, job: VideoJob, window: int | None = None):
    """`_windows` as `refiner` consumes them: decoded where it wants frames, labels on its device,
    its model-size images prepared."""
    return _windows(
        job,
        window or refiner.cfg.window,
        refiner.frames_device,
        refiner.device,
        getattr(refiner, "prepare", None),
    )


def refine_video(refiner: ReferenceRefiner, job: VideoJob, out: Path, num_classes: int, bar: tqdm) -> int:
    """Refine one video into OUT/<video>/; returns its frame count.

    The loop: decode (a background thread, one window ahead) -> refine_window -> write (a thread
    pool, PNG encoding overlapping the next window's compute). `refiner.stages` gets the time the
    compute thread waited for decode ("decode wait") and for the writers ("write wait")."""
    written = 0
    for stale in (out / job.name).glob(".*.tmp"):  # left by a killed run: its writes never completed
        stale.unlink(missing_ok=True)
    windows = Prefetcher(refiner_windows(refiner, job))
    writes: list[Future] = []
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sam2vss-write")
    t_window = time.perf_counter()
    try:
        for start, window in windows:
            refined = refiner.refine_window(window)
            for t in range(len(refined)):
                path = out / job.name / (Path(job.label_names[start + t]).stem + ".png")
                writes.append(pool.submit(_write_frame, path, refined, t, num_classes))
            t0 = time.perf_counter()
            written += _drain(writes, keep=refiner.cfg.window, bar=bar)
            now = time.perf_counter()
            refiner.stages.add("write wait", now - t0)
            refiner.stages.windows.append((now - t_window, len(window.labels)))
            t_window = now
        t0 = time.perf_counter()
        written += _drain(writes, keep=0, bar=bar)
        refiner.stages.add("write wait", time.perf_counter() - t0)
    finally:
        windows.close()
        pool.shutdown(wait=True, cancel_futures=True)
        refiner.stages.add("decode wait", windows.wait_s)
    return written


def _write_frame(path: Path, refined: Refined, t: int, num_classes: int) -> None:
    """On a writer thread: wait for the window's device copy, check, write the PNG atomically."""
    labels = refined.frame(t)
    if labels.max(initial=0) >= num_classes:
        raise RuntimeError(f"{path}: refined label {labels.max()} is outside 0..{num_classes - 1}")
    write_label_png(path, labels)


def _drain(writes: list[Future], keep: int, bar: tqdm) -> int:
    """Wait for all but the newest `keep` writes (bounding memory at about one window of labels);
    each finished frame advances the bar and the fault hook."""
    n = 0
    while len(writes) > keep:
        writes.pop(0).result()  # re-raises a write error here, in the compute thread
        n += 1
        bar.update()
        _fault_hook()
    return n


_frames_written = 0


def _fault_hook() -> None:
    """SAM2VSS_FAULT_EXIT_AFTER=N: exit abruptly after N frames in this process (tests only);
    with SAM2VSS_FAULT_ONCE=PATH only the first process to get there exits (it creates PATH)."""
    global _frames_written
    _frames_written += 1
    if envs.SAM2VSS_FAULT_EXIT_AFTER is None or _frames_written < envs.SAM2VSS_FAULT_EXIT_AFTER:
        return
    if envs.SAM2VSS_FAULT_ONCE is not None:
        try:
            Path(envs.SAM2VSS_FAULT_ONCE).touch(exist_ok=False)
        except FileExistsError:
            return
    os._exit(77)  # like a killed worker: no cleanup, no manifest update


def process_video(refiner: ReferenceRefiner, job: VideoJob, out: Path, retries: int, progress: bool) -> dict:
    """Refine one video with up to `retries` retries; the manifest entry for it (never raises)."""
    if job.error is not None:
        return {"status": "failed", "error": f"DataError: {job.error}", "traceback": "", "attempts": 0}
    errors = []
    for attempt in range(1 + retries):
        bar = tqdm(total=len(job.label_names), desc=job.name, unit="frame", disable=not progress, leave=False)
        t0 = time.perf_counter()
        refiner.stages.reset()
        try:
            n = refine_video(refiner, job, out, refiner.cfg.num_classes, bar)
        except Exception as e:  # one bad video never takes down the batch
            log.error("video %s failed (attempt %d of %d): %s", job.name, attempt + 1, 1 + retries, e)
            errors.append((f"{type(e).__name__}: {e}", traceback.format_exc()))
            continue
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        return {
            "status": "done",
            "frames": n,
            "seconds": round(dt, 3),
            "fps": round(n / dt, 3),
            "attempts": attempt + 1,
            "sha256": output_digest(job, out),
            # per-frame stage times; "decode wait" and "write wait" are the compute thread blocked
            "stages_ms_per_frame": refiner.stages.per_frame_ms(n),
            "decode_wait_share": round(refiner.stages.share("decode wait", dt), 4),
        }
    return {"status": "failed", "error": errors[-1][0], "traceback": errors[-1][1], "attempts": len(errors)}


@dataclass
class RefineReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    frames: int
    seconds: float

    def add(self, name: str, entry: dict) -> None:
        if entry["status"] == "done":
            self.done.append(name)
            self.frames += entry["frames"]
        else:
            self.failed[name] = entry["error"]


def refine_jobs(
    jobs: list[VideoJob],
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    runner: str = "local",
    retries: int = 1,
    workers: int | None = None,
    ray_address: str | None = None,
    pipeline: str = "reference",
) -> RefineReport:
    """Refine every job not already done in OUT (manifest), with the `local` or `ray` runner and
    the `reference` or `fast` pipeline."""
    out = Path(out)
    config = {"refine": asdict(cfg), "model": asdict(model_cfg) if model_cfg else None, "pipeline": pipeline}
    manifest = Manifest(out, refine_config_hash(cfg, model_cfg, pipeline), config, overwrite)
    todo = [j for j in jobs if not manifest.done(j, out)]
    report = RefineReport([], [j.name for j in jobs if j not in todo], {}, 0, 0.0)
    if not todo:
        return report
    t_all = time.perf_counter()
    if runner == "ray":
        from sam2vss.scale import run_ray

        results = run_ray(todo, out, cfg, model_cfg, retries, workers, ray_address, progress, pipeline)
    elif runner == "local":
        refiner = make_refiner(cfg, model_cfg, pipeline)
        results = ((job.name, process_video(refiner, job, out, retries, progress)) for job in todo)
    else:
        raise ValueError(f"unknown runner {runner!r}; expected local or ray")
    for name, entry in results:  # the driver is the manifest's only writer
        manifest.record(name, entry)
        report.add(name, entry)
        if progress and entry["status"] == "done":
            n, fps, wait = entry["frames"], entry["fps"], entry.get("decode_wait_share", 0.0)
            tqdm.write(f"{name}: {n} frames, {fps:.2f} frames/s, decode wait {wait:.1%}")
    report.seconds = time.perf_counter() - t_all
    return report
