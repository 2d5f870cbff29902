"""`sam2vss refine`: run a refiner over a dataset (or one video file) with resumable outputs.

Outputs follow the prediction-folder layout OUT/<video>/<frame>.png; outdir.py guards, locks and
records the folder. A video is written to OUT/.partial/<video> (each frame to a temporary name,
renamed) and moved into place when complete. OUT/manifest.json records the configuration, the
run header and each video's status: done with its frames, time, masklets and coverage per
window, the digest of its outputs and the record of its inputs, or failed with the error. A
rerun with the same configuration skips videos that are done, whose outputs are all there and
whose inputs are unchanged (files whose size or mtime changed are re-hashed), and redoes the
rest from their first frame, saying why. A failing video is reported and the others go on; bad
input data (DataError) fails at once, other errors are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam2vss import envs, outdir
from sam2vss.config import PRESETS, RefineConfig, RunConfig
from sam2vss.data import (
    IMAGE_SUFFIXES,
    BaseLabels,
    DataError,
    Dataset,
    list_frames,
    match_frames,
    read_label_png,
)
from sam2vss.engine import Refiner
from sam2vss.labels import NUM_CLASSES
from sam2vss.model import ModelConfig, model_identity
from sam2vss.outdir import Input, Manifest
from sam2vss.reference import Refined, Window
from sam2vss.report import (
    RefineReport,
    format_header,
    low_coverage_warning,
    masklet_summary,
    run_header,
    video_line,
)
from sam2vss.sinks import write_label_png
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
            labels = tuple(match_frames(names, Path(pred_dir) / video, video, against="frame folder"))
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


def refine_settings(
    cfg: RefineConfig,
    model_cfg: ModelConfig | None,
    pipeline: str | None = None,
    model_dtype: str = "float32",
) -> dict:
    """What changes the outputs: the refiner config, the pipeline (`pipeline`, default
    cfg.pipeline) and, for SAM2 masklets, the model and weights (the fast pipeline agrees with the
    reference on >= 99.9% of pixels, not all), and the model's dtype when it is not float32 (so the
    hashes of existing folders stay the same)."""
    pipeline = pipeline or cfg.pipeline
    if pipeline == "reference" or cfg.masks == "superpixel":  # presets and backends act in the fast one
        cfg, pipeline = replace(cfg, preset="exact", backend="eager", engine=None), "reference"
    parts: dict = {"refine": refine_fields(cfg), "pipeline": pipeline}
    if cfg.masks != "superpixel" and model_cfg is not None:
        parts["model"] = model_identity(model_cfg)
    if model_dtype != "float32":
        parts["model_dtype"] = model_dtype
    return parts


def refine_fields(cfg: RefineConfig) -> dict:
    """The manifest's "refine" settings: the fields of `cfg` as they were hashed before `pipeline`
    and `engine` were fields, so existing folders keep their hash: `pipeline` is a key of its own
    beside "refine", and `engine` appears only as its fields that differ from the preset's (an
    override that changes nothing is no other configuration)."""
    fields = asdict(cfg)
    del fields["pipeline"], fields["engine"]
    overrides = cfg.engine_overrides()
    if overrides:
        fields["engine"] = overrides
    return fields


def refine_config_hash(
    cfg: RefineConfig,
    model_cfg: ModelConfig | None,
    pipeline: str | None = None,
    *,
    model_dtype: str = "float32",
) -> str:
    """The manifest's configuration hash, pinned by tests/test_outdir.py::test_config_hash_is_pinned:
    a deliberate change bumps outdir.SCHEMA and says how older folders are treated (README)."""
    return _hash(refine_settings(cfg, model_cfg, pipeline, model_dtype))


def _hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_from_fields(fields: dict, pipeline: str) -> RefineConfig:
    """RefineConfig from a manifest's "refine" settings (`refine_fields`) and its "pipeline"."""
    fields = dict(fields)
    overrides = fields.pop("engine", None)
    cfg = RefineConfig(**fields, pipeline=pipeline)
    return replace(cfg, engine=replace(PRESETS[cfg.preset], **overrides)) if overrides else cfg


def _legacy_settings(config: dict) -> dict:
    """The hashed settings of a schema-1 manifest, rebuilt from its "config" (refine, model,
    pipeline as written by the landed code) so a mismatch can name fields; raw when that fails."""
    try:
        model = config.get("model")
        model_cfg = ModelConfig(**model) if model else None
        return refine_settings(config_from_fields(config["refine"], config["pipeline"]), model_cfg)
    except (KeyError, TypeError, ValueError):
        return config


def input_files(job: VideoJob, masks: str, checkpoint: Path | None = None) -> dict[str, Path]:
    """Every file a video's refinement reads, keyed by role and name: its frames (folder) or video
    file, its base labels, its instance masks with masks="instances", and the checkpoint."""
    files: dict[str, Path] = {}
    if job.video.is_dir():
        names = list_frames(job.video, IMAGE_SUFFIXES, "frame folder")
        files |= {f"frames/{n}": job.video / n for n in names}
    else:
        files[f"video/{job.video.name}"] = job.video
    files |= {f"labels/{n}": job.label_dir / n for n in job.label_names}
    if masks == "instances" and job.instance_dir is not None:
        files |= {f"instances/{n}": job.instance_dir / n for n in list_frames(job.instance_dir)}
    if checkpoint is not None:
        files["checkpoint"] = checkpoint
    return files


def job_inputs(jobs: Sequence[VideoJob]) -> list[Input]:
    """The folders every job reads, for the output guard (the CLI adds --data, --pred, --labels)."""
    inputs = []
    for job in jobs:
        inputs.append(Input(f"the base labels of {job.name}", job.label_dir))
        if job.video.is_dir():
            inputs.append(Input(f"the frames of {job.name}", job.video))
        else:
            inputs.append(Input(f"the folder of {job.video.name}", job.video.parent, tree=False))
        if job.instance_dir is not None:
            inputs.append(Input(f"the instance masks of {job.name}", job.instance_dir))
    return inputs


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
    num_classes: int = NUM_CLASSES,
) -> Iterator[tuple[int, Window]]:
    """The job's windows in order: frames decoded by its source (onto `device` where the backend
    can), base predictions (validated as read: data.BaseLabels; one uint8 tensor per window on
    `compute_device`, default `device`, uploaded pinned and non-blocking), `prepare(frames)` (the
    refiner's model-size images, when it has them) and, for masks="instances", the first frame's
    instance ids. Runs on the decode thread (Prefetcher), one window ahead of the compute."""
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
        for start, frames in zip(range(0, len(names), window), source.windows(window), strict=True):
            stop = start + frames.shape[0]
            labels = torch.from_numpy(np.stack([read_labels(n) for n in names[start:stop]]))  # one size
            if compute_device.type == "cuda":
                labels = labels.pin_memory().to(compute_device, non_blocking=True)
            inst = None
            if len(inst_names) == len(names):
                inst = read_label_png(job.instance_dir / inst_names[start])
            paths = None if source.paths is None else source.paths[start:stop]
            images = prepare(frames) if prepare is not None else None
            yield start, Window(frames, labels, paths, inst, images)


def refiner_windows(
    refiner: Refiner, job: VideoJob, window: int | None = None, num_classes: int | None = None
):
    """`_windows` as `refiner` consumes them: decoded where it wants frames, labels on its device,
    its model-size images prepared."""
    return _windows(
        job,
        window or refiner.cfg.window,
        refiner.frames_device,
        refiner.device,
        refiner.prepare,
        num_classes or refiner.cfg.num_classes,
    )


def refine_video(
    refiner: Refiner,
    job: VideoJob,
    out: Path,
    num_classes: int,
    bar: tqdm,
    window_stats: list[Refined] | None = None,
) -> int:
    """Refine one video into OUT/<video>/; returns its frame count.

    The loop: decode (a background thread, one window ahead) -> refine_window -> write (a thread
    pool, PNG encoding overlapping the next window's compute). `refiner.stages` gets the time the
    compute thread waited for decode ("decode wait") and for the writers ("write wait");
    `window_stats` gets each window's Refined (its `.stats`: masklets, coverage, read once the
    writes are done)."""
    written = 0
    for stale in (out / job.name).glob(".*.tmp"):  # left by a killed run: its writes never completed
        stale.unlink(missing_ok=True)
    windows = Prefetcher(refiner_windows(refiner, job, num_classes=num_classes))
    writes: list[Future] = []
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sam2vss-write")
    t_window = time.perf_counter()
    try:
        for start, window in windows:
            refined = refiner.refine_window(window)
            for t in range(len(refined)):
                path = out / job.name / (Path(job.label_names[start + t]).stem + ".png")
                writes.append(pool.submit(_write_frame, path, refined, t, num_classes))
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


def _failed(error: str, trace: str, attempts: int) -> dict:
    return {"status": "failed", "error": error, "traceback": trace, "attempts": attempts}


def process_video(refiner: Refiner, job: VideoJob, out: Path, retries: int, bar: tqdm | None = None) -> dict:
    """Refine one video into OUT/.partial/<video>, then move it to OUT/<video>; the manifest entry
    (never raises, except KeyboardInterrupt after dropping the partial video). A DataError (bad
    input) fails at once: the same bytes fail the same way. Other errors are retried `retries`
    times."""
    if job.error is not None:
        return _failed(job.error, "", 0)
    bar = bar if bar is not None else tqdm(disable=True)
    out, c = Path(out), refiner.cfg.num_classes
    stage = out / outdir.PARTIAL / job.name
    try:
        BaseLabels(job.label_dir, c).check_headers(job.label_names)  # mode and size, before compute
    except DataError as e:
        return _failed(str(e), traceback.format_exc(), 0)
    errors: list[tuple[str, str]] = []
    for attempt in range(1 + retries):
        shutil.rmtree(stage, ignore_errors=True)
        windows: list[Refined] = []
        t0, n0 = time.perf_counter(), bar.n
        refiner.stages.reset()
        try:
            n = refine_video(refiner, job, stage.parent, c, bar, windows)
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
            "sha256": output_digest(job, out),
            "masklets": masklet_summary(stats),
            # per-frame stage times; "decode wait" and "write wait" are the compute thread blocked
            "stages_ms_per_frame": refiner.stages.per_frame_ms(n),
            "decode_wait_share": round(refiner.stages.share("decode wait", dt), 4),
        }
    shutil.rmtree(stage, ignore_errors=True)
    return _failed(*errors[-1], len(errors))


# ------------------------------------------------------------------ the run
def _plan(
    jobs: Sequence[VideoJob], manifest: Manifest, out: Path, masks: str, checkpoint: Path | None
) -> tuple[list[VideoJob], list[str], dict[str, str]]:
    """(videos to refine, videos skipped, why each previously done video is refined again).

    Done means: recorded done, every output there with the recorded digest, and the inputs'
    bytes as recorded (only files whose size or mtime changed are re-hashed). Entries of schema 1
    have no input record: their current inputs are recorded now."""
    todo, skipped, redo = [], [], {}
    refreshed = False
    for job in jobs:
        entry = manifest.videos.get(job.name, {})
        if job.error is not None or entry.get("status") != "done":
            todo.append(job)
            continue
        try:
            intact = output_digest(job, out) == entry.get("sha256")
        except FileNotFoundError:
            intact = False
        files = input_files(job, masks, checkpoint)
        if entry.get("inputs") is None:  # schema 1 recorded no inputs: take them as they are now
            recorded = outdir.input_record(files)
        else:
            recorded = outdir.load_record(out, job.name, entry["inputs"])
        changed, now = outdir.changed_inputs(files, recorded or {})
        if intact and recorded is not None and not changed:
            if now != recorded or entry.get("inputs") is None:  # new mtimes: no re-hash next time
                entry["inputs"] = outdir.save_record(out, job.name, now)
                refreshed = True
            skipped.append(job.name)
            continue
        if not intact:
            redo[job.name] = "its outputs are missing or were modified"
        elif recorded is None:
            redo[job.name] = f"its input record {out / outdir.INPUTS / job.name}.json is missing"
        else:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            redo[job.name] = f"its inputs changed ({', '.join(changed[:3])}{more})"
        todo.append(job)
    if refreshed:
        manifest.save()
    return todo, skipped, redo


def _ray_model_dtype(cfg: RefineConfig, model_cfg: ModelConfig | None) -> str:
    """The model dtype Ray actors will run (the driver builds no refiner): a preset's bf16 model
    on CUDA unless --device cpu. On a cluster without GPUs the actors run fp32 and the folder is
    keyed bf16: a later fp32 run is refused as another configuration, never mixed in."""
    if cfg.pipeline != "fast" or cfg.masks == "superpixel" or model_cfg is None:
        return "float32"
    device = "cpu" if model_cfg.device == "cpu" else "cuda"
    return "bfloat16" if cfg.fast_engine().use_bf16(device) else "float32"


def refine_jobs(
    jobs: list[VideoJob],
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    run: RunConfig = RunConfig(),
    protect: Sequence[Input] = (),
) -> RefineReport:
    """Refine every job not already done in OUT (manifest), with cfg.pipeline (`reference` or
    `fast`) and run.runner (`local` or `ray`). Nothing is written before --out is found clear of every
    input (`protect`: named by the CLI's flags; then each job's folders), writable, and locked
    for this run; each refusal is an OutputError (a DataError: exit 2 at the CLI)."""
    out = Path(out)
    runner = run.runner
    uses_model = cfg.masks != "superpixel" and model_cfg is not None
    ckpt_path = Path(model_cfg.checkpoint) if uses_model and not model_cfg.random_weights else None
    if ckpt_path is not None and not ckpt_path.is_file():
        raise DataError(
            f"--checkpoint {ckpt_path}: file not found; pass a SAM2 .pt, or none for random weights"
        )
    outdir.guard_output(out, [*protect, *job_inputs(jobs)])
    outdir.check_writable(out, "--out")
    created = not out.exists()
    lock = outdir.OutputLock(out)
    lock.acquire()
    try:
        refiner = Refiner.build(cfg, model_cfg) if runner == "local" else None
        ckpt = outdir.file_record(ckpt_path) if ckpt_path is not None else None
        dtype = refiner.model_dtype if refiner is not None else _ray_model_dtype(cfg, model_cfg)
        settings = refine_settings(cfg, model_cfg, model_dtype=dtype)
        first = (jobs[0].video, jobs[0].decoder) if jobs else None
        header = run_header(refiner, cfg, model_cfg, runner, first, ckpt and ckpt[2])
        config = {
            "refine": refine_fields(cfg),
            "model": asdict(model_cfg) if model_cfg else None,
            "pipeline": cfg.pipeline,
        }
        data = {"schema": outdir.SCHEMA, "config_hash": _hash(settings), "settings": settings}
        manifest = outdir.open_manifest(
            out, data | {"config": config, "run": header}, overwrite, _folder_settings
        )
        report = RefineReport([], [], {}, 0, 0.0, header=format_header(header))
        print(report.header)
        todo, report.skipped, report.redone = _plan(jobs, manifest, out, cfg.masks, ckpt_path)
        for name, why in report.redone.items():
            print(f"{name}: refining again: {why}")
        if not todo:
            return report
        t_all = time.perf_counter()
        bar = tqdm(total=sum(len(j.label_names) for j in todo), unit="frame", disable=not progress)
        records: dict[str, dict] = {}  # each video's inputs, taken before it is refined
        if runner == "ray":
            from sam2vss.scale import run_ray

            records = {j.name: _record(j, cfg.masks, ckpt_path) for j in todo if j.error is None}
            results = run_ray(todo, out, cfg, model_cfg, run.retries, run.workers, run.ray_address, progress)
        else:
            results = _run_local(refiner, todo, out, run.retries, bar, records, cfg.masks, ckpt_path)
        with bar:
            bar.set_description(f"videos 0/{len(todo)}")
            for k, (name, entry) in enumerate(results, 1):  # the driver is the manifest's only writer
                _finish(manifest, out, name, entry, records.get(name, {}), report, progress)
                if runner == "ray":  # the local runner's writers advance the bar frame by frame
                    bar.update(entry.get("frames", 0))
                bar.set_description(f"videos {k}/{len(todo)}")
        report.seconds = time.perf_counter() - t_all
        return report
    finally:
        with contextlib.suppress(OSError):  # only when empty: a killed run's is cleared by the next
            (out / outdir.PARTIAL).rmdir()
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):  # refused before writing anything
            out.rmdir()


def _folder_settings(manifest: dict) -> dict:
    return manifest.get("settings") or _legacy_settings(manifest.get("config", {}))


def _record(job: VideoJob, masks: str, checkpoint: Path | None) -> dict[str, list]:
    return outdir.input_record(input_files(job, masks, checkpoint))


def _run_local(
    refiner: Refiner,
    todo: list[VideoJob],
    out: Path,
    retries: int,
    bar: tqdm,
    records: dict[str, dict],
    masks: str,
    checkpoint: Path | None,
) -> Iterator[tuple[str, dict]]:
    for job in todo:
        if job.error is None:
            try:
                records[job.name] = _record(job, masks, checkpoint)
            except (DataError, OSError) as e:
                yield job.name, _failed(str(e), traceback.format_exc(), 0)
                continue
        yield job.name, process_video(refiner, job, out, retries, bar)


def _finish(
    manifest: Manifest,
    out: Path,
    name: str,
    entry: dict,
    inputs: dict,
    report: RefineReport,
    progress: bool,
) -> None:
    """Record one finished video. A failed video's older outputs are set aside, so the folder
    never holds a result that disagrees with its manifest."""
    if entry["status"] == "done":
        entry["inputs"] = outdir.save_record(out, name, inputs)
        if progress:
            tqdm.write(video_line(name, entry))
        warning = low_coverage_warning(name, entry)
        if warning:
            log.warning(warning)
    elif (out / name).exists():
        entry["superseded"] = str(outdir.supersede(out, [name], manifest=False))
    manifest.record(name, entry)
    report.add(name, entry)
