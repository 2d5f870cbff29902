"""`sam2vss demo`: the README's main job on its built-in default.

Synthesizes a small VSPW-layout set (reused when the same configuration is already on disk),
refines its simulated base predictions (superpixel masklets without a checkpoint, SAM2 masklets
with one, through RefineConfig's default pipeline, `fast`, as `sam2vss refine`), evaluates
before and after, and writes DIR/report.md with the paper-style table and the pictures of
`sam2vss viz` (DIR/viz/<video>/: contact sheet with error maps, overlays, side-by-side MP4) for
the videos the refiner helped most and least. The one decision to know: those are ranked by the
gain in per-video mIoU over the classes in the video's GT; plain per-video mIoU also counts each
class only predicted as IoU 0, so its gain mostly measures spurious blobs removed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from sam2vss.config import MetricConfig, RefineConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset
from sam2vss.evaluate import (
    EvalResult,
    describe_counts,
    evaluate_methods,
    format_table,
    metric_deltas,
    plural,
)
from sam2vss.metrics import summarize
from sam2vss.model import ModelConfig
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sinks import atomic_write, write_json
from sam2vss.viz import Pictures, visualize


def _synth(out: Path, cfg: SynthConfig, progress: bool) -> Path:
    from sam2vss.synth import synthesize

    root, stamp = out / "data", out / "data" / ".synth.json"
    want = {"config_hash": config_hash(cfg)}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return root
    synthesize(root, cfg, progress=progress)
    write_json(stamp, want)
    return root


@dataclass(frozen=True)
class Shown:
    """A video the report shows, why, and its per-video metrics before and after refinement."""

    video: str
    role: str  # "helped most", "helped least" or "the only video"
    before: dict[str, float | int]  # summarize([video stats]) of the base
    after: dict[str, float | int]  # and of the refined predictions

    def gains(self) -> str:
        """Both mIoU gains in percentage points, the ranked one first."""
        parts = []
        for key, what in (("miou_present", "mIoU over GT-present classes"), ("miou", "mIoU")):
            b, a = 100 * self.before[key], 100 * self.after[key]
            parts.append(f"{what} {a - b:+.2f} pp ({b:.2f}% -> {a:.2f}%)")
        return ", ".join(parts)


def pick_videos(base: EvalResult, refined: EvalResult, cfg: MetricConfig) -> list[Shown]:
    """The videos the refiner helped most and least by the gain in per-video mIoU over GT-present
    classes (NaN, a video without evaluated pixels, ranks last), one if they coincide: two contact
    sheets cost about 2 s here, every video's would grow with --videos."""
    per = {
        v.name: (summarize([v], cfg), summarize([r], cfg))
        for v, r in zip(base.videos, refined.videos, strict=True)
    }
    gain = {name: a["miou_present"] - b["miou_present"] for name, (b, a) in per.items()}
    order = sorted(gain, key=lambda n: -math.inf if math.isnan(gain[n]) else gain[n], reverse=True)
    if len(order) == 1:
        return [Shown(order[0], "the only video", *per[order[0]])]
    return [Shown(order[0], "helped most", *per[order[0]]), Shown(order[-1], "helped least", *per[order[-1]])]


def write_report(
    out: Path,
    rows: list[tuple[str, dict]],
    pictures: list[Pictures],
    pred_dirs: list[tuple[str, Path]],
    notes: list[str],
    deltas: list[tuple[str, dict]] = (),
    shown: list[Shown] = (),
) -> Path:
    """OUT/report.md: the table, the notes, and per picture its video, why it is shown and its
    gains (`shown`, matched by video name)."""
    lines = ["# sam2vss demo report", "", "```", format_table(rows, deltas=deltas), "```", ""]
    lines += [f"- {n}" for n in notes]
    names = [name for name, _ in pred_dirs]
    lines += [
        "",
        "## Pictures (`sam2vss viz`)",
        "",
        f"Columns: frame | {' | '.join(names)} | ground truth (void light yellow) | error map of"
        f" {names[1]} against {names[0]}: green pixels {names[1]} fixed, red pixels it broke, grey"
        " both wrong, white both right, light yellow GT void (not counted)."
        + (
            " The videos the refiner helped most and least, ranked by the gain in per-video mIoU"
            " over the classes present in the video's GT (plain mIoU also counts each class only"
            " predicted as IoU 0, so its gain mostly measures spurious blobs removed); both gains"
            " under each picture, in percentage points (pp)."
            if len(pictures) > 1
            else ""
        ),
        "",
    ]
    why = {s.video: s for s in shown}
    for p in pictures:
        rel = p.contact.parent.relative_to(out)
        overlays = ", ".join(f"[{o.stem.removeprefix('overlay_')}]({rel / o.name})" for o in p.overlays)
        s = why.get(p.video)
        lines += [
            f"### {p.video}" + (f" ({s.role})" if s else ""),
            "",
            f"![{p.video}: {p.sampled} sampled frames]({rel / p.contact.name})",
            "",
        ]
        if s:
            lines += [f"{p.video}, {s.role}: {s.gains()}.", ""]
        lines += [
            f"[side-by-side MP4 of all {plural(p.frames, 'frame')}]({rel / p.mp4.name}); labels over the"
            f" frames: {overlays}",
            "",
        ]
    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
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
    pred_dirs = [("base", root / "pred_base"), ("refined", refined_dir)]
    t_viz = time.perf_counter()
    shown = pick_videos(*results, metric_cfg)
    pictures = visualize(dataset, pred_dirs, out / "viz", "val", [s.video for s in shown], 4, progress)
    t_viz = time.perf_counter() - t_viz
    notes = [
        *_model_notes(model_cfg, refined_dir),
        f"Synthetic set: {plural(videos, 'video')} x {plural(frames, 'frame')} at"
        f" {cfg.height}x{cfg.width}, seed {cfg.seed}.",
        "Base: " + describe_counts(base) + ".",
        f"Refined: {report.frames} frames in {report.seconds:.1f} s"
        f" ({report.frames / max(report.seconds, 1e-9):.1f} frames/s on this machine)"
        + (
            f"; {plural(len(report.skipped), 'video')} already refined by an earlier run, kept."
            if report.skipped
            else "."
        ),
        f"Pictures of {plural(len(pictures), 'video')} in {t_viz:.1f} s."
        f" Total time {time.perf_counter() - t0:.1f} s.",
    ]
    path = write_report(out, rows, pictures, pred_dirs, notes, deltas, shown)
    write_json(out / "metrics.json", {name: m for name, m in rows})
    print(f"wrote {path}")
    return path
