"""Dataset layouts and label folders: VSPW, VIPSeg, prediction folders, video + label folder.

Every reader here validates at the boundary and raises `DataError` naming the file or folder,
what was expected and how to fix it. Frame order is always the sorted file-name order (VSPW
names are 8-digit absolute frame indices, so lexicographic order is numeric order); names that
start with '.' are not frames (the official VC script counts them; we do not, METRICS.md 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2vss.labels import IGNORE, NUM_CLASSES, bad_label_ids, reduce_vspw, vipseg_to_semantic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)


class DataError(ValueError):
    """Bad input data; the message names the file, the problem and the fix."""


def list_frames(folder: Path, suffixes: Sequence[str] = LABEL_SUFFIXES, what: str = "") -> list[str]:
    """Sorted file names in `folder` with one of `suffixes`, dot-files excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what or 'folder'} {folder} does not exist or is not a folder")
    names = sorted(
        p.name for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in suffixes
    )
    if not names:
        raise DataError(
            f"{what or 'folder'} {folder} holds no {'/'.join(suffixes)} files; expected one per frame"
        )
    return names


def read_split(path: Path) -> list[str]:
    """Video names of a split file, one per line.

    Lines are stripped (the reference scripts cut `line[:-1]` and lose a character when the file
    has no final newline; METRICS.md 3 corrections); blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split file {path} not found; a VSPW/VIPSeg root holds train.txt, val.txt and test.txt"
            " with one video name per line (pass --split to choose another)"
        )
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"split file {path} lists no videos")
    return names


def _check_mode(im: Image.Image, path: Path) -> None:
    if im.mode not in ("P", "L"):
        raise DataError(
            f"{path}: label PNG has mode {im.mode!r}; expected a single-channel palette (P)"
            " or grayscale (L) PNG of class ids (convert RGB color maps to ids first)"
        )


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as (H, W) uint8 indices; palette ('P') and grayscale ('L') both accepted."""
    try:
        with Image.open(path) as im:
            _check_mode(im, path)
            return np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot decode PNG ({e}); the file is damaged or truncated") from e


def read_panomask_png(path: Path) -> np.ndarray:
    """A VIPSeg panomask (16-bit single-channel PNG) as an int32 array."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I", "L", "P"):
                raise DataError(
                    f"{path}: panomask has mode {im.mode!r}; expected a single-channel 16-bit PNG"
                    " from VIPSeg panomasks/ (RGB panomasksRGB are not supported: use panomasks)"
                )
            return np.asarray(im).astype(np.int32)
    except FileNotFoundError:
        raise DataError(f"{path}: panomask file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot decode PNG ({e}); the file is damaged or truncated") from e


@dataclass(frozen=True)
class Dataset:
    """A dataset root in VSPW or VIPSeg layout (METRICS.md 1.1 and 5.1)."""

    root: Path
    layout: str  # "vspw" | "vipseg"

    def videos(self, split: str) -> list[str]:
        return read_split(self.root / f"{split}.txt")

    def image_dir(self, video: str) -> Path:
        if self.layout == "vspw":
            return self.root / "data" / video / "origin"
        imgs = self.root / "imgs" / video
        return imgs if imgs.is_dir() else self.root / "images" / video

    def gt_dir(self, video: str) -> Path:
        if self.layout == "vspw":
            return self.root / "data" / video / "mask"
        return self.root / "panomasks" / video

    def input_dirs(self) -> list[Path]:
        """The folders holding the dataset's frames and labels (refine's output guard)."""
        names = ("data",) if self.layout == "vspw" else ("imgs", "images", "panomasks")
        return [self.root / n for n in names if (self.root / n).is_dir()]

    def instance_dir(self, video: str) -> Path:
        """Per-object instance ids (our synthetic sets; VIPSeg things are in the panomasks)."""
        return self.root / "data" / video / "instance"

    def gt_frames(self, video: str) -> list[str]:
        return list_frames(self.gt_dir(video), LABEL_SUFFIXES, f"ground-truth folder of {video}")

    def image_frames(self, video: str) -> list[str]:
        return list_frames(self.image_dir(video), IMAGE_SUFFIXES, f"frame folder of {video}")

    def read_gt(self, path: Path, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
        """(reduced, raw) ground truth of one frame, validated by the label policy (void allowed):
        both evaluators read GT here, so they agree or both refuse. For VIPSeg both are the
        semantic map."""
        if self.layout == "vspw":
            raw = read_label_png(path)
            gt = reduce_vspw(raw)
        else:
            try:
                gt = raw = vipseg_to_semantic(read_panomask_png(path))
            except ValueError as e:
                raise DataError(f"{path}: {e}") from e
        bad = bad_label_ids(gt, num_classes, void_ok=True)
        if bad is not None:
            value, pixels, x, y = bad
            found = f"raw id {raw[y, x]}" if self.layout == "vspw" else f"class {value}"
            expected = (
                f"VSPW raw ids are 0 (others), 1..{num_classes} (classes) and 255 (void)"
                if self.layout == "vspw"
                else f"classes are 0..{num_classes - 1} and 255 (void)"
            )
            raise DataError(
                f"{path}: ground-truth {found} on {pixels} pixels (first at x={x}, y={y});"
                f" {expected}: check the file, or --num-classes"
            )
        return gt, raw


def open_dataset(root: Path, layout: str = "auto") -> Dataset:
    """Open a dataset root; `layout="auto"` detects VSPW (data/) or VIPSeg (panomasks/)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; pass a VSPW or VIPSeg dataset root")
    if layout == "auto":
        if (root / "data").is_dir():
            layout = "vspw"
        elif (root / "panomasks").is_dir():
            layout = "vipseg"
        else:
            raise DataError(
                f"dataset root {root} has neither data/ (VSPW layout: data/<video>/origin,"
                " data/<video>/mask) nor panomasks/ (VIPSeg layout); is --data the dataset root?"
            )
    if layout not in ("vspw", "vipseg"):
        raise DataError(f"unknown dataset layout {layout!r}; expected auto, vspw or vipseg")
    return Dataset(root, layout)


def match_frames(gt_names: list[str], pred_dir: Path, video: str, against: str = "ground truth") -> list[str]:
    """The prediction file names for `gt_names`: same stems, `.png`; errors name the gap.
    `against` names what `gt_names` are: the ground-truth masks (eval) or the frames (refine)."""
    pred_names = list_frames(pred_dir, LABEL_SUFFIXES, f"prediction folder of {video}")
    want = [Path(n).stem + ".png" for n in gt_names]
    if pred_names != want:
        missing = sorted(set(want) - set(pred_names))
        extra = sorted(set(pred_names) - set(want))
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} (first: {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} not in the {against} (first: {extra[0]})")
        raise DataError(
            f"prediction folder {pred_dir} has {len(pred_names)} frames, the {against} of"
            f" {video} has {len(gt_names)}: {', '.join(detail)}; predictions must be named like"
            f" the {against} files (same name, .png), one PNG per frame"
        )
    return want


def check_prediction(pred: np.ndarray, gt_shape: tuple[int, ...], path: Path, num_classes: int) -> None:
    """Predictions must match the GT size and hold class ids 0..C-1 (METRICS.md 2.2 "Danger")."""
    if pred.shape != gt_shape:
        raise DataError(
            f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH), ground truth is"
            f" {gt_shape[1]}x{gt_shape[0]}; predictions must be at the ground-truth resolution"
        )
    _check_ids(pred, path, num_classes, "predicted label", "fill void/255 before evaluating")


def _check_ids(labels: np.ndarray, path: Path, num_classes: int, what: str, fill: str) -> None:
    """The label policy (labels.bad_label_ids, void refused) as an error naming the file."""
    bad = bad_label_ids(labels, num_classes, void_ok=False)
    if bad is None:
        return
    value, pixels, x, y = bad
    kind = " (void)" if value == IGNORE else ""
    raise DataError(
        f"{path}: {what} {value}{kind} on {pixels} pixels (first at x={x}, y={y}) is outside"
        f" 0..{num_classes - 1}; every pixel needs a class id ({fill}, or check --num-classes)"
    )


class BaseLabels:
    """A video's base labels S_t for `refine`, each validated as it is read, like `eval`
    validates predictions: mode L or P, one size for all of the video's labels (outputs are
    written at the base labels' resolution, DESIGN.md) and ids by the label policy (void
    refused). `check_headers` runs the mode and size checks on every file's header, before any
    compute; the ids are checked when a label is decoded for its window."""

    def __init__(self, folder: Path, num_classes: int):
        self.folder, self.num_classes = Path(folder), num_classes
        self.first: tuple[str, tuple[int, int]] | None = None  # (name, (h, w)) of the first label

    def _check_size(self, name: str, hw: tuple[int, int]) -> None:
        if self.first is None:
            self.first = (name, hw)
        elif hw != self.first[1]:
            (h0, w0), (h, w) = self.first[1], hw
            raise DataError(
                f"{self.folder / name}: base label is {w}x{h} (WxH), {self.first[0]} of the same"
                f" video is {w0}x{h0}; a video's labels must all have one size (outputs are written"
                " at the base labels' resolution): resize it with nearest-neighbour sampling"
            )

    def check_headers(self, names: Sequence[str]) -> None:
        for name in names:
            path = self.folder / name
            try:
                with Image.open(path) as im:  # lazy: reads the header, decodes nothing
                    _check_mode(im, path)
                    self._check_size(name, (im.height, im.width))
            except FileNotFoundError:
                raise DataError(f"{path}: label file not found") from None
            except OSError as e:
                raise DataError(f"{path}: cannot read PNG ({e}); the file is damaged or truncated") from e

    def __call__(self, name: str) -> np.ndarray:
        path = self.folder / name
        labels = read_label_png(path)
        self._check_size(name, labels.shape)
        _check_ids(labels, path, self.num_classes, "base label", "fill void/255 with a class first")
        return labels


@dataclass(frozen=True)
class VideoWithLabels:
    """A plain video file plus a folder of per-frame label PNGs (one per decoded frame)."""

    video: Path
    labels: Path
    frames: tuple[str, ...]  # label file names, sorted

    @property
    def name(self) -> str:
        return self.video.stem


def count_video_frames(path: Path) -> int:
    """Exact decoded frame count (container metadata is often wrong for VFR and edited files)."""
    import av  # PyAV bundles FFmpeg; the fast decoders live in sources.py

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot decode video ({e}); the file is damaged or not a video") from e


def open_video_with_labels(video: Path, labels: Path) -> VideoWithLabels:
    """Pair a video with its label folder; the frame counts must agree."""
    video, labels = Path(video), Path(labels)
    if not video.is_file():
        raise DataError(f"video file {video} not found")
    names = list_frames(labels, LABEL_SUFFIXES, f"label folder for {video.name}")
    n = count_video_frames(video)
    if n != len(names):
        raise DataError(
            f"{video} decodes to {n} frames but label folder {labels} holds {len(names)} PNGs;"
            " there must be one label PNG per decoded frame, in sorted name order"
        )
    return VideoWithLabels(video, labels, tuple(names))


__all__ = [
    "BaseLabels",
    "DataError",
    "Dataset",
    "VideoWithLabels",
    "check_prediction",
    "count_video_frames",
    "list_frames",
    "match_frames",
    "open_dataset",
    "open_video_with_labels",
    "read_label_png",
    "read_panomask_png",
    "read_split",
]
