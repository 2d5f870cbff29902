"""Resident memory of `refine` on one long video: state must stay bounded by the window.

Synthesizes one video of --frames frames (default 2,000 at 480x854, under benchmarks/data/),
refines it with the local runner, and samples the process's resident set size (RSS) every
0.5 s from a background thread. Prints RSS at 10/25/50/75/100% of the frames and the peak;
writes benchmarks/results/memory_<environment>.json.

    python benchmarks/bench_memory.py [--frames 2000] [--masks superpixel]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from sam2vss.config import RefineConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset
from sam2vss.hardware import environment, result_name
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sinks import write_json
from sam2vss.synth import synthesize

HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--masks", default="superpixel", choices=("superpixel",))
    ap.add_argument("--window", type=int, default=32)
    a = ap.parse_args()

    cfg = SynthConfig(videos=1, frames=a.frames, height=480, width=854, train_videos=0, seed=11)
    root = HERE / "data" / f"long_{a.frames}"
    stamp = root / ".config"
    if not stamp.is_file() or stamp.read_text() != config_hash(cfg):
        synthesize(root, cfg, progress=True)
        stamp.write_text(config_hash(cfg))
    jobs = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    out = HERE / "data" / f"long_{a.frames}_refined"
    samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, frames written)
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        video_out = out / jobs[0].name
        while not stop.is_set():
            written = len(list(video_out.glob("*.png"))) if video_out.is_dir() else 0
            samples.append((time.perf_counter() - t0, rss_mib(), written))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    refine_cfg = RefineConfig(masks=a.masks, vote_scope="frame", window=a.window)
    report = refine_jobs(jobs, out, refine_cfg, overwrite=True, progress=True)
    stop.set()
    thread.join()
    if report.failed:
        print(f"refinement failed: {report.failed}", file=sys.stderr)
        return 1
    rows = []
    for pct in (10, 25, 50, 75, 100):
        target = a.frames * pct // 100
        s = next((s for s in samples if s[2] >= target), samples[-1])
        rows.append({"percent": pct, "frames": s[2], "seconds": round(s[0], 1), "rss_mib": round(s[1], 1)})
    peak = max(s[1] for s in samples)
    env = environment()
    print(f"\n{a.frames} frames at 480x854, masks={a.masks}, window={a.window}, {env}")
    print(f"{'progress':>9s} {'frames':>7s} {'seconds':>8s} {'RSS MiB':>8s}")
    for r in rows:
        print(f"{r['percent']:>8d}% {r['frames']:>7d} {r['seconds']:>8.1f} {r['rss_mib']:>8.1f}")
    print(f"peak RSS {peak:.1f} MiB; {report.frames / report.seconds:.2f} frames/s")
    write_json(
        HERE / "results" / result_name("memory"),
        {
            "frames": a.frames,
            "masks": a.masks,
            "window": a.window,
            "rows": rows,
            "peak_rss_mib": round(peak, 1),
            "fps": report.frames / report.seconds,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
