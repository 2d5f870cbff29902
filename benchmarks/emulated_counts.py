"""Per-frame device counts of one window on the emulated CUDA device (sam2vss.emulate): launches,
metadata ops, host syncs (with their call sites) and bytes copied, phase by phase, for either
pipeline. The setup of GPU.md section 2.1: a 240x428 synthetic clip of 12 frames, one window of
12, masklets prompted from N instance masks, Hiera-T with random weights at image size 256.

    python benchmarks/emulated_counts.py --masklets 5 --pipeline fast --preset exact
    python benchmarks/emulated_counts.py --masklets 5 --pipeline reference
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from sam2vss.config import PRESETS, RefineConfig
from sam2vss.emulate import EmulatedCuda
from sam2vss.model import ModelConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masklets", type=int, default=5)
    p.add_argument("--pipeline", choices=("fast", "reference"), default="fast")
    p.add_argument("--preset", choices=tuple(PRESETS), default="exact")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "sam2vss_counts")
    a = p.parse_args()

    from sam2vss.bench import bench_clip
    from sam2vss.engine import Pipeline
    from sam2vss.video import refiner_windows

    job = bench_clip(a.data_dir, a.frames, a.masklets, 240, 428)
    cfg = RefineConfig(masks="instances", window=a.frames, preset=a.preset, pipeline=a.pipeline)
    with EmulatedCuda() as emu:
        model = ModelConfig(image_size=256, device=a.device)
        refiner = Pipeline.build(cfg, model)
        window = next(iter(refiner_windows(refiner, job)))[1]
        emu.instrument(refiner)
        refiner.refine_window(window).wait()  # warm-up: one-time uploads and tables
        emu.reset()
        refiner.refine_window(window).wait()
    counts = emu.windows[0]
    print(f"{a.pipeline} {a.preset if a.pipeline == 'fast' else ''} N={a.masklets}: per phase")
    print(f"{'phase':>6} {'launches':>9} {'metadata':>9} {'syncs':>6} {'host ops':>9}")
    for phase, c in counts.phases.items():
        print(f"{phase:>6} {c['launches']:>9} {c['metadata']:>9} {c['syncs']:>6} {c['host ops']:>9}")
    print("syncs by site:", dict(Counter((s.phase, s.site, s.reason) for s in emu.syncs)))
    print("bytes by site:", dict(emu.transfers))
    print("summary:", emu.summary())


if __name__ == "__main__":
    main()
