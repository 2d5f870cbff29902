"""Decode throughput of every installed video source: frames/s for sequential windows (how the
engine reads) and for random access (single frames at shuffled indices), on a generated H.264
clip (480x854, 600 frames, B-frames, a keyframe every 32 frames) and on the same frames as a
JPEG folder (VSPW layout). Each backend's frames are first checked equal to PyAV's; median of
--repeats. Writes benchmarks/results/decode_<environment>.json.

    python benchmarks/bench_decode.py [--frames 600] [--window 32] [--random 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2vss.config import VIDEO_BACKENDS
from sam2vss.hardware import environment, result_name
from sam2vss.sinks import write_json
from sam2vss.sources import available, open_source

HERE = Path(__file__).resolve().parent
H, W = 480, 854


def frame(t: int) -> np.ndarray:
    """A moving textured frame: gradients, stripes and a block that travels, so that H.264 has
    real motion and texture to code (a flat frame would flatter every decoder)."""
    y, x = np.mgrid[0:H, 0:W]
    r = (x + 3 * t) % 256
    g = (y * 2 + 5 * t) % 256
    b = (((x // 16 + y // 16 + t // 4) % 2) * 200 + (x * y // 97) % 55) % 256
    img = np.stack([r, g, b], -1).astype(np.uint8)
    cx = (37 * t) % (W - 120)
    img[180:300, cx : cx + 120] = (255 - img[180:300, cx : cx + 120]) // 2
    return img


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    import av

    root.mkdir(parents=True, exist_ok=True)
    video, folder = root / f"clip_{n}.mp4", root / f"frames_{n}"
    if not video.is_file():
        tmp = video.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            s.options = {"bf": "2", "g": "32", "crf": "20", "preset": "veryfast"}
            for t in range(n):
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")))
            c.mux(s.encode())
        tmp.rename(video)
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with open_source(video, "pyav") as src:
            for start, win in zip(range(0, n, 64), src.windows(64), strict=True):
                for k, f in enumerate(win.permute(0, 2, 3, 1).numpy()):
                    Image.fromarray(f).save(tmp / f"{start + k:05d}.jpg", quality=90)
        tmp.rename(folder)
    return video, folder


def sequential(path: Path, backend: str, window: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    n, last = 0, None
    with open_source(path, backend) as src:
        for win in src.windows(window):
            n += win.shape[0]
            last = win
    return n / (time.perf_counter() - t0), last


def random_access(path: Path, backend: str, indices: list[int]) -> float:
    with open_source(path, backend) as src:
        t0 = time.perf_counter()
        for i in indices:
            src.frame(i)
        return len(indices) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--random", type=int, default=60, help="random-access reads per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=HERE / "data")
    a = p.parse_args()
    video, folder = make_inputs(a.data, a.frames)
    indices = np.random.default_rng(0).permutation(a.frames)[: a.random].tolist()
    with open_source(video, "pyav") as src:
        expected = src.window(a.frames - 1, a.frames)
    rows = []
    for backend, path in [*((b, video) for b in VIDEO_BACKENDS), ("frames", folder)]:
        if not available(backend):
            print(f"{backend:10s} not installed, skipped")
            continue
        with open_source(path, backend) as src:  # validate before timing
            assert len(src) == a.frames, f"{backend}: {len(src)} frames"
            if backend != "frames":  # the JPEG folder is a lossy re-encode of the same frames
                assert torch.equal(src.window(a.frames - 1, a.frames), expected), f"{backend}: frames differ"
        seq = [sequential(path, backend, a.window)[0] for _ in range(a.repeats)]
        rnd = [random_access(path, backend, indices) for _ in range(a.repeats)]
        rows.append(
            {
                "backend": backend,
                "input": path.name,
                "sequential_fps": round(statistics.median(seq), 1),
                "random_fps": round(statistics.median(rnd), 1),
            }
        )
        r = rows[-1]
        seq_fps, rnd_fps = r["sequential_fps"], r["random_fps"]
        print(f"{backend:10s} {path.name:16s} sequential {seq_fps:8.1f} fps   random {rnd_fps:7.1f} fps")
    env = environment()
    out = HERE / "results" / result_name("decode")
    write_json(
        out,
        {
            "environment": env,
            "clip": f"{a.frames} frames {H}x{W} H.264 (bf=2, g=32, crf 20); JPEG folder quality 90",
            "window": a.window,
            "random_reads": a.random,
            "repeats": a.repeats,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
