"""Output writers: label PNGs in the prediction-folder layout, 16-bit masklet-id PNGs, JSON, and
atomic file replacement.

Every file is written under a temporary name in its final folder and renamed when complete, so
an interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sam2vss.labels import VSPW_PALETTE

_PALETTE_BYTES = VSPW_PALETTE.tobytes()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode_label_png(labels: np.ndarray, palette: bool = True) -> Image.Image:
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"label maps must be (H, W) uint8, got {labels.dtype} {labels.shape}")
    h, w = labels.shape
    im = Image.frombytes("P" if palette else "L", (w, h), np.ascontiguousarray(labels).tobytes())
    if palette:
        im.putpalette(_PALETTE_BYTES)
    return im


def write_label_png(path: Path, labels: np.ndarray, palette: bool = True) -> None:
    """(H, W) uint8 class ids -> palette PNG (VSPW palette) or grayscale PNG, atomically."""
    im = encode_label_png(labels, palette)
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def write_id_png(path: Path, ids: np.ndarray) -> None:
    """(H, W) uint16 masklet ids (refine --save-masklets: index + 1, 0 = none) -> a 16-bit
    grayscale PNG (Pillow mode I;16), atomically."""
    if ids.dtype != np.uint16 or ids.ndim != 2:
        raise ValueError(f"{path}: masklet ids must be (H, W) uint16, got {ids.dtype} {ids.shape}")
    h, w = ids.shape
    im = Image.frombytes("I;16", (w, h), np.ascontiguousarray(ids, dtype="<u2").tobytes())
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def write_json(path: Path, obj: object) -> None:
    """JSON with NaN written as null (JSON has no NaN), atomically."""

    def clean(x: object) -> object:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    text = json.dumps(clean(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
