"""Throughput of `sam2vss eval` against the per-frame numpy reference and the PNG-decode floor.

All three run in this process on the same synthetic 480x853 set (generated once under
benchmarks/data/). The floor decodes every GT and prediction PNG on the same thread pool and
does nothing else. eval is validated against the reference (every metric to 1e-9) before any
timing. Prints a table and writes benchmarks/results/eval_<environment>.json.

    python benchmarks/bench_eval.py [--videos 3 --frames 60 --repeats 3 --workers N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sam2vss.config import MetricConfig, SynthConfig, config_hash
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import evaluate, plan_frames
from sam2vss.hardware import environment, result_name
from sam2vss.metrics_reference import evaluate_reference
from sam2vss.sinks import write_json
from sam2vss.synth import synthesize

HERE = Path(__file__).resolve().parent
KEYS = ("miou", "miou_present", "fwiou", "mbiou", "mvc8", "mvc16")


def decode_floor(dataset, pred_dir, workers: int) -> float:
    frames = [f for video in plan_frames(dataset, [pred_dir], dataset.videos("val")) for f in video]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda f: (read_label_png(f.gt), read_label_png(f.preds[0])), frames))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--data", type=Path, default=HERE / "data" / "eval_480x853")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    synth_cfg = SynthConfig(videos=a.videos, frames=a.frames, height=480, width=853, train_videos=0)
    stamp = a.data / ".config"
    if not stamp.is_file() or stamp.read_text() != config_hash(synth_cfg):
        synthesize(a.data, synth_cfg, progress=True)
        stamp.write_text(config_hash(synth_cfg))
    dataset, pred = open_dataset(a.data), a.data / "pred_base"
    cfg = MetricConfig()

    # Validate before timing; the reference is slow and deterministic, so this one run is its timing.
    ref_t0 = time.perf_counter()
    ref = evaluate_reference(dataset, pred, "val", cfg, progress=False)
    ref_s = time.perf_counter() - ref_t0
    fast = evaluate(dataset, pred, "val", cfg, device="cpu", workers=a.workers, progress=False).metrics
    bad = [k for k in KEYS if abs(fast[k] - ref[k]) > 1e-9]
    if bad:
        print(f"eval disagrees with the reference on {bad}: not timing", file=sys.stderr)
        return 1
    n = fast["frames"]

    def timed(fn) -> float:
        return statistics.median(fn() for _ in range(a.repeats))

    def run_eval(kernels: str) -> float:
        t0 = time.perf_counter()
        evaluate(dataset, pred, "val", cfg, device="cpu", workers=a.workers, progress=False, kernels=kernels)
        return time.perf_counter() - t0

    torch_metrics = evaluate(dataset, pred, "val", cfg, device="cpu", progress=False, kernels="torch").metrics
    if any(abs(torch_metrics[k] - ref[k]) > 1e-9 for k in KEYS):
        print("the torch-twin eval disagrees with the reference: not timing", file=sys.stderr)
        return 1
    floor_s = timed(lambda: decode_floor(dataset, pred, a.workers))
    eval_s = timed(lambda: run_eval("host"))
    torch_s = timed(lambda: run_eval("torch"))
    rows = [
        ("PNG decode only (floor)", floor_s),
        ("sam2vss eval (host kernels)", eval_s),
        ("sam2vss eval (torch twins)", torch_s),
        ("numpy per-frame reference", ref_s),
    ]
    print(f"\n{n} frames at 480x853, {a.videos} videos, {a.workers} workers, {environment()}")
    print(f"{'implementation':28s} {'frames/s':>9s} {'ms/frame':>9s} {'vs reference':>13s} {'vs floor':>9s}")
    for name, sec in rows:
        print(f"{name:28s} {n / sec:9.1f} {1000 * sec / n:9.2f} {ref_s / sec:12.1f}x {sec / floor_s:8.2f}x")
    result = {
        "environment": environment(),
        "frames": n,
        "size": [480, 853],
        "workers": a.workers,
        "repeats": a.repeats,
        "seconds": {name: sec for name, sec in rows},
        "speedup_vs_reference": ref_s / eval_s,
        "eval_over_floor": eval_s / floor_s,
        "metrics": {k: fast[k] for k in KEYS},
    }
    out = a.json or HERE / "results" / result_name("eval")
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
