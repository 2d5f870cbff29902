"""`sam2vss demo`: the README's main job on its built-in default.

Synthesizes a small VSPW-layout set (reused when the same configuration is already on disk),
evaluates the simulated base predictions and writes DIR/report.md with the paper-style table and
side-by-side images (frame, base prediction, ground truth) in the VSPW palette.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sam2vss.config import MetricConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import describe_counts, evaluate, format_table
from sam2vss.labels import IGNORE, VSPW_PALETTE
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
    out: Path, root: Path, rows: list[tuple[str, dict]], pred_dirs: list[tuple[str, Path]], notes: list[str]
) -> Path:
    ds = open_dataset(root)
    video = ds.videos("val")[0]
    frames = [Path(n).stem for n in ds.gt_frames(video)]
    lines = ["# sam2vss demo report", "", "```", format_table(rows), "```", ""]
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


def run_demo(out: Path, videos: int = 3, frames: int = 24, progress: bool = True) -> Path:
    out = Path(out)
    t0 = time.perf_counter()
    cfg = SynthConfig(videos=videos, frames=frames, height=240, width=428, train_videos=0)
    root = _synth(out, cfg, progress)
    metric_cfg = MetricConfig()
    base = evaluate(open_dataset(root), root / "pred_base", "val", metric_cfg, progress=progress).metrics
    rows = [("base (simulated)", base)]
    print(format_table(rows))
    notes = [
        f"Synthetic set: {videos} videos x {frames} frames at {cfg.height}x{cfg.width}, seed {cfg.seed}.",
        "Base: " + describe_counts(base) + ".",
        f"Total time {time.perf_counter() - t0:.1f} s.",
    ]
    report = write_report(out, root, rows, [("base", root / "pred_base")], notes)
    write_json(out / "metrics.json", {name: m for name, m in rows})
    print(f"wrote {report}")
    return report
