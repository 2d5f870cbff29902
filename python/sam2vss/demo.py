"""`sam2vss demo`: the README's main job on its built-in default.

Synthesizes a small VSPW-layout set (reused when the same configuration is already on disk),
refines its simulated base predictions (superpixel masklets without a checkpoint, SAM2 masklets
with one, through RefineConfig's default pipeline, `fast`, as `sam2vss refine`), evaluates
before and after, and writes DIR/report.md with the paper-style table and side-by-side images
(frame, base, refined, ground truth) in the VSPW palette.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sam2vss.config import MetricConfig, RefineConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import describe_counts, evaluate_methods, format_table, metric_deltas
from sam2vss.labels import IGNORE, VSPW_PALETTE
from sam2vss.model import ModelConfig
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sinks import atomic_write, write_json


def _synth(out: Path, cfg: SynthConfig, progress: bool) -> Path:
    from sam2vss.synth import synthesize

    root, stamp = out / "data", out / "data" / ".synth.json"
    want = {"config_hash": config_hash(cfg)}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return root
    synthesize(root, cfg, progress=progress)
    write_json(stamp, want)
    return root


def _colorize(labels: np.ndarray) -> np.ndarray:
    rgb = VSPW_PALETTE[labels]
    rgb[labels == IGNORE] = 255  # void shown white
    return rgb


def _panel(root: Path, pred_dirs: list[tuple[str, Path]], video: str, frame: str) -> Image.Image:
    """frame | each prediction | ground truth, side by side."""
    ds = open_dataset(root)
    image = np.asarray(Image.open(ds.image_dir(video) / f"{frame}.jpg").convert("RGB"))
    gt, _ = ds.read_gt(ds.gt_dir(video) / f"{frame}.png")
    tiles = [image] + [_colorize(read_label_png(d / video / f"{frame}.png")) for _, d in pred_dirs]
    tiles.append(_colorize(gt))
    return Image.fromarray(np.concatenate(tiles, axis=1))


def write_report(
    out: Path,
    root: Path,
    rows: list[tuple[str, dict]],
    pred_dirs: list[tuple[str, Path]],
    notes: list[str],
    deltas: list[tuple[str, dict]] = (),
) -> Path:
    ds = open_dataset(root)
    video = ds.videos("val")[0]
    frames = [Path(n).stem for n in ds.gt_frames(video)]
    lines = ["# sam2vss demo report", "", "```", format_table(rows, deltas=deltas), "```", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        "Columns: frame | " + " | ".join(name for name, _ in pred_dirs) + " | ground truth (void white).",
        "",
    ]
    for i, frame in enumerate([frames[0], frames[len(frames) // 2]]):
        name = f"panel_{i}.png"
        im = _panel(root, pred_dirs, video, frame)
        atomic_write(out / name, lambda tmp, im=im: im.save(tmp, format="PNG"))
        lines.append(f"![{video} frame {frame}]({name})")
    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return path


def _model_notes(model_cfg: ModelConfig | None, refined_dir: Path) -> list[str]:
    """What explains the refined row: random weights said plainly, and each video's masklets per
    window (superpixels: segments per frame) with their coverage, from the refine manifest."""
    notes = []
    if model_cfg is not None and model_cfg.random_weights:
        notes.append(
            f"**SAM2 ran with RANDOM WEIGHTS** (--checkpoint none, {model_cfg.name} at"
            f" {model_cfg.image_size}): its masklets are meaningless, so the refined row shows the"
            " plumbing, not the method."
        )
    unit = "segments per frame" if model_cfg is None else "masklets per window"
    videos = json.loads((refined_dir / "manifest.json").read_text())["videos"]
    for name, entry in sorted(videos.items()):
        if entry.get("status") == "done":
            m = entry["masklets"]
            counts = ", ".join(str(n) for n, _ in m["per_window"])
            notes.append(f"{name}: {unit} {counts}; {m['covered']:.1%} of the pixels inside one.")
    return notes


def run_demo(
    out: Path, videos: int = 3, frames: int = 24, model_cfg: ModelConfig | None = None, progress: bool = True
) -> Path:
    """Synthesize, refine the simulated base predictions (superpixels, or SAM2 with a checkpoint),
    evaluate both, print the paper-style table and write OUT/report.md."""
    out = Path(out)
    t0 = time.perf_counter()
    cfg = SynthConfig(videos=videos, frames=frames, height=240, width=428, train_videos=0)
    root = _synth(out, cfg, progress)
    dataset, metric_cfg = open_dataset(root), MetricConfig()
    if model_cfg is None:
        refine_cfg, method = RefineConfig(masks="superpixel", vote_scope="frame"), "superpixel refiner (SLIC)"
    else:
        refine_cfg, method = RefineConfig(masks="sam2"), f"SAM2 refiner ({model_cfg.name})"
    refined_dir = out / ("refined_superpixel" if model_cfg is None else "refined_sam2")
    report = refine_jobs(
        dataset_jobs(dataset, root / "pred_base", "val"),
        refined_dir,
        refine_cfg,
        model_cfg,
        overwrite=True,
        progress=progress,
    )
    if report.failed:
        raise RuntimeError(f"demo refinement failed: {report.failed}")
    results = evaluate_methods(
        dataset, [root / "pred_base", refined_dir], "val", metric_cfg, progress=progress
    )
    base, refined = (r.metrics for r in results)
    rows = [("base (simulated)", base), (f"+ {method}", refined)]
    deltas = metric_deltas(rows)
    print(format_table(rows, deltas=deltas))
    notes = [
        *_model_notes(model_cfg, refined_dir),
        f"Synthetic set: {videos} videos x {frames} frames at {cfg.height}x{cfg.width}, seed {cfg.seed}.",
        "Base: " + describe_counts(base) + ".",
        f"Refined: {report.frames} frames in {report.seconds:.1f} s"
        f" ({report.frames / max(report.seconds, 1e-9):.1f} frames/s on this machine)"
        + (
            f"; {len(report.skipped)} videos already refined by an earlier run, kept."
            if report.skipped
            else "."
        ),
        f"Total time {time.perf_counter() - t0:.1f} s.",
    ]
    pred_dirs = [("base", root / "pred_base"), ("refined", refined_dir)]
    path = write_report(out, root, rows, pred_dirs, notes, deltas)
    write_json(out / "metrics.json", {name: m for name, m in rows})
    print(f"wrote {path}")
    return path
