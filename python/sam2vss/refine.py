"""`sam2vss refine`: run a refiner over a dataset (or one video file) with resumable outputs.

Outputs follow the prediction-folder layout OUT/<video>/<frame>.png; outdir.py guards, locks and
records the folder. A video is written to OUT/.partial/<video> (each frame to a temporary name,
renamed) and moved into place when complete. OUT/manifest.json records the configuration, the
run header and each video's status: done with its frames, time, masklets and coverage per
window, the digest of its outputs and the record of its inputs, or failed with the error. A
rerun with the same configuration skips videos that are done, whose outputs are all there and
whose inputs are unchanged (files whose size or mtime changed are re-hashed), and redoes the
rest from their first frame, saying why. `save_masklets` (refine --save-masklets) also writes
OUT/<video>/masklets/<frame>.png; it changes no label, so it is not part of the configuration
hash: each video's entry records whether its masklet ids were saved, and a rerun that asks for
them redoes the videos that lack them. A failing video is reported and the others go on; bad
input data (DataError) fails at once, other errors are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from sam2vss import outdir, sources
from sam2vss.config import PRESETS, RefineConfig, RunConfig
from sam2vss.data import (
    IMAGE_SUFFIXES,
    DataError,
    Dataset,
    list_frames,
    match_frames,
)
from sam2vss.engine import Pipeline
from sam2vss.model import ModelConfig, model_identity, resolve_device
from sam2vss.outdir import Input, Manifest
from sam2vss.report import (
    RefineReport,
    format_header,
    low_coverage_warning,
    run_header,
    video_line,
)
from sam2vss.video import VideoJob, failed_entry, output_digest, process_video

log = logging.getLogger(__name__)


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
    """The manifest's "refine" settings: the fields of `cfg` as they were hashed before `pipeline`,
    `engine`, `window_overlap` and `redetect_every` were fields, so existing folders keep their
    hash: `pipeline` is a key of its own beside "refine", `engine` appears only as its fields that
    differ from the preset's (an override that changes nothing is no other configuration), and
    `window_overlap` and `redetect_every` only when they are not 0 (non-overlapping windows
    detected on their first frame only are what every older folder holds)."""
    fields = asdict(cfg)
    del fields["pipeline"], fields["engine"]
    for name in ("window_overlap", "redetect_every"):
        if fields[name] == 0:
            del fields[name]
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


# ------------------------------------------------------------------ the run
def _plan(
    jobs: Sequence[VideoJob],
    manifest: Manifest,
    out: Path,
    masks: str,
    checkpoint: Path | None,
    save_masklets: bool = False,
    write: bool = True,
) -> tuple[list[VideoJob], list[str], dict[str, str]]:
    """(videos to refine, videos skipped, why each previously done video is refined again).

    Done means: recorded done, every output there with the recorded digest (the masklet ids
    included where the entry says they were saved), the inputs' bytes as recorded (only files
    whose size or mtime changed are re-hashed) and, with `save_masklets`, masklet ids saved.
    A video done with masklet ids is skipped by a run without them: its labels are the same.
    Entries of schema 1 have no input record: their current inputs are recorded now (with
    `write`; without it the plan only reads, and such a video counts as to do)."""
    todo, skipped, redo = [], [], {}
    refreshed = False
    for job in jobs:
        entry = manifest.videos.get(job.name, {})
        if job.error is not None or entry.get("status") != "done":
            todo.append(job)
            continue
        saved = bool(entry.get("masklet_ids", False))
        try:
            intact = output_digest(job, out, saved) == entry.get("sha256")
        except FileNotFoundError:
            intact = False
        files = input_files(job, masks, checkpoint)
        if entry.get("inputs") is None:  # schema 1 recorded no inputs: take them as they are now
            recorded = outdir.input_record(files) if write else None
        else:
            recorded = outdir.load_record(out, job.name, entry["inputs"])
        changed, now = outdir.changed_inputs(files, recorded or {})
        if intact and recorded is not None and not changed and (saved or not save_masklets):
            if write and (now != recorded or entry.get("inputs") is None):  # new mtimes: no re-hash next time
                entry["inputs"] = outdir.save_record(out, job.name, now)
                refreshed = True
            skipped.append(job.name)
            continue
        if not intact:
            redo[job.name] = "its outputs are missing or were modified"
        elif recorded is None:
            redo[job.name] = f"its input record {out / outdir.INPUTS / job.name}.json is missing"
        elif changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            redo[job.name] = f"its inputs changed ({', '.join(changed[:3])}{more})"
        else:
            redo[job.name] = "its masklet ids were not saved"
        todo.append(job)
    if refreshed:
        manifest.save()
    return todo, skipped, redo


def model_dtype(cfg: RefineConfig, model_cfg: ModelConfig | None, runner: str = "local") -> str:
    """The dtype of the model a run will build, without building it: a fast preset's bf16 model
    on CUDA (`Pipeline.fast`), else float32. Ray actors (the driver builds no refiner) take
    CUDA unless --device cpu: on a cluster without GPUs they run fp32 and the folder is keyed
    bf16, so a later fp32 run is refused as another configuration, never mixed in."""
    if cfg.pipeline != "fast" or cfg.masks == "superpixel" or model_cfg is None:
        return "float32"
    if runner == "local":
        device = resolve_device(model_cfg.device)
    else:
        device = "cpu" if model_cfg.device == "cpu" else "cuda"
    return "bfloat16" if cfg.fast_engine().use_bf16(device) else "float32"


def checkpoint_path(model_cfg: ModelConfig | None, masks: str) -> Path | None:
    """The checkpoint file a run reads (None: superpixels, no model, or random weights)."""
    if masks == "superpixel" or model_cfg is None or model_cfg.random_weights:
        return None
    return Path(model_cfg.checkpoint)


def finished(
    jobs: Sequence[VideoJob],
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None,
    runner: str = "local",
    save_masklets: bool = False,
) -> bool:
    """True when `refine_jobs` would find nothing to do in OUT: its manifest is this
    configuration's, and every job is done with its outputs intact and its inputs unchanged.
    `save_masklets`: the run asks for masklet ids (videos done without them are to do). Only
    reads (no lock, no model): how a finished sweep reruns without writing anything."""
    old = outdir.read_manifest(Path(out))
    settings = refine_settings(cfg, model_cfg, model_dtype=model_dtype(cfg, model_cfg, runner))
    if old is None or old["config_hash"] != _hash(settings):
        return False
    ckpt = checkpoint_path(model_cfg, cfg.masks)
    if ckpt is not None and not ckpt.is_file():
        return False
    todo, _, _ = _plan(jobs, Manifest(Path(out), old), Path(out), cfg.masks, ckpt, save_masklets, write=False)
    return not todo


def refine_jobs(
    jobs: list[VideoJob],
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    run: RunConfig = RunConfig(),
    protect: Sequence[Input] = (),
    refiner: Pipeline | None = None,
    save_masklets: bool = False,
) -> RefineReport:
    """Refine every job not already done in OUT (manifest), with cfg.pipeline (`reference` or
    `fast`) and run.runner (`local` or `ray`). Nothing is written before --out is found clear of every
    input (`protect`: named by the CLI's flags; then each job's folders), writable, and locked
    for this run; each refusal is an OutputError (a DataError: exit 2 at the CLI). `refiner`: a
    pipeline already built from the same `cfg` (the local runner then builds none).
    `save_masklets`: also write each frame's masklet ids, OUT/<video>/masklets/<frame>.png
    (16-bit: the index + 1 of the masklet that won the pixel in its window, 0 = none)."""
    out = Path(out)
    if refiner is not None and refiner.cfg != cfg:
        raise ValueError("refine_jobs: `refiner` was built from another RefineConfig than `cfg`")
    runner = run.runner
    ckpt_path = checkpoint_path(model_cfg, cfg.masks)
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
        if runner == "local" and refiner is None:
            refiner = Pipeline.build(cfg, model_cfg)
        elif runner != "local":
            refiner = None
        ckpt = outdir.file_record(ckpt_path) if ckpt_path is not None else None
        dtype = refiner.model_dtype if refiner is not None else model_dtype(cfg, model_cfg, runner)
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
        todo, report.skipped, report.redone = _plan(jobs, manifest, out, cfg.masks, ckpt_path, save_masklets)
        for name, why in report.redone.items():
            print(f"{name}: refining again: {why}")
        if not todo:
            return report
        had_ids = [j.name for j in todo if manifest.videos.get(j.name, {}).get("masklet_ids")]
        if had_ids and not save_masklets:  # a folder never loses the masklet ids it had
            save_masklets = True
            print(f"saving masklet ids: {', '.join(had_ids)} had them (as if --save-masklets)")
        sources.preload(_decoders(todo))
        t_all = time.perf_counter()
        bar = tqdm(total=sum(len(j.label_names) for j in todo), unit="frame", disable=not progress)
        records: dict[str, dict] = {}  # each video's inputs, taken before it is refined
        if runner == "ray":
            from sam2vss.ray_runner import run_ray

            records = {j.name: _record(j, cfg.masks, ckpt_path) for j in todo if j.error is None}
            results = run_ray(
                todo, out, cfg, model_cfg, run.retries, run.workers, run.ray_address, progress, save_masklets
            )
        else:
            results = _run_local(
                refiner, todo, out, run.retries, bar, records, cfg.masks, ckpt_path, save_masklets
            )
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


def _decoders(todo: Sequence[VideoJob]) -> list[str]:
    """The decoders the videos will use (one that cannot be chosen fails with its video)."""
    found = set()
    for job in todo:
        if job.error is None:
            with contextlib.suppress(DataError):
                found.add(sources.choose_decoder(job.video, job.decoder))
    return sorted(found)


def _folder_settings(manifest: dict) -> dict:
    return manifest.get("settings") or _legacy_settings(manifest.get("config", {}))


def _record(job: VideoJob, masks: str, checkpoint: Path | None) -> dict[str, list]:
    return outdir.input_record(input_files(job, masks, checkpoint))


def _run_local(
    refiner: Pipeline,
    todo: list[VideoJob],
    out: Path,
    retries: int,
    bar: tqdm,
    records: dict[str, dict],
    masks: str,
    checkpoint: Path | None,
    save_masklets: bool,
) -> Iterator[tuple[str, dict]]:
    for job in todo:
        if job.error is None:
            try:
                records[job.name] = _record(job, masks, checkpoint)
            except (DataError, OSError) as e:
                yield job.name, failed_entry(str(e), traceback.format_exc(), 0)
                continue
        yield job.name, process_video(refiner, job, out, retries, bar, save_masklets)


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
