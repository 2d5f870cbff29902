"""`sam2vss bench`: the refiner end to end on a synthetic clip, per window size and preset, with
its quality (label agreement with the reference, measured in the same run), its floor (the model
stages alone) and its ceiling (the machine's matrix-multiply FLOP/s).

Each row is one full `refine` loop over the clip (decode on a background thread, refine, PNG
writes on a pool) after one warm-up window: frames/s, ms/frame p50 and p99 over windows, the stage
breakdown (decode wait, detect, preprocess, encode, propagate, aggregate+vote, write wait), peak
memory, agreement with the reference's labels, the engine's time over the model-stage floor, and
the model FLOP/s achieved (FLOPs counted once by torch's FlopCounterMode) over the measured matmul
ceiling. Masklets are prompted from the clip's instance masks so that random weights give a
realistic number of them. On a GPU each stage is synchronised before it is timed.

`--grid` adds a keyframe-detection table (`detect_sweep`): per AMG grid size, each preset's
detector and the official generator on the clip's first frame, with the masks kept and their IoU.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sam2vss import model as sam2_model
from sam2vss.config import RefineConfig, SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.engine import Pipeline
from sam2vss.model import ModelConfig
from sam2vss.refine import dataset_jobs
from sam2vss.video import VideoJob, job_windows, output_names, refine_video, refiner_windows


@dataclass
class Row:
    pipeline: str  # reference | fast
    preset: str  # the fast pipeline's preset ("-" for the reference)
    backend: str  # model backend ("-" for the reference)
    window: int
    frames: int
    fps: float
    p50_ms: float  # ms/frame over windows
    p99_ms: float
    stages_ms: dict[str, float]  # per frame
    peak_mem_mib: float  # resident set (CPU) or CUDA allocator peak (GPU)
    warmup_s: float  # the warm-up window, compile or engine build included (not in frames/s)
    agreement: float | None = None  # share of pixels equal to the reference's labels
    floor_ms: float | None = None  # model stages alone (encoder + batched tracking), ms/frame
    over_floor: float | None = None  # engine ms/frame / floor ms/frame
    model_gflop_per_frame: float | None = None
    achieved_gflops: float | None = None  # model FLOPs x frames/s
    ceiling_share: float | None = None  # achieved / matmul ceiling
    # --emulate-cuda (sam2vss.emulate; counts after the warm-up, the timings are the CPU's):
    launches_per_frame: float | None = None  # device launches of the windows / their frames
    syncs_per_frame: float | None = None  # host syncs in the frames after each keyframe
    syncs_per_window: float | None = None
    h2d_bytes_per_frame: float | None = None  # every thread's copies (the decode thread's too)
    d2h_bytes_per_frame: float | None = None
    mismatches: int | None = None  # host/device or cross-device mixes CUDA would reject
    sdpa_backends: dict | None = None  # attention calls per backend CUDA would pick


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 20) -> float:
    """FLOP/s of square matmuls in the engine's compute dtype (fp32 on CPU, bf16 on CUDA): the
    best over sizes and `repeats` after a warm-up. A noisy machine only lowers it, so run_bench
    measures it before and after the rows and keeps the higher."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        for _ in range(repeats):
            _sync()
            t0 = time.perf_counter()
            a @ b
            _sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one (it counts 0 for it).
_CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def model_floor(refiner: Pipeline, job: VideoJob, window: int) -> tuple[float, float]:
    """(seconds per frame, FLOPs per frame) of the model stages alone: the image encoder on every
    frame and one batched tracking step per frame, on preprocessed inputs and keyframe masks
    prepared beforehand (untimed). FLOPs are counted on the first window, outside the timing."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = []
    tracker = refiner.tracker
    with torch.inference_mode(), sam2_model.autocast(refiner.device):
        for _, win in refiner_windows(refiner, job, window):
            masks0, _ = refiner.source.keyframe(win)
            inputs.append((tracker.preprocess(win), masks0 if masks0.shape[0] else None))
    seconds = frames = 0
    with torch.inference_mode(), sam2_model.autocast(refiner.device):
        for images, masks in inputs:
            frames += images.shape[0]
            if masks is None:
                continue
            _sync()
            t0 = time.perf_counter()
            for _ in tracker.batched.track(images, masks):
                pass
            _sync()
            seconds += time.perf_counter() - t0
        images, masks = next((i, m) for i, m in inputs if m is not None)
        # Compiled graphs bypass the dispatcher that counts FLOPs: count on the eager modules.
        counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS)
        with counter, torch._dynamo.config.patch(disable=True):
            for _ in tracker.batched.track(images, masks):
                pass
    return seconds / frames, counter.get_total_flops() / images.shape[0]


def _peak_mem_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# SAM2 reads up to 7 memory frames and 16 object pointers, so frame 16 of a window is the first
# to see no new memory shape; 17 frames also make two full encoder batches of 8 after the keyframe.
WARMUP_FRAMES = 17


EMULATED_FIELDS = (
    "launches_per_frame", "syncs_per_frame", "syncs_per_window", "h2d_bytes_per_frame",
    "d2h_bytes_per_frame", "mismatches", "sdpa_backends",
)  # fmt: skip


def _run(refiner: Pipeline, job: VideoJob, out: Path, name: str, preset: str, backend: str, emu=None) -> Row:
    """A warm-up window of up to WARMUP_FRAMES frames (lazy initialisation, allocator, and the
    compiled backends' graphs for every shape a window meets), then the whole clip through the
    refine loop. With `emu` (an EmulatedCuda), the row gets the emulated device's counts of the
    timed part."""
    if emu is not None:
        emu.instrument(refiner)
    first = next(iter(refiner_windows(refiner, job)))[1]
    t0 = time.perf_counter()
    k = WARMUP_FRAMES
    images = None if first.images is None else first.images[:k]
    refiner.refine_window(
        replace(first, frames=first.frames[:k], labels=first.labels[:k], images=images)
    ).wait()
    warmup = time.perf_counter() - t0
    refiner.stages.reset()
    if emu is not None:
        emu.reset()
    if refiner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(refiner.device)
    t0 = time.perf_counter()
    n = refine_video(refiner, job, out, refiner.cfg.num_classes, tqdm(disable=True))
    total = time.perf_counter() - t0
    per_frame = [s / f for s, f in refiner.stages.windows]
    counts = {}
    if emu is not None:
        summary = emu.summary()
        counts = {k: summary[k] for k in EMULATED_FIELDS}
    return Row(
        name,
        preset,
        backend,
        refiner.cfg.window,
        n,
        n / total,
        1e3 * statistics.median(per_frame),
        1e3 * float(np.percentile(per_frame, 99)),
        refiner.stages.per_frame_ms(n),
        emu.peak / 2**20 if emu is not None else _peak_mem_mib(refiner.device),
        warmup,
        **counts,
    )


def agreement(job: VideoJob, a: Path, b: Path) -> float:
    same = total = 0
    for name in output_names(job):
        x, y = read_label_png(a / job.name / name), read_label_png(b / job.name / name)
        same += int((x == y).sum())
        total += x.size
    return same / total


def bench_clip(
    out_dir: Path, frames: int, masklets: int, height: int = 480, width: int = 854, progress: bool = True
) -> VideoJob:
    """The benchmark's synthetic clip (generated once under `out_dir`, reused by later runs)."""
    synth = SynthConfig(
        videos=1, frames=frames, height=height, width=width, objects=masklets, train_videos=0, seed=17
    )
    root = Path(out_dir) / f"clip_{frames}x{masklets}_{height}x{width}"
    if not (root / "val.txt").is_file():
        from sam2vss.synth import synthesize

        synthesize(root, synth, progress=progress)
    return dataset_jobs(open_dataset(root), root / "pred_base", "val")[0]


def run_bench(
    job: VideoJob,
    model_cfg: ModelConfig,
    windows: list[int],
    compare_reference: bool,
    runs: tuple[tuple[str, str], ...] = (("exact", "eager"),),
    progress: bool = True,
    masks: str = "instances",
    emulate: bool = False,
) -> tuple[list[Row], float]:
    """The rows (per window size: the reference if asked, then each (preset, backend) run) and
    the matmul ceiling in FLOP/s. `masks`: instances (prompted from the clip's instance masks)
    or sam2 (detection with the grid and thresholds lowered for random weights). `emulate`: run
    everything on the emulated CUDA device and add its counts to the rows (no floor, no
    ceiling: CPU timings of an emulation measure nothing about a GPU)."""
    if emulate:
        from sam2vss.emulate import EmulatedCuda

        with EmulatedCuda(strict=False) as emu:
            cfg = replace(model_cfg, device="cuda")
            return _rows(job, cfg, windows, compare_reference, runs, progress, masks, emu), 0.0
    ceiling = matmul_ceiling(sam2_model.resolve_device(model_cfg.device))
    rows = _rows(job, model_cfg, windows, compare_reference, runs, progress, masks, None)
    ceiling = max(ceiling, matmul_ceiling(sam2_model.resolve_device(model_cfg.device)))
    for r in rows:
        if r.achieved_gflops is not None:
            r.ceiling_share = 1e9 * r.achieved_gflops / ceiling
    return rows, ceiling


def _rows(job, model_cfg, windows, compare_reference, runs, progress, masks, emu) -> list[Row]:
    rows: list[Row] = []
    detection = {"grid": 16, **RANDOM_WEIGHT_DETECTION} if masks == "sam2" else {}
    bar = tqdm(total=len(windows) * (len(runs) + compare_reference), desc="bench", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="sam2vss_bench_") as tmp:
        for w in windows:
            ref_out = Path(tmp) / f"reference_w{w}"
            base = RefineConfig(masks=masks, window=w, **detection)
            if compare_reference:
                ref = Pipeline.reference(base, model_cfg)
                rows.append(_run(ref, job, ref_out, "reference", "-", "-", emu))
                bar.update()
            for preset, backend in runs:
                cfg = replace(base, preset=preset, backend=backend)
                fast = Pipeline.fast(cfg, model_cfg, synced_stages=emu is None)
                out = Path(tmp) / f"{preset}_{backend}_w{w}"
                row = _run(fast, job, out, "fast", preset, backend, emu)
                if emu is None:
                    floor_s, flops = model_floor(fast, job, w)
                    row.floor_ms = 1e3 * floor_s
                    row.over_floor = (1e3 / row.fps) / row.floor_ms
                    row.model_gflop_per_frame = flops / 1e9
                    row.achieved_gflops = flops * row.fps / 1e9
                if compare_reference:
                    row.agreement = agreement(job, ref_out, out)
                rows.append(row)
                bar.update()
    bar.close()
    return rows


# Random weights give flat logits: the paper's thresholds keep nothing, so the detection sweep
# lowers them (as tests/test_detect.py does) to keep a realistic, non-zero number of masks.
RANDOM_WEIGHT_DETECTION = {"pred_iou_thresh": 0.0, "stability_thresh": 0.6, "stability_offset": 0.02}


@dataclass
class DetectRow:
    pipeline: str  # reference (the official SAM2AutomaticMaskGenerator) | fast
    preset: str
    backend: str
    grid: int  # points per side
    ms: float  # per keyframe, median over repeats: encode + detect (+ the reference's RLE etc.)
    masks: int  # masks kept on the keyframe
    mask_iou: float | None = None  # mean over the reference's masks of the best IoU with ours


def _mean_best_iou(reference: torch.Tensor, ours: torch.Tensor) -> float:
    """Mean over the reference's masks (N, H, W) of their best IoU with any of `ours` (M, H, W)."""
    if reference.shape[0] == 0:
        return 1.0 if ours.shape[0] == 0 else 0.0
    if ours.shape[0] == 0:
        return 0.0
    a, b = reference.flatten(1).float(), ours.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return float((inter / union.clamp(min=1)).max(dim=1).values.mean())


def _time_detect(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up: lazy initialisation, compiled graphs
    times, masks = [], None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        masks = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), masks


def detect_sweep(
    job: VideoJob,
    grids: list[int],
    model_cfg: ModelConfig,
    runs: tuple[tuple[str, str], ...],
    compare_reference: bool,
    repeats: int = 3,
    progress: bool = True,
) -> list[DetectRow]:
    """Keyframe detection per AMG grid size (`bench --grid`): the clip's first frame through each
    preset's detector (encode + batched prompts + device NMS) and, with `compare_reference`, the
    official generator on the same frame, which also gives each row its mask IoU."""
    window = next(iter(job_windows(job, 1, sam2_model.resolve_device(model_cfg.device))))[1]
    lowered = RANDOM_WEIGHT_DETECTION if model_cfg.random_weights else {}
    rows: list[DetectRow] = []
    bar = tqdm(total=len(grids) * (len(runs) + compare_reference), desc="detect", disable=not progress)
    for g in grids:
        cfg = RefineConfig(masks="sam2", window=1, grid=g, **lowered)
        ref_masks = None
        if compare_reference:
            ref = Pipeline.reference(cfg, model_cfg)
            ms, ref_masks = _time_detect(lambda ref=ref: ref.source.keyframe(window)[0], repeats)
            rows.append(DetectRow("reference", "-", "-", g, ms, ref_masks.shape[0], 1.0))
            bar.update()
        for preset, backend in runs:
            fast = Pipeline.fast(replace(cfg, preset=preset, backend=backend), model_cfg)

            def detect(fast=fast):
                with torch.inference_mode(), sam2_model.autocast(fast.device):
                    keyframe = None
                    if fast.source.shares_keyframe:
                        keyframe = fast.tracker.encode_keyframe(fast.tracker.preprocess(window))
                    return fast.source.keyframe(window, keyframe)[0].cpu()

            ms, masks = _time_detect(detect, repeats)
            iou = None if ref_masks is None else _mean_best_iou(ref_masks, masks)
            rows.append(DetectRow("fast", preset, backend, g, ms, masks.shape[0], iou))
            bar.update()
    bar.close()
    return rows


def format_detect_rows(rows: list[DetectRow]) -> str:
    widths = (9, 8, 8, 5, 12, 6, 9)
    names = ("pipeline", "preset", "backend", "grid", "ms/keyframe", "masks", "mask IoU")
    head = " ".join(f"{c:>{w}s}" for c, w in zip(names, widths, strict=True))
    lines = ["keyframe detection:", head, "-" * len(head)]
    for r in rows:
        iou = "-" if r.mask_iou is None else f"{r.mask_iou:.4f}"
        cells = (r.pipeline, r.preset, r.backend, str(r.grid), f"{r.ms:.1f}", str(r.masks), iou)
        lines.append(" ".join(f"{c:>{w}s}" for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def format_rows(rows: list[Row], ceiling: float) -> str:
    cols = (
        ("pipeline", 9),
        ("preset", 8),
        ("backend", 8),
        ("window", 6),
        ("frames/s", 9),
        ("p50 ms", 8),
        ("p99 ms", 8),
        ("agree", 10),
        ("floor ms", 9),
        ("/floor", 6),
        ("GFLOP/s", 8),
        ("/ceil", 6),
    )
    head = " ".join(f"{c:>{w}s}" for c, w in cols)
    top = (
        f"matmul ceiling {ceiling / 1e9:.1f} GFLOP/s" if ceiling else "matmul ceiling not measured (emulated)"
    )
    lines = [top, head, "-" * len(head)]

    def opt(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        cells = (
            r.pipeline,
            r.preset,
            r.backend,
            str(r.window),
            f"{r.fps:.3f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            "-" if r.agreement is None else f"{100 * r.agreement:.4f}%",
            opt(r.floor_ms, ".1f"),
            opt(r.over_floor, ".3f"),
            opt(r.achieved_gflops, ".1f"),
            opt(r.ceiling_share, ".1%"),
        )
        lines.append(" ".join(f"{c:>{w}s}" for c, (_, w) in zip(cells, cols, strict=True)))
    if any(r.launches_per_frame is not None for r in rows):
        lines += ["", "emulated CUDA device (counts of the timed run; timings above are the CPU's):"]
        cols = (
            ("pipeline", 9), ("preset", 8), ("window", 6), ("launch/fr", 9), ("sync/fr", 8), ("sync/win", 8),
            ("h2d B/fr", 10), ("d2h B/fr", 10), ("mismatch", 8), ("peak MiB", 8),
        )  # fmt: skip
        head = " ".join(f"{c:>{w}s}" for c, w in cols)
        lines += [head, "-" * len(head)]
        for r in rows:
            cells = (
                r.pipeline, r.preset, str(r.window), f"{r.launches_per_frame:.1f}",
                f"{r.syncs_per_frame:.2f}", f"{r.syncs_per_window:.1f}", f"{r.h2d_bytes_per_frame:.0f}",
                f"{r.d2h_bytes_per_frame:.0f}", str(r.mismatches), f"{r.peak_mem_mib:.0f}",
            )  # fmt: skip
            lines.append(" ".join(f"{c:>{w}s}" for c, (_, w) in zip(cells, cols, strict=True)))
    lines.append("")
    lines.append("stages, ms/frame:")
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stages_ms.items()) or "-"
        lines.append(
            f"  {r.pipeline} {r.preset} {r.backend} w{r.window}: {stages}; warm-up {r.warmup_s:.1f} s"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    """ms/frame (p50, with the p99 as an error bar) against the window size, one line per
    pipeline and preset, plus the model-stage floor of each preset."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'sam2vss[bench]'") from e
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key in dict.fromkeys((r.pipeline, r.preset, r.backend) for r in rows):
        sel = sorted((r for r in rows if (r.pipeline, r.preset, r.backend) == key), key=lambda r: r.window)
        xs = [r.window for r in sel]
        label = (
            "reference"
            if key[0] == "reference"
            else f"fast {key[1]}" + ("" if key[2] == "eager" else f" {key[2]}")
        )
        p50 = [r.p50_ms for r in sel]
        err = [[0] * len(sel), [max(r.p99_ms - r.p50_ms, 0) for r in sel]]
        line = ax.errorbar(xs, p50, yerr=err, marker="o", capsize=3, label=label)
        if sel[0].floor_ms is not None:
            ax.plot(
                xs, [r.floor_ms for r in sel], ls=":", color=line.lines[0].get_color(), label=f"{label} floor"
            )
    ax.set_xscale("log", base=2)
    ticks = sorted({r.window for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("window (frames)")
    ax.set_ylabel("ms / frame (p50, bar to p99)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
