"""Every kernel op, host build against its torch twin on the CPU (CuPy against torch on a GPU when
there is one): milliseconds, GB/s and the share of the machine's measured copy bandwidth. Each
op is validated (outputs exactly equal) before it is timed; median of --repeats.

The headline row is one refiner window as the engine runs it: 32 frames at 480x853 with 25
masklets (256x256 low-res logits, SAM2's mask resolution): aggregate with fused upsampling and
votes, decide, paint, then the metric counts (confusion, boundary, VC) of the refined frames.
Writes benchmarks/results/kernels_<environment>.json.

    python benchmarks/bench_kernels.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sam2vss.config import MetricConfig
from sam2vss.hardware import environment, result_name
from sam2vss.kernels import KernelOps
from sam2vss.metrics import VCState, Workspace
from sam2vss.sinks import write_json

HERE = Path(__file__).resolve().parent
H, W, N, T, C, LOW = 480, 853, 25, 32, 124, 256


def blob_logits(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centre = torch.rand((n, 2), generator=g)
    radius = 0.05 + 0.25 * torch.rand((n, 1, 1), generator=g)
    d = ((ys[None] - centre[:, 0, None, None]) ** 2 + (xs[None] - centre[:, 1, None, None]) ** 2).sqrt()
    return 8 * (radius - d) + 0.3 * torch.randn((n, h, w), generator=g)


def blocky_labels(seed: int, classes: int = 30) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, size=(H // 24 + 1, W // 24 + 1))
    return torch.from_numpy(np.kron(coarse, np.ones((24, 24), np.int64))[:H, :W].astype(np.uint8))


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    src = torch.ones(64 * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src), repeats) / 1e9


def equal(a, b) -> bool:
    if isinstance(a, tuple | list):
        return all(equal(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) or bool(
        (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())
    )


def window(ops: KernelOps, logits, rank, base, gt, cfg) -> list[torch.Tensor]:
    """One refiner window + its metric counts; returns everything it computed (for validation)."""
    ids, hist = [], torch.zeros((N, C), dtype=torch.int64)
    for t in range(T):
        i, h = ops.aggregate(logits[t], rank, base[t], C, by_logit=False)
        ids.append(i)
        hist += h
    classes = ops.decide(hist)
    refined = [ops.paint(ids[t], classes, base[t]) for t in range(T)]
    ws = Workspace()
    state = VCState.like(gt[0], ws)
    outs = [hist, classes, *refined]
    for t in range(T):
        outs += list(ops.frame_counts(gt[t], refined[t], cfg, ws))
        outs.append(
            ops.vc_step(gt[t], refined[t], state, t == 0, 16, [8, 16] if t >= 15 else [8], ws).clone()
        )
    return outs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    host, twin = KernelOps("host"), KernelOps("torch")
    host.threads = a.threads
    cfg, ws = MetricConfig(), Workspace()
    gt, pred = blocky_labels(0), blocky_labels(1)
    lab_bytes = H * W
    logits1 = blob_logits(N, LOW, LOW, 0)
    rank = torch.randperm(N).int()
    cand = blob_logits(768, LOW, LOW, 1)  # a 16x16 grid x 3 masks per point
    hist = torch.randint(0, 50, (N, C))
    ids = torch.randint(-1, N, (H, W)).int()

    def vc(ops):
        wsv = Workspace()
        state = VCState.like(gt, wsv)
        ops.vc_step(gt, pred, state, True, 16, [], wsv)
        return lambda: ops.vc_step(gt, pred, state, False, 16, [8, 16], wsv)

    ops_table = [  # name, bytes moved, callable factory
        ("confusion+boundary counts", 2 * lab_bytes, lambda o: lambda: o.frame_counts(gt, pred, cfg, ws)),
        ("boundary band", 2 * lab_bytes, lambda o: lambda: o.band(gt, 5, False)),
        ("consistency step (2 n)", 6 * lab_bytes, vc),
        (
            "aggregate 25 masklets",
            logits1.numel() * 4 + 5 * lab_bytes,
            lambda o: lambda: o.aggregate(logits1, rank, pred, C, False),
        ),
        ("decide + paint", 6 * lab_bytes, lambda o: lambda: o.paint(ids, o.decide(hist), pred)),
        ("amg_stats 768 candidates", cand.numel() * 4, lambda o: lambda: o.amg_stats(cand, 0.0, 0.9, (H, W))),
    ]
    bandwidth = copy_bandwidth(a.repeats)
    rows = []
    for name, nbytes, factory in ops_table:
        f_host, f_twin = factory(host), factory(twin)
        if not equal(f_host(), f_twin()):
            print(f"{name}: host and torch twin disagree: not timing", file=sys.stderr)
            return 1
        t_host, t_twin = timed(f_host, a.repeats), timed(f_twin, a.repeats)
        rows.append(
            {
                "op": name,
                "host_ms": 1e3 * t_host,
                "torch_ms": 1e3 * t_twin,
                "speedup": t_twin / t_host,
                "host_GBps": nbytes / t_host / 1e9,
                "of_copy_bw": nbytes / t_host / 1e9 / bandwidth,
            }
        )

    logits = torch.stack([blob_logits(N, LOW, LOW, 10 + t) for t in range(T)])
    base = [blocky_labels(100 + t) for t in range(T)]
    gts = [blocky_labels(200 + t // 4) for t in range(T)]
    if not equal(window(host, logits, rank, base, gts, cfg), window(twin, logits, rank, base, gts, cfg)):
        print("window: host and torch twin disagree: not timing", file=sys.stderr)
        return 1
    w_host = timed(lambda: window(host, logits, rank, base, gts, cfg), max(1, a.repeats // 2))
    w_twin = timed(lambda: window(twin, logits, rank, base, gts, cfg), max(1, a.repeats // 2))

    env = environment()
    print(f"\nkernels at {H}x{W}, {a.threads} threads, {env}; copy bandwidth {bandwidth:.1f} GB/s")
    print(f"{'op':28s} {'host ms':>8s} {'torch ms':>9s} {'speedup':>8s} {'GB/s':>6s} {'of copy':>8s}")
    for r in rows:
        print(
            f"{r['op']:28s} {r['host_ms']:8.2f} {r['torch_ms']:9.2f} {r['speedup']:7.1f}x "
            f"{r['host_GBps']:6.1f} {100 * r['of_copy_bw']:7.0f}%"
        )
    print(
        f"\nwindow: {T} frames x {N} masklets, aggregate+vote+metrics: host {w_host:.2f} s, torch twins"
        f" {w_twin:.2f} s -> {w_twin / w_host:.1f}x"
    )
    write_json(
        HERE / "results" / result_name("kernels"),
        {
            "environment": env,
            "threads": a.threads,
            "copy_GBps": bandwidth,
            "ops": rows,
            "window": {
                "frames": T,
                "masklets": N,
                "host_s": w_host,
                "torch_s": w_twin,
                "speedup": w_twin / w_host,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
