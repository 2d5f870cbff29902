"""The per-video unit: one video's windows decoded, refined and written, beside the engine.

`refine_video` is the loop: decode (a background thread, one window ahead: frames onto the
refiner's device where the decoder can, base labels validated and uploaded, `exact`'s model-size
images resized) -> `Pipeline.refine_window` (encode -> detect -> propagate -> aggregate -> vote,
engine.py) -> sinks (a thread pool writing PNGs atomically while the next window computes).
`process_video` wraps it for a run: a staged folder OUT/.partial/<video> moved into place when
complete, bad input (DataError) failing at once, other errors retried, and the manifest entry.
With `save_masklets` each frame's masklet ids go to OUT/<video>/masklets/<frame>.png (16-bit),
staged and published with the labels; `eval` reads only the label PNGs beside that folder.
refine.py (jobs, manifest, runner choice) and the Ray runner (ray_runner.py) call down into it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam2vss import envs, outdir
from sam2vss.data import (
    BaseLabels,
    DataError,
    list_frames,
    read_label_png,
)
from sam2vss.engine import Pipeline, redetect_frames
from sam2vss.labels import NUM_CLASSES
from sam2vss.reference import Refined, Window
from sam2vss.report import masklet_summary
from sam2vss.sinks import write_id_png, write_label_png
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


MASKLET_DIR = "masklets"  # OUT/<video>/masklets/<frame>.png: the masklet ids (--save-masklets)


def output_names(job: VideoJob, masklet_ids: bool = False) -> list[str]:
    """A video's output files relative to OUT/<video>: its label PNGs in frame order, then, with
    `masklet_ids`, its masklet-id PNGs in frame order."""
    names = [Path(n).stem + ".png" for n in job.label_names]
    return names + [f"{MASKLET_DIR}/{n}" for n in names] if masklet_ids else names


def output_digest(job: VideoJob, out: Path, masklet_ids: bool = False) -> str:
    """sha256 over a video's output files (`output_names`; raises FileNotFoundError if one is
    missing). Without masklet ids it is the digest folders had before they existed."""
    h = hashlib.sha256()
    for name in output_names(job, masklet_ids):
        h.update(name.encode())
        h.update(hashlib.sha256((Path(out) / job.name / name).read_bytes()).digest())
    return h.hexdigest()


def window_starts(frames: int, window: int, overlap: int = 0) -> list[int]:
    """The first frame of each window of a `frames`-frame video: s_i = i * (window - overlap), up
    to the first window that reaches the end (min(s_i + window, frames) = frames), so no window
    lies inside the previous one. One frame or more: at least one window."""
    if not 0 <= overlap < window:
        raise ValueError(
            f"window_starts: overlap must be in 0..window-1 (--window-overlap < --window), got"
            f" overlap {overlap} with window {window}"
        )
    starts = [0]
    while starts[-1] + window < frames:
        starts.append(starts[-1] + window - overlap)
    return starts


@dataclass(frozen=True)
class Span:
    """One window of the schedule: frames [start, stop), its first `overlap` shared with the
    previous window (refined again, not written), `next_keyframe` the index in it of the next
    window's first frame when the next window overlaps it (the carried masks' frame)."""

    start: int
    stop: int
    overlap: int
    next_keyframe: int | None


def window_spans(frames: int, window: int, overlap: int = 0) -> list[Span]:
    """The schedule of `window_starts` as spans; every frame lies in the written part
    [start + overlap, stop) of exactly one span (video.refine_video and api.Refiner follow it)."""
    starts = window_starts(frames, window, overlap)
    return [
        Span(
            s,
            min(s + window, frames),
            overlap if i > 0 else 0,
            starts[i + 1] - s if overlap > 0 and i + 1 < len(starts) else None,
        )
        for i, s in enumerate(starts)
    ]


def job_windows(
    job: VideoJob,
    window: int,
    device: str | torch.device = "cpu",
    compute_device: str | torch.device | None = None,
    prepare=None,
    num_classes: int = NUM_CLASSES,
    overlap: int = 0,
    redetect_every: int = 0,
) -> Iterator[tuple[int, Window]]:
    """The job's windows in order (`window_spans`: `overlap` frames shared with the previous
    window): frames decoded by its source (onto `device` where the backend can), base
    predictions (validated as read: data.BaseLabels; one uint8 tensor per window on
    `compute_device`, default `device`, uploaded pinned and non-blocking), `prepare(frames)` (the
    refiner's model-size images, when it has them) and, for masks="instances", the first frame's
    instance ids (and, with `redetect_every` K > 0, those of the window's frames K, 2K, ...: the
    re-detection frames, engine.py). Runs on the decode thread (Prefetcher), one window ahead of the compute.

    Overlap frames are kept from the previous window (frames, labels, prepared images: one copy
    of K frames each), not decoded again: a video file would seek back to the keyframe before
    them and decode a whole GOP again, and frames are decoded in order exactly once."""
    names = list(job.label_names)
    compute_device = torch.device(compute_device or device)
    read_labels = BaseLabels(job.label_dir, num_classes)
    with open_source(job.video, job.decoder, device) as source:
        if len(source) != len(names):
            raise DataError(
                f"{job.name}: {job.video} holds {len(source)} frames but {job.label_dir} holds"
                f" {len(names)} base predictions; there must be one label PNG per frame"
            )
        inst_names = list_frames(job.instance_dir) if job.instance_dir is not None else []
        kept: Window | None = None  # the previous window, for its last `overlap` frames
        for span in window_spans(len(names), window, overlap):
            start, stop, k = span.start, span.stop, span.overlap
            frames = source.window(start + k, stop)  # the frames not decoded yet
            labels = torch.from_numpy(np.stack([read_labels(n) for n in names[start + k : stop]]))  # one size
            if compute_device.type == "cuda":
                labels = labels.pin_memory().to(compute_device, non_blocking=True)
            images = prepare(frames) if prepare is not None else None
            if k > 0:
                frames = torch.cat([kept.frames[-k:], frames])
                labels = torch.cat([kept.labels[-k:], labels])
                images = None if images is None else torch.cat([kept.images[-k:], images])
            inst, later = None, {}
            if len(inst_names) == len(names):
                inst = read_label_png(job.instance_dir / inst_names[start])
                for t in redetect_frames(redetect_every, stop - start):
                    later[t] = read_label_png(job.instance_dir / inst_names[start + t])
            paths = None if source.paths is None else source.paths[start:stop]
            kept = Window(frames, labels, paths, inst, images, k, span.next_keyframe, later)
            yield start, kept


def refiner_windows(
    refiner: Pipeline, job: VideoJob, window: int | None = None, num_classes: int | None = None
):
    """`job_windows` as `refiner` consumes them: decoded where it wants frames, labels on its device,
    its model-size images prepared."""
    return job_windows(
        job,
        window or refiner.cfg.window,
        refiner.frames_device,
        refiner.device,
        refiner.prepare,
        num_classes or refiner.cfg.num_classes,
        refiner.cfg.window_overlap,
        refiner.cfg.redetect_every,
    )


def refine_video(
    refiner: Pipeline,
    job: VideoJob,
    out: Path,
    num_classes: int,
    bar: tqdm,
    window_stats: list[Refined] | None = None,
    save_masklets: bool = False,
) -> int:
    """Refine one video into OUT/<video>/ (with `save_masklets`, its masklet ids into
    OUT/<video>/masklets/); returns its frame count.

    The loop: decode (a background thread, one window ahead) -> `refiner.refine_window` (encode
    -> detect -> propagate -> aggregate -> vote, engine.py) -> sinks (a thread pool, PNG encoding
    overlapping the next window's compute). `refiner.stages` gets the time the
    compute thread waited for decode ("decode wait") and for the writers ("write wait");
    `window_stats` gets each window's Refined (its `.stats`: masklets, coverage, read once the
    writes are done). Overlapping windows (cfg.window_overlap): each window gets the previous
    one's carried masks, and its first `window.overlap` frames, written by the previous window,
    are not written again (engine.py: the vote rule), so every frame is written once."""
    written = 0
    for stale in [*(out / job.name).glob(".*.tmp"), *(out / job.name / MASKLET_DIR).glob(".*.tmp")]:
        stale.unlink(missing_ok=True)  # left by a killed run: its writes never completed
    windows = Prefetcher(refiner_windows(refiner, job, num_classes=num_classes))
    writes: list[Future] = []
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sam2vss-write")
    t_window = time.perf_counter()
    try:
        carry = None
        for start, window in windows:
            refined = refiner.refine_window(window, keep_ids=save_masklets, carried=carry)
            # handed on once: `window_stats` keeps every window's Refined until the video ends, and
            # the carried (N, H, W) masks stay on the device
            carry, refined.carry = refined.carry, None
            for t in range(window.overlap, len(refined)):
                name = Path(job.label_names[start + t]).stem + ".png"
                ids = out / job.name / MASKLET_DIR / name if save_masklets else None
                writes.append(pool.submit(_write_frame, out / job.name / name, refined, t, num_classes, ids))
            if window_stats is not None:  # read after the writes: waiting here would stall the GPU
                window_stats.append(refined)
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


def _write_frame(path: Path, refined: Refined, t: int, num_classes: int, ids_path: Path | None) -> None:
    """On a writer thread: wait for the window's device copy, check, write the PNG atomically
    (and the masklet-id PNG to `ids_path`)."""
    labels = refined.frame(t)
    if labels.max(initial=0) >= num_classes:
        raise RuntimeError(f"{path}: refined label {labels.max()} is outside 0..{num_classes - 1}")
    write_label_png(path, labels)
    if ids_path is not None:
        write_id_png(ids_path, refined.frame_ids(t))


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
    """Test hooks, unset in normal use. SAM2VSS_FAULT_EXIT_AFTER=N: exit abruptly after N frames in
    this process; with SAM2VSS_FAULT_ONCE=PATH only the first process to get there exits (it
    creates PATH). SAM2VSS_FAULT_PAUSE=PATH: after the first frame, create PATH.paused and wait
    until PATH exists (a run held mid-video, for the lock and Ctrl-C tests)."""
    global _frames_written
    _frames_written += 1
    if envs.SAM2VSS_FAULT_PAUSE is not None and _frames_written == 1:
        gate = Path(envs.SAM2VSS_FAULT_PAUSE)
        Path(f"{gate}.paused").touch()
        while not gate.exists():
            time.sleep(0.02)
    if envs.SAM2VSS_FAULT_EXIT_AFTER is None or _frames_written < envs.SAM2VSS_FAULT_EXIT_AFTER:
        return
    if envs.SAM2VSS_FAULT_ONCE is not None:
        try:
            Path(envs.SAM2VSS_FAULT_ONCE).touch(exist_ok=False)
        except FileExistsError:
            return
    os._exit(77)  # like a killed worker: no cleanup, no manifest update


def failed_entry(error: str, trace: str, attempts: int) -> dict:
    return {"status": "failed", "error": error, "traceback": trace, "attempts": attempts}


def process_video(
    refiner: Pipeline,
    job: VideoJob,
    out: Path,
    retries: int,
    bar: tqdm | None = None,
    save_masklets: bool = False,
) -> dict:
    """Refine one video into OUT/.partial/<video>, then move it to OUT/<video>; the manifest entry
    (never raises, except KeyboardInterrupt after dropping the partial video). A DataError (bad
    input) fails at once: the same bytes fail the same way. Other errors are retried `retries`
    times. `save_masklets`: the masklet ids too (OUT/<video>/masklets/), recorded in the entry
    ("masklet_ids") and covered by its digest, so a resume knows whether they are there."""
    if job.error is not None:
        return failed_entry(job.error, "", 0)
    bar = bar if bar is not None else tqdm(disable=True)
    out, c = Path(out), refiner.cfg.num_classes
    stage = out / outdir.PARTIAL / job.name
    try:
        BaseLabels(job.label_dir, c).check_headers(job.label_names)  # mode and size, before compute
    except DataError as e:
        return failed_entry(str(e), traceback.format_exc(), 0)
    errors: list[tuple[str, str]] = []
    for attempt in range(1 + retries):
        shutil.rmtree(stage, ignore_errors=True)
        windows: list[Refined] = []
        t0, n0 = time.perf_counter(), bar.n
        refiner.stages.reset()
        try:
            n = refine_video(refiner, job, stage.parent, c, bar, windows, save_masklets)
            stats = [w.stats for w in windows]  # complete: the writers waited for every copy
        except Exception as e:  # one bad video never takes down the batch
            bar.update(n0 - bar.n)  # the attempt's frames are not output
            if isinstance(e, DataError):  # bad input: the same bytes fail the same way
                errors.append((str(e), traceback.format_exc()))
                break
            log.error("video %s failed (attempt %d of %d): %s", job.name, attempt + 1, 1 + retries, e)
            errors.append((f"{type(e).__name__}: {e}", traceback.format_exc()))
            continue
        except BaseException:  # Ctrl-C: the writers have finished their frames; drop the partial video
            shutil.rmtree(stage, ignore_errors=True)
            raise
        dt = time.perf_counter() - t0
        outdir.publish(stage, out / job.name)
        return {
            "status": "done",
            "frames": n,
            "seconds": round(dt, 3),
            "fps": round(n / dt, 3),
            "attempts": attempt + 1,
            "sha256": output_digest(job, out, save_masklets),
            "masklets": masklet_summary(stats),
            "masklet_ids": save_masklets,  # OUT/<video>/masklets/ written (and in the digest)
            # per-frame stage times; "decode wait" and "write wait" are the compute thread blocked
            "stages_ms_per_frame": refiner.stages.per_frame_ms(n),
            "decode_wait_share": round(refiner.stages.share("decode wait", dt), 4),
        }
    shutil.rmtree(stage, ignore_errors=True)
    return failed_entry(*errors[-1], len(errors))
