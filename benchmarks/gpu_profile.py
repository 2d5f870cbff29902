"""Profile the fast engine's steady frames with torch.profiler and summarise the trace: device
kernels per frame, which SDPA backend ran (flash / mem-efficient / cuDNN / math), the sync-like
runtime calls, and the GPU's idle share over those frames. Run by benchmarks/gpu_check.sh.

Per preset: one window of --window frames of the bench clip is refined once to warm up (lazy
initialisation, allocator, autotuning), then once more under the profiler. The steady frames are
the last --steady frames of that window: with the default 20, frames 17-19, after SAM2's memory
shapes stop growing (frame 16, bench.WARMUP_FRAMES) and between encoder batches (8 frames each,
starting at frames 0, 8, 16), so they hold no image-encoder batch. A frame spans from the request
of its tracking step to the request of the next one, so it includes that frame's aggregate.

Kernels are attributed to the frame whose host thread launched them (by the trace's correlation
ids), not to the frame during which they ran. The GPU idle share is 1 - (union of kernel, copy and
memset intervals) / (the steady frames' wall interval, first frame's start to last frame's end).
Without CUDA (gpu_check.sh --dry-run) only host ops are recorded: kernel counts are 0 and the
idle share is null.

Coupling to the package, kept to these names: bench.bench_clip, engine.Pipeline.fast(cfg,
model_cfg), video.job_windows(job, window, device), refiner.refine_window(window), and
refiner.tracker.track, wrapped on the instance to mark frame boundaries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

FRAME = "sam2vss_frame_"

# aten ops an SDPA call dispatches to, by backend (the op names are stable across torch 2.x).
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
# Kernel names of the fused backends (the math backend runs plain bmm / softmax kernels).
SDPA_KERNELS = {
    "flash": re.compile(r"flash_fwd|pytorch_flash", re.I),
    "mem-efficient": re.compile(r"fmha_cutlass|efficient_attention|mem_eff", re.I),
    "cudnn": re.compile(r"cudnn.*(sdpa|fmha|flash|attn)|(sdpa|fmha).*cudnn", re.I),
}
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
RUNTIME_CATS = ("cuda_runtime", "cuda_driver")
# Host calls that wait for the device: explicit synchronisation, and the synchronous copies.
SYNC_CALLS = re.compile(r"^cu(da)?(Stream|Device|Event|Ctx)Synchronize|^cudaMemcpy$|^cuMemcpy[DH]to[DH]$")


def _ranges(events: list[dict]) -> dict[int, tuple[float, float]]:
    """Frame index -> (start, end) in µs, from the user annotations this script records."""
    out = {}
    for e in events:
        if e.get("cat") == "user_annotation" and e.get("name", "").startswith(FRAME):
            out[int(e["name"][len(FRAME) :])] = (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
    return out


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise(events: list[dict], frames: list[int], top: int = 15) -> dict:
    """The trace's `traceEvents` -> per-frame figures over `frames` (frame indices) and over every
    marked frame (the window). Raises ValueError naming the missing frames."""
    ranges = _ranges(events)
    missing = [t for t in frames if t not in ranges]
    if missing:
        raise ValueError(
            f"frames {missing} have no {FRAME}N annotation in the trace (found {sorted(ranges)})"
        )

    def frame_of(ts: float, among) -> int | None:
        return next((t for t in among if ranges[t][0] <= ts < ranges[t][1]), None)

    window = sorted(ranges)
    launch_frame: dict[int, int] = {}  # correlation id -> frame that launched it
    host = {"cpu_ops": Counter(), "syncs": Counter(), "sdpa": Counter()}
    sync_names: Counter = Counter()
    for e in events:
        cat, ts = e.get("cat"), float(e.get("ts", 0))
        if cat in RUNTIME_CATS:
            t = frame_of(ts, window)
            if t is not None:
                launch_frame[e.get("args", {}).get("correlation", -1)] = t
                if SYNC_CALLS.search(e.get("name", "")):
                    host["syncs"][t] += 1
                    if t in frames:
                        sync_names[e["name"]] += 1
        elif cat == "cpu_op":
            t = frame_of(ts, window)
            if t is not None:
                host["cpu_ops"][t] += 1
                if e.get("name") in SDPA_OPS and t in frames:
                    host["sdpa"][SDPA_OPS[e["name"]]] += 1
    kernels, steady_kernels = Counter(), []
    busy: list[tuple[float, float]] = []
    span = (min(ranges[t][0] for t in frames), max(ranges[t][1] for t in frames))
    for e in events:
        if e.get("cat") not in GPU_CATS:
            continue
        a, b = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
        if a < span[1] and b > span[0]:
            busy.append((max(a, span[0]), min(b, span[1])))
        t = launch_frame.get(e.get("args", {}).get("correlation", -2))
        if e["cat"] == "kernel" and t is not None:
            kernels[t] += 1
            if t in frames:
                steady_kernels.append((e.get("name", "?"), b - a))
    n = len(frames)
    by_name: dict[str, list[float]] = {}
    for name, dur in steady_kernels:
        by_name.setdefault(name, []).append(dur)
    sdpa_kernels = Counter()
    for name, durs in by_name.items():
        for backend, pattern in SDPA_KERNELS.items():
            if pattern.search(name):
                sdpa_kernels[backend] += len(durs)
    top_kernels = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    has_gpu = any(e.get("cat") in GPU_CATS for e in events)
    span_us = span[1] - span[0]
    return {
        "frames": frames,
        "frame_ms": [round((ranges[t][1] - ranges[t][0]) / 1e3, 3) for t in frames],
        "kernels_per_frame": sum(kernels[t] for t in frames) / n,
        "window_kernels_per_frame": sum(kernels.values()) / len(window),
        "cpu_ops_per_frame": sum(host["cpu_ops"][t] for t in frames) / n,
        "window_cpu_ops_per_frame": sum(host["cpu_ops"].values()) / len(window),
        "sync_calls_per_frame": sum(host["syncs"][t] for t in frames) / n,
        "sync_calls": dict(sync_names),
        "sdpa_ops_per_frame": {k: v / n for k, v in sorted(host["sdpa"].items())},
        "sdpa_kernels_per_frame": {k: v / n for k, v in sorted(sdpa_kernels.items())},
        "gpu_busy_ms": round(_union_us(busy) / 1e3, 3) if has_gpu else None,
        "span_ms": round(span_us / 1e3, 3),
        "gpu_idle_share": (1 - _union_us(busy) / span_us) if has_gpu and span_us > 0 else None,
        "top_kernels": [
            {"name": name[:160], "count": len(d), "total_us": round(sum(d), 1)} for name, d in top_kernels
        ],
    }


def format_summary(preset: str, s: dict) -> str:
    idle = "n/a (no CUDA)" if s["gpu_idle_share"] is None else f"{100 * s['gpu_idle_share']:.1f}%"
    sdpa = ", ".join(f"{k} {v:g}" for k, v in s["sdpa_ops_per_frame"].items()) or "none"
    kern = ", ".join(f"{k} {v:g}" for k, v in s["sdpa_kernels_per_frame"].items()) or "none"
    frames = f"{s['frames'][0]}-{s['frames'][-1]}"
    lines = [
        f"{preset}: frames {frames}, ms/frame {', '.join(f'{m:.1f}' for m in s['frame_ms'])}",
        f"  kernels/frame {s['kernels_per_frame']:g} (window average {s['window_kernels_per_frame']:.1f});"
        f" host aten ops/frame {s['cpu_ops_per_frame']:g} (window {s['window_cpu_ops_per_frame']:.1f})",
        f"  SDPA ops/frame: {sdpa}; fused SDPA kernels/frame: {kern}",
        f"  sync-like runtime calls/frame {s['sync_calls_per_frame']:g} {s['sync_calls'] or ''}",
        f"  GPU idle {idle} of {s['span_ms']:.1f} ms",
    ]
    lines += [
        f"    {k['total_us']:>10.1f} us {k['count']:>5d}x {k['name'][:90]}" for k in s["top_kernels"][:5]
    ]
    return "\n".join(lines)


def mark_frames(refiner) -> None:
    """Wrap the refiner's tracker so each tracking step, and the consumer's work on its output
    until the next request, runs inside a `sam2vss_frame_<t>` profiler range."""
    import torch

    track = refiner.tracker.track

    def marked(*args, **kwargs):
        inner = iter(track(*args, **kwargs))
        for t in itertools.count():
            with torch.profiler.record_function(f"{FRAME}{t}"):
                try:
                    out = next(inner)
                except StopIteration:
                    return
                yield out

    refiner.tracker.track = marked


def profile_preset(a: argparse.Namespace, preset: str, job, trace_dir: Path) -> dict:
    import torch

    from sam2vss.config import RefineConfig
    from sam2vss.engine import Pipeline
    from sam2vss.model import ModelConfig
    from sam2vss.video import job_windows

    model_cfg = ModelConfig(name=a.model, image_size=a.image_size)
    refiner = Pipeline.fast(RefineConfig(masks="instances", window=a.window, preset=preset), model_cfg)
    _, window = next(iter(job_windows(job, a.window, refiner.frames_device)))
    if window.frames.shape[0] < a.window:
        raise ValueError(f"--window {a.window}: the clip's first window has {window.frames.shape[0]} frames")
    cuda = refiner.device.type == "cuda"
    t0 = time.perf_counter()
    refiner.refine_window(window)  # warm-up
    warmup_s = time.perf_counter() - t0
    mark_frames(refiner)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        refiner.refine_window(window)
        if cuda:
            torch.cuda.synchronize()
    trace = trace_dir / f"trace_{preset}.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    steady = list(range(a.window - a.steady, a.window))
    return {"device": str(refiner.device), "warmup_s": round(warmup_s, 3)} | summarise(events, steady)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="exact,fastest", help="comma-separated fast-engine presets")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--model", default="sam2.1_hiera_t")
    p.add_argument("--masklets", type=int, default=25, help="objects in the clip")
    p.add_argument("--frames", type=int, default=48, help="clip length (shared with the bench's clip)")
    p.add_argument("--window", type=int, default=20, help="frames refined under the profiler")
    p.add_argument("--steady", type=int, default=3, help="summarise the window's last N frames")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--data-dir", type=Path, default=Path("bench_data"), help="where the clip is generated")
    p.add_argument("--out", type=Path, required=True, help="writes profile_<name>.json and .txt here")
    p.add_argument("--name", required=True, help="result name, e.g. the GPU's")
    a = p.parse_args(argv)
    if not 1 <= a.steady <= a.window <= a.frames:
        p.error(f"need 1 <= --steady ({a.steady}) <= --window ({a.window}) <= --frames ({a.frames})")

    import torch

    from sam2vss.bench import bench_clip

    job = bench_clip(a.data_dir, a.frames, a.masklets, a.height, a.width, progress=False)
    result = {
        "name": a.name,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "image_size": a.image_size,
        "model": a.model,
        "masklets": a.masklets,
        "window": a.window,
        "presets": {},
    }
    failed = []
    with tempfile.TemporaryDirectory(prefix="sam2vss_profile_") as tmp:
        for preset in (x for x in a.presets.split(",") if x):
            try:
                result["presets"][preset] = profile_preset(a, preset, job, Path(tmp))
            except Exception as e:  # one preset's failure is reported; the others still run
                failed.append(preset)
                result["presets"][preset] = {"error": f"{type(e).__name__}: {e}"}
                print(f"profile {preset}: {type(e).__name__}: {e}", file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"profile_{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"profile {a.name}: {result['gpu'] or 'no GPU'}, torch {result['torch']}, size {a.image_size}"]
    for preset, s in result["presets"].items():
        lines.append(f"{preset}: {s['error']}" if "error" in s else format_summary(preset, s))
    text = "\n".join(lines)
    (a.out / f"profile_{a.name}.txt").write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
