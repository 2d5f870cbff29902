"""Deterministic synthetic VSS data in VSPW layout, with a simulated base model's predictions.

A scene is a world larger than the frame: wavy "stuff" bands and a few large stuff shapes with
per-class textures, seen by a slowly panning camera, plus moving, occluding objects (one may be
labelled "others"). Ground truth is written in raw VSPW ids (0 others, 1..C, 255 void), objects
also as instance ids. The simulated base prediction reproduces the errors a real VSS model makes:
boundary jitter (a smooth displacement field, slow and per-frame parts), small spurious blobs
living 1-3 frames, flicker, and confusions between similar classes (c <-> c xor 1) on parts of
regions for runs of frames. The same SynthConfig gives byte-identical files on any machine: all
randomness comes from numpy's PCG64 seeded with (seed, video index), no floating point reaches
a file except through deterministic rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam2vss.config import SynthConfig
from sam2vss.labels import IGNORE
from sam2vss.sinks import atomic_write, write_label_png


@dataclass(frozen=True)
class _Object:
    cls: int  # 0-based class; -1 means "others"
    apparent: int  # the class a model would predict for it
    x0: float
    y0: float
    vx: float
    vy: float
    rx: float
    ry: float
    wobble: float
    phase: float
    box: bool  # rounded box instead of an ellipse


def _class_colors(n: int) -> np.ndarray:
    rng = np.random.default_rng(12345)
    return rng.integers(30, 226, size=(n, 3)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """A smooth random field: a coarse grid of normals upsampled bilinearly to (h, w)."""
    gh, gw = cells, max(2, round(cells * w / h))
    grid = rng.standard_normal((gh + 1, gw + 1)).astype(np.float32) * amp
    ys = np.linspace(0, gh, h, dtype=np.float32)
    xs = np.linspace(0, gw, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 1)
    x0 = np.minimum(xs.astype(np.int64), gw - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


class _Video:
    """One synthetic video: scene state and per-frame rendering."""

    def __init__(self, cfg: SynthConfig, index: int):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, index])
        self.rng = rng
        h, w, c = cfg.height, cfg.width, cfg.classes
        stuff_classes = np.arange(0, c // 2)
        thing_classes = np.arange(c // 2, c)
        self.colors = _class_colors(c)
        # Stuff: 3-5 wavy horizontal bands in world coordinates, plus 1-2 static blocks.
        nb = int(rng.integers(3, 6))
        self.band_cls = rng.choice(stuff_classes, size=nb, replace=len(stuff_classes) < nb)
        self.band_y = np.sort(rng.uniform(0.15, 0.95, size=nb - 1)) * h
        self.band_amp = rng.uniform(0.02, 0.08, size=nb - 1) * h
        self.band_freq = rng.uniform(1.0, 4.0, size=nb - 1) * 2 * np.pi / w
        self.band_phase = rng.uniform(0, 2 * np.pi, size=nb - 1)
        self.blocks = [
            (
                int(rng.choice(stuff_classes)),
                rng.uniform(0.0, 0.8) * w,
                rng.uniform(0.0, 0.5) * h,
                rng.uniform(0.1, 0.3) * w,
                rng.uniform(0.15, 0.4) * h,
            )
            for _ in range(int(rng.integers(1, 3)))
        ]
        # Camera: a smooth pan of up to ~12% of the frame over the video.
        self.pan = rng.uniform(-0.12, 0.12, size=2) * np.array([w, h]) / max(cfg.frames, 1)
        # Objects, in depth order (later ones occlude earlier ones).
        objs = []
        for k in range(cfg.objects):
            others = k == 0 and cfg.objects >= 3
            cls = int(rng.choice(thing_classes))
            r = rng.uniform(0.05, 0.16) * h
            objs.append(
                _Object(
                    cls=-1 if others else cls,
                    apparent=cls,
                    x0=rng.uniform(0.1, 0.9) * w,
                    y0=rng.uniform(0.25, 0.85) * h,
                    vx=rng.uniform(-0.006, 0.006) * w,
                    vy=rng.uniform(-0.003, 0.003) * h,
                    rx=r * rng.uniform(0.7, 1.8),
                    ry=r * rng.uniform(0.7, 1.6),
                    wobble=rng.uniform(0.0, 0.08),
                    phase=rng.uniform(0, 2 * np.pi),
                    box=bool(rng.random() < 0.35),
                )
            )
        self.objects = objs
        self.void_box = None
        if rng.random() < 0.5:  # a burnt-in logo: void in the ground truth
            bw, bh = int(0.08 * w), int(0.05 * h)
            self.void_box = (int(0.03 * w), int(0.03 * h), bw, bh)
        # Base-model error processes.
        nregions = nb + len(self.blocks) + len(objs)
        self.confuse_rate = rng.uniform(0.0, 0.35, size=nregions)
        self.confuse_state = rng.random(nregions) < self.confuse_rate
        self.blobs: list[tuple[int, float, float, float, int]] = []  # (cls, x, y, r, frames left)
        self.slow_prev = [_smooth_field(rng, h, w, 4, 2.0) for _ in range(2)]
        self.slow_next = [_smooth_field(rng, h, w, 4, 2.0) for _ in range(2)]
        ys, xs = np.mgrid[0:h, 0:w]
        self.ys = ys.astype(np.float32)
        self.xs = xs.astype(np.float32)
        tex_rng = np.random.default_rng([cfg.seed, index, 7])
        self.noise = tex_rng.normal(0, 6.0, size=(4, h, w)).astype(np.float32)

    # ------------------------------------------------------------------ scene
    def regions(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(region id map, region -> class table (-1 others), object instance map) at frame t."""
        h, w = self.cfg.height, self.cfg.width
        cam_x, cam_y = self.pan * t
        wx, wy = self.xs + cam_x, self.ys + cam_y
        nb = len(self.band_cls)
        region = np.zeros((h, w), np.int32)
        for i in range(nb - 1):
            edge = self.band_y[i] + self.band_amp[i] * np.sin(self.band_freq[i] * wx[0] + self.band_phase[i])
            region[wy >= edge[None, :]] = i + 1
        for j, (_, bx, by, bw, bh) in enumerate(self.blocks):
            inside = (wx >= bx) & (wx < bx + bw) & (wy >= by) & (wy < by + bh)
            region[inside] = nb + j
        instance = np.zeros((h, w), np.uint8)
        base = nb + len(self.blocks)
        for k, o in enumerate(self.objects):
            cx = o.x0 + o.vx * t
            cy = o.y0 + o.vy * t
            s = 1.0 + o.wobble * np.sin(0.3 * t + o.phase)
            dx = (self.xs - cx) / (o.rx * s)
            dy = (self.ys - cy) / (o.ry / s)
            inside = (
                np.maximum(np.abs(dx), np.abs(dy)) ** 4 + 0.3 * (dx**2 + dy**2) < 1.0
                if o.box
                else dx**2 + dy**2 < 1.0
            )
            region[inside] = base + k
            instance[inside] = k + 1
        table = np.concatenate(
            [self.band_cls, [b[0] for b in self.blocks], [o.cls for o in self.objects]]
        ).astype(np.int32)
        return region, table, instance

    def image(self, t: int, region: np.ndarray, table: np.ndarray) -> np.ndarray:
        apparent = self.apparent_table(table)
        cls = apparent[region]
        cam_x, cam_y = self.pan * t
        # Textures: class-specific stripes in world coordinates (move with the camera).
        freq = 0.05 + 0.02 * (cls % 5)
        angle = (cls * 0.7) % np.pi
        stripes = np.sin(freq * ((self.xs + cam_x) * np.cos(angle) + (self.ys + cam_y) * np.sin(angle)))
        shade = 0.8 + 0.2 * stripes
        img = self.colors[cls] * shade[..., None] + self.noise[t % 4][..., None]
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def apparent_table(self, table: np.ndarray) -> np.ndarray:
        out = table.copy()
        base = len(self.band_cls) + len(self.blocks)
        for k, o in enumerate(self.objects):
            out[base + k] = o.apparent
        return out

    def ground_truth(self, region: np.ndarray, table: np.ndarray) -> np.ndarray:
        raw = (table + 1).astype(np.uint8)[region]  # others (-1) -> raw 0
        if self.void_box is not None:
            x, y, bw, bh = self.void_box
            raw[y : y + bh, x : x + bw] = IGNORE
        return raw

    # ------------------------------------------------------------ base model
    def prediction(self, t: int, region: np.ndarray, table: np.ndarray) -> np.ndarray:
        rng, cfg = self.rng, self.cfg
        h, w = cfg.height, cfg.width
        # Boundary jitter: slow field interpolated between keyframes 8 frames apart + fast part.
        if t % 8 == 0 and t > 0:
            self.slow_prev = self.slow_next
            self.slow_next = [_smooth_field(rng, h, w, 4, 2.0) for _ in range(2)]
        a = (t % 8) / 8.0
        fast = [_smooth_field(rng, h, w, 6, 1.0) for _ in range(2)]
        dy = (1 - a) * self.slow_prev[0] + a * self.slow_next[0] + fast[0]
        dx = (1 - a) * self.slow_prev[1] + a * self.slow_next[1] + fast[1]
        sy = np.clip(np.rint(self.ys + dy), 0, h - 1).astype(np.int64)
        sx = np.clip(np.rint(self.xs + dx), 0, w - 1).astype(np.int64)
        warped = region[sy, sx]
        # Confusions with the similar class on part of a region, toggling in runs of frames.
        flip = rng.random(len(self.confuse_state)) < 0.03
        self.confuse_state = np.where(flip, rng.random(len(flip)) < self.confuse_rate, self.confuse_state)
        apparent = self.apparent_table(table)
        pred = apparent[warped]
        if self.confuse_state.any():
            part = _smooth_field(rng, h, w, 3, 1.0) > 0.0
            confused = self.confuse_state[warped] & part
            similar = np.minimum(pred ^ 1, cfg.classes - 1)
            pred = np.where(confused, similar, pred)
        # Spurious blobs that live 1-3 frames.
        for _ in range(int(rng.poisson(2.0))):
            self.blobs.append(
                (
                    int(rng.integers(0, cfg.classes)),
                    float(rng.uniform(0, w)),
                    float(rng.uniform(0, h)),
                    float(rng.uniform(0.01, 0.035) * h),
                    int(rng.integers(1, 4)),
                )
            )
        alive = []
        for c, bx, by, br, left in self.blobs:
            pred[(self.xs - bx) ** 2 + (self.ys - by) ** 2 < br * br] = c
            if left > 1:
                alive.append((c, bx, by, br, left - 1))
        self.blobs = alive
        return pred.astype(np.uint8)


def video_names(cfg: SynthConfig) -> tuple[list[str], list[str]]:
    """(val names, train names). Indices 0..videos-1 are val, then the train videos."""
    names = [f"{i:04d}_synth{cfg.seed}" for i in range(cfg.videos + cfg.train_videos)]
    return names[: cfg.videos], names[cfg.videos :]


def _save_jpeg(path: Path, img: np.ndarray) -> None:
    im = Image.fromarray(img)
    atomic_write(path, lambda tmp: im.save(tmp, format="JPEG", quality=90))


def synthesize(out: Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the dataset under `out` (VSPW layout + pred_base/). Returns `out`."""
    out = Path(out)
    val, train = video_names(cfg)
    total = (cfg.videos + cfg.train_videos) * cfg.frames
    bar = tqdm(total=total, desc="synth", unit="frame", disable=not progress)
    for index, name in enumerate(val + train):
        video = _Video(cfg, index)
        start = int(video.rng.integers(0, 900))  # VSPW names are absolute frame indices
        root = out / "data" / name
        for t in range(cfg.frames):
            stem = f"{start + t:08d}"
            region, table, instance = video.regions(t)
            _save_jpeg(root / "origin" / f"{stem}.jpg", video.image(t, region, table))
            write_label_png(root / "mask" / f"{stem}.png", video.ground_truth(region, table))
            write_label_png(root / "instance" / f"{stem}.png", instance, palette=False)
            write_label_png(out / "pred_base" / name / f"{stem}.png", video.prediction(t, region, table))
            bar.update()
    bar.close()
    for split, names in (("val", val), ("train", train), ("test", [])):
        atomic_write(out / f"{split}.txt", lambda tmp, n=names: tmp.write_text("".join(f"{v}\n" for v in n)))
    return out
