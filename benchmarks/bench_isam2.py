"""I-SAM2 with the built-in encoder on a synthetic set, against the majority-class baseline.

Trains the masklet classifier on the synthetic train split (superpixel or instance masklets),
segments the val split with and without the simulated base model filling uncovered pixels, and
evaluates everything with `eval`'s metrics. Writes benchmarks/results/isam2_<environment>.json.

    python benchmarks/bench_isam2.py [--train-videos 6 --videos 3 --frames 12]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sam2vss.config import MetricConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset
from sam2vss.evaluate import evaluate, format_table
from sam2vss.hardware import environment, result_name
from sam2vss.segmentor import SegmentorConfig, segment, train, write_majority_baseline
from sam2vss.sinks import write_json
from sam2vss.synth import synthesize

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-videos", type=int, default=6)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=12)
    a = ap.parse_args()
    cfg = SynthConfig(
        videos=a.videos, frames=a.frames, height=240, width=428, train_videos=a.train_videos, seed=21
    )
    root = HERE / "data" / "isam2"
    if not (root / ".config").is_file() or (root / ".config").read_text() != config_hash(cfg):
        synthesize(root, cfg, progress=False)
        (root / ".config").write_text(config_hash(cfg))
    ds, work = open_dataset(root), HERE / "data" / "isam2_out"
    metric_cfg = MetricConfig()

    write_majority_baseline(ds, "train", "val", work / "majority")
    rows = [
        ("majority class", evaluate(ds, work / "majority", cfg=metric_cfg, progress=False).metrics),
        ("base model (simulated)", evaluate(ds, root / "pred_base", cfg=metric_cfg, progress=False).metrics),
    ]
    timings = {}
    for masklets in ("superpixel", "instances"):
        seg_cfg = SegmentorConfig(features="builtin", masklets=masklets, epochs=40)
        t0 = time.perf_counter()
        ckpt = train(ds, "train", seg_cfg, work / f"{masklets}.pt", progress=False)
        timings[f"train {masklets}"] = time.perf_counter() - t0
        for base in (None, root / "pred_base"):
            out = work / f"{masklets}_{'base' if base else 'nearest'}"
            segment(ds, "val", work / f"{masklets}.pt", out, base=base, progress=False)
            name = f"I-builtin, {masklets} masklets" + (", base fill" if base else ", nearest fill")
            rows.append((name, evaluate(ds, out, cfg=metric_cfg, progress=False).metrics))
        losses = ckpt["losses"]
        print(f"{masklets}: {ckpt['samples']} training masklets, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    env = environment()
    print(f"\n{a.train_videos} train / {a.videos} val videos x {a.frames} frames at 240x428, {env}")
    print(format_table(rows))
    write_json(HERE / "results" / result_name("isam2"), {"rows": {n: m for n, m in rows}, "seconds": timings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
