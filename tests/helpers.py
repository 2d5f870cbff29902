"""Test data builders: tiny VSPW-layout datasets written from in-memory arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam2vss.sinks import write_label_png


def write_dataset(
    root: Path, videos: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], split: str = "val"
) -> tuple[Path, Path]:
    """Write raw GT masks and predictions; returns (dataset root, prediction folder)."""
    pred_dir = root / "pred"
    for name, (raws, preds) in videos.items():
        for t, (raw, pred) in enumerate(zip(raws, preds, strict=True)):
            stem = f"{100 + t:08d}"  # absolute frame indices, like VSPW
            write_label_png(root / "data" / name / "mask" / f"{stem}.png", raw)
            write_label_png(pred_dir / name / f"{stem}.png", pred)
    (root / f"{split}.txt").write_text("".join(f"{v}\n" for v in videos))
    return root, pred_dir


def random_video(
    rng: np.random.Generator, frames: int, h: int, w: int, classes: int, p_change: float = 0.1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Blocky label maps that change a little each frame, with 'others' (0) and void (255)."""

    def blocky() -> np.ndarray:
        small = rng.integers(0, classes + 1, size=(h // 4 + 1, w // 4 + 1))
        return np.kron(small, np.ones((4, 4), np.int64))[:h, :w]

    raw = blocky().astype(np.uint8)
    raw[rng.random((h, w)) < 0.03] = 255
    pred = rng.integers(0, classes, size=(h, w)).astype(np.uint8)
    raws, preds = [], []
    for _ in range(frames):
        flip = rng.random((h, w)) < p_change
        raw = np.where(flip, blocky(), raw).astype(np.uint8)
        pflip = rng.random((h, w)) < p_change
        pred = np.where(pflip, np.minimum(raw, classes - 1), pred).astype(np.uint8)
        raws.append(raw.copy())
        preds.append(pred.copy())
    return raws, preds


def refine_in_memory(root: Path, video: str, cfg, model):
    """`sam2vss.Refiner.refine_video` on a synthetic set's video read into memory (frames, base
    labels, instance ids from their folders) against its folder run: (labels, the Refiner)."""
    from PIL import Image

    from sam2vss.api import Refiner

    def read(folder: Path) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())])

    folder = root / "data" / video
    refiner = Refiner(cfg, model)
    labels = refiner.refine_video(
        read(folder / "origin"), read(root / "pred_base" / video), read(folder / "instance")
    )
    return labels, refiner
