"""Local runner against the Ray runner with 1 and 2 actors, on one machine, same synthetic set.

Ray is started once before timing (its start-up time is printed separately); each row refines
every video into a fresh folder and checks the outputs are byte-identical to the local run.
Writes benchmarks/results/runners_ray<version>_<environment>.json.

    python benchmarks/bench_runners.py [--videos 4 --frames 24]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from sam2vss.config import RefineConfig, RunConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset
from sam2vss.hardware import environment, result_name
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sinks import write_json
from sam2vss.synth import synthesize

HERE = Path(__file__).resolve().parent


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=24)
    a = ap.parse_args()
    import ray

    cfg = SynthConfig(videos=a.videos, frames=a.frames, height=240, width=428, train_videos=0, seed=3)
    root = HERE / "data" / f"runners_{a.videos}x{a.frames}"
    if not (root / ".config").is_file() or (root / ".config").read_text() != config_hash(cfg):
        synthesize(root, cfg, progress=False)
        (root / ".config").write_text(config_hash(cfg))
    jobs = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    refine_cfg = RefineConfig(masks="superpixel", vote_scope="frame")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    rows, reference = [], None
    for name, runner, workers in (
        ("local", "local", None),
        ("ray, 1 actor", "ray", 1),
        ("ray, 2 actors", "ray", 2),
    ):
        out = HERE / "data" / f"runners_out_{runner}_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        report = refine_jobs(
            jobs, out, refine_cfg, progress=False, run=RunConfig(runner=runner, workers=workers)
        )
        dt = time.perf_counter() - t0
        d = digest(out)
        reference = reference or d
        rows.append(
            {
                "runner": name,
                "frames": report.frames,
                "seconds": round(dt, 2),
                "fps": round(report.frames / dt, 2),
                "identical_to_local": d == reference,
            }
        )
    env = f"{environment()}, ray {ray.__version__}"
    print(f"\n{a.videos} videos x {a.frames} frames at 240x428, superpixel masklets, {env}")
    print(f"ray.init: {ray_start:.1f} s (not included below)")
    print(f"{'runner':16s} {'seconds':>8s} {'frames/s':>9s}  identical")
    for r in rows:
        print(f"{r['runner']:16s} {r['seconds']:8.2f} {r['fps']:9.2f}  {r['identical_to_local']}")
    write_json(
        HERE / "results" / result_name(f"runners_ray{ray.__version__}"),
        {"ray_init_seconds": round(ray_start, 2), "rows": rows},
    )
    return 0 if all(r["identical_to_local"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
