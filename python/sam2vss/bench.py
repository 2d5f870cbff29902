"""`sam2vss bench`: frames/s of the refiner pipelines on a synthetic clip, per window size.

A clip with a realistic number of masklets (prompted from its instance masks, so random weights
work) is refined by the fast pipeline and, with --compare-reference, by the reference in the same
run; each row reports frames/s, ms/frame p50 and p99 over windows, the fast pipeline's stage
breakdown, peak resident memory and the label agreement with the reference. Warm-up: one
window is run and discarded first. On a GPU stages are synchronised before being timed.
Still missing (the fast-engine issue): the model-stage floor, a matmul ceiling, presets,
compiled backends and the plot.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sam2vss.config import RefineConfig, SynthConfig
from sam2vss.data import open_dataset
from sam2vss.engine import FastRefiner
from sam2vss.model import ModelConfig
from sam2vss.reference import ReferenceRefiner
from sam2vss.refine import _windows, dataset_jobs


@dataclass
class Row:
    pipeline: str
    window: int
    frames: int
    fps: float
    p50_ms: float
    p99_ms: float
    stages_ms: dict[str, float]
    peak_rss_mib: float
    agreement: float | None = None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_bench(
    out_dir: Path,
    frames: int,
    masklets: int,
    windows: list[int],
    image_size: int,
    checkpoint: str,
    model: str,
    compare_reference: bool,
    height: int = 480,
    width: int = 854,
    progress: bool = True,
) -> list[Row]:
    synth = SynthConfig(
        videos=1, frames=frames, height=height, width=width, objects=masklets, train_videos=0, seed=17
    )
    root = Path(out_dir) / f"clip_{frames}x{masklets}_{height}x{width}"
    if not (root / "val.txt").is_file():
        from sam2vss.synth import synthesize

        synthesize(root, synth, progress=progress)
    job = dataset_jobs(open_dataset(root), root / "pred_base", "val")[0]
    model_cfg = ModelConfig(name=model, checkpoint=checkpoint, image_size=image_size)
    rows: list[Row] = []
    for w in windows:
        cfg = RefineConfig(masks="instances", window=w)
        fast = FastRefiner(cfg, model_cfg, synced_stages=True)
        ref = ReferenceRefiner(cfg, model_cfg) if compare_reference else None
        wins = [win for _, win in _windows(job, w, fast.frames_device)]
        fast.refine_window(wins[0])  # warm-up
        fast.stages.reset()
        results: dict[str, list[np.ndarray]] = {}
        for name, refiner in (("fast", fast), ("reference", ref)):
            if refiner is None:
                continue
            per_window, outs = [], []
            for win in wins:
                t0 = time.perf_counter()
                outs += refiner.refine_window(win)
                _sync()
                per_window.append((time.perf_counter() - t0) / len(win.frames))
            total = sum(p * len(win.frames) for p, win in zip(per_window, wins, strict=True))
            results[name] = outs
            rows.append(
                Row(
                    name,
                    w,
                    frames,
                    frames / total,
                    1e3 * statistics.median(per_window),
                    1e3 * float(np.percentile(per_window, 99)),
                    refiner.stages.per_frame_ms(frames),
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                )
            )
        if "reference" in results:
            same = sum(
                int((a == b).sum()) for a, b in zip(results["fast"], results["reference"], strict=True)
            )
            total_px = sum(a.size for a in results["fast"])
            for r in rows[-2:]:
                r.agreement = same / total_px
    return rows


def format_rows(rows: list[Row]) -> str:
    cols = ("frames/s", 9), ("p50 ms", 8), ("p99 ms", 8), ("agree", 10)
    head = f"{'pipeline':10s} {'window':>6s} " + " ".join(f"{c:>{w}s}" for c, w in cols) + "  stages ms/frame"
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = f"{100 * r.agreement:.5f}%" if r.agreement is not None else "-"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stages_ms.items()) or "-"
        timing = f"{r.fps:9.3f} {r.p50_ms:8.1f} {r.p99_ms:8.1f}"
        lines.append(f"{r.pipeline:10s} {r.window:6d} {timing} {agree:>10s}  {stages}")
    return "\n".join(lines)


def environment() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()}cpu"
    return f"{platform.machine()}-{gpu}-torch{torch.__version__.split('+')[0]}".replace(" ", "_")
