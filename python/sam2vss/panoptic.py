"""Video-panoptic predictions in, semantic label maps out (METRICS.md 5.3).

The format the VIPSeg evaluation uses and DVIS / DVIS++ / CAVIS write (their VPSEvaluator): a
folder `DIR/pan_pred/<video>/<frame>.png` of RGB PNGs whose colour encodes a segment id
(id = R + 256 G + 256^2 B) and `DIR/pred.json`,
`{"annotations": [{"video_id", "annotations": [{"file_name", "segments_info": [{"id",
"category_id", ...}]}]}]}`, with `category_id` already the dataset's class id 0..C-1.

The decision a reader must know: a pixel no segment claims would be 255 (void) in the reference
conversion, and sam2vss refuses void in predictions and base labels (labels.bad_label_ids), so
such pixels take the class of the nearest claimed pixel (Euclidean, ties to the first in row-major
order, scipy's distance transform). A frame that no segment claims at all is an error, as is a
category id outside 0..C-1, a segment id that no pixel has, or a frame missing from the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam2vss.data import DataError, list_frames
from sam2vss.sinks import write_label_png


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 segment ids (panopticapi's rgb2id)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_segments(json_path: Path) -> dict[str, dict[str, list[dict]]]:
    """pred.json -> {video: {frame stem: segments_info}}."""
    try:
        data = json.loads(Path(json_path).read_text())
        videos = {}
        for video in data["annotations"]:
            frames = {Path(f["file_name"]).stem: f["segments_info"] for f in video["annotations"]}
            videos[str(video["video_id"])] = frames
    except FileNotFoundError:
        raise DataError(
            f"{json_path}: not found; a VPS prediction folder holds pred.json beside pan_pred/"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(
            f"{json_path}: not a VPS pred.json ({type(e).__name__}: {e}); expected"
            ' {"annotations": [{"video_id", "annotations": [{"file_name", "segments_info"}]}]}'
        ) from None
    return videos


def vps_to_semantic(path: Path, segments: list[dict], num_classes: int) -> np.ndarray:
    """One frame's (H, W) uint8 class ids: each segment's pixels take its category_id, pixels no
    segment claims the nearest claimed pixel's class (module docstring)."""
    from scipy import ndimage

    with Image.open(path) as im:
        if im.mode != "RGB":
            raise DataError(f"{path}: a VPS prediction is an RGB PNG of segment ids, got mode {im.mode}")
        pan = rgb2id(np.asarray(im))
    sem = np.full(pan.shape, -1, np.int64)
    for seg in segments:
        cat = int(seg["category_id"])
        if not 0 <= cat < num_classes:
            raise DataError(
                f"{path}: segment {seg['id']} has category_id {cat}, not a class in 0..{num_classes - 1};"
                " map the model's categories to the dataset's ids first"
            )
        hit = pan == int(seg["id"])
        if not hit.any():
            raise DataError(f"{path}: segment {seg['id']} of pred.json has no pixel in this PNG")
        sem[hit] = cat
    unclaimed = sem < 0
    if unclaimed.all():
        raise DataError(f"{path}: no segment of pred.json claims any pixel; the frame has no classes")
    if unclaimed.any():
        index = ndimage.distance_transform_edt(unclaimed, return_distances=False, return_indices=True)
        sem = sem[tuple(index)]
    return sem.astype(np.uint8)


def convert_vps(pred_dir: Path, out: Path, num_classes: int, progress: bool = False) -> int:
    """Write DIR's VPS predictions as semantic label PNGs OUT/<video>/<frame>.png (atomically);
    returns the frame count."""
    pred_dir = Path(pred_dir)
    pan_dir = pred_dir / "pan_pred"
    if not pan_dir.is_dir():
        raise DataError(
            f"{pred_dir}: no pan_pred/ folder; --pred-format vps reads DIR/pan_pred and DIR/pred.json"
        )
    videos = read_segments(pred_dir / "pred.json")
    folders = sorted(p for p in pan_dir.iterdir() if p.is_dir())
    frames = [(v, name) for v in folders for name in list_frames(v, (".png",), "VPS prediction folder")]
    for video, name in tqdm(frames, desc="vps -> semantic", unit="frame", disable=not progress):
        stem = Path(name).stem
        segments = videos.get(video.name, {}).get(stem)
        if segments is None:
            raise DataError(
                f"{video / name}: no entry for video {video.name} frame {stem} in {pred_dir / 'pred.json'}"
            )
        write_label_png(
            Path(out) / video.name / f"{stem}.png", vps_to_semantic(video / name, segments, num_classes)
        )
    return len(frames)
