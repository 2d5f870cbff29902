"""`sam2vss viz`: pictures of prediction folders against the ground truth, per video.

OUT/<video>/contact.png: a row per sampled frame, columns frame | each method | GT | one error
map per method after the first; overlay_<method>.png: labels blended over the sampled frames,
with masklet contours where the folder holds <video>/masklets/<frame>.png (16-bit, 0 = none,
k = masklet k-1 of the frame's window); side_by_side.mp4: the contact sheet's row for every
frame, its frame count checked by decoding it back.

The one decision to know: an error map compares a method with the *first* method against the
GT (green: this one fixed the pixel, red: it broke it, grey: both wrong, white: both right,
light yellow: GT void, not evaluated), and `fix_break_counts` is the one place those pixels are
counted; the captions print its numbers and the colours are drawn from the same masks. Void is
the one light yellow in the GT column and the error maps alike: no class colour of the VSPW
palette (VOC colours, then greys) and no other error-map colour.
Everything is validated before the first write, and every file is written atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from sam2vss.data import (
    DataError,
    Dataset,
    check_prediction,
    count_video_frames,
    match_frames,
    read_label_png,
)
from sam2vss.evaluate import plural
from sam2vss.labels import IGNORE, NUM_CLASSES, VSPW_PALETTE
from sam2vss.outdir import Input, check_writable, guard_output
from sam2vss.sinks import atomic_write

FIXED = (0, 200, 0)
BROKEN = (230, 0, 0)
BOTH_WRONG = (160, 160, 160)  # lighter than the fixed / broken pixels the eye should find
BOTH_RIGHT = (255, 255, 255)
VOID = (255, 236, 139)  # light yellow: not a palette colour (those are VOC colours, then greys)
CONTOUR = (255, 255, 255)  # never a blend: no frame pixel and label colour are both white
MIN_TILE_WIDTH = 320  # narrower frames are enlarged (nearest neighbour) so captions fit
CAPTION_H = 22
HEADER_LINE_H = 22
GAP = 4
MAX_VIDEO_WIDTH = 3840  # wider rows are shrunk in the MP4: H.264 levels and players stop near 4K
FPS = 8
ALPHA = 0.5  # label opacity in the overlays


def fix_break_counts(first: np.ndarray, other: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(fixed, broken, both wrong) pixels of `other` against `first`, GT void excluded: fixed =
    first wrong and other right, broken = first right and other wrong."""
    a, b = _right(first, gt), _right(other, gt)
    valid = gt != IGNORE
    return int((~a & b).sum()), int((a & ~b).sum()), int((~a & ~b & valid).sum())


def _right(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return (pred == gt) & (gt != IGNORE)


def error_map(first: np.ndarray, other: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the classes of fix_break_counts in FIXED / BROKEN / BOTH_WRONG,
    BOTH_RIGHT elsewhere and VOID where the GT is void."""
    a, b = _right(first, gt), _right(other, gt)
    rgb = np.empty((*gt.shape, 3), np.uint8)
    rgb[...] = BOTH_RIGHT
    rgb[~a & ~b] = BOTH_WRONG
    rgb[~a & b] = FIXED
    rgb[a & ~b] = BROKEN
    rgb[gt == IGNORE] = VOID
    return rgb


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids in the VSPW palette (the one predictions are written with); void in VOID, the
    error maps' colour for it."""
    rgb = VSPW_PALETTE[labels]
    rgb[labels == IGNORE] = VOID
    return rgb


def masklet_edges(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels beside a pixel of another masklet (or of none), both sides marked."""
    edge = np.zeros(ids.shape, bool)
    dx, dy = ids[:, 1:] != ids[:, :-1], ids[1:] != ids[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, masklets: np.ndarray | None) -> np.ndarray:
    """Labels blended over the frame, masklet contours in CONTOUR on top."""
    out = (ALPHA * colorize(labels) + (1 - ALPHA) * image).round().astype(np.uint8)
    if masklets is not None:
        out[masklet_edges(masklets)] = CONTOUR
    return out


def sample_frames(count: int, n: int) -> list[int]:
    """`n` frame indices spread evenly over `count` frames, first and last included."""
    return sorted({round(x) for x in np.linspace(0, count - 1, min(n, count))})


def scale_for(width: int) -> int:
    return max(1, math.ceil(MIN_TILE_WIDTH / width))


def _enlarge(a: np.ndarray, k: int) -> np.ndarray:
    """(H, W[, 3]) -> (kH, kW[, 3]), nearest neighbour: labels keep their exact ids."""
    return a if k == 1 else a.repeat(k, axis=0).repeat(k, axis=1)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no font file to find


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> ImageFont.ImageFont:
    """The largest font from 16 down to 9 px that fits `text` in `width` (9 px otherwise)."""
    for size in range(16, 8, -1):
        font = _font(size)
        if draw.textlength(text, font=font) <= width - 6:
            return font
    return font


# ------------------------------------------------------------------ inputs, validated up front
@dataclass(frozen=True)
class FramePaths:
    name: str  # the GT file's stem
    image: Path
    gt: Path
    preds: tuple[Path, ...]  # one per method


@dataclass
class Frame:
    """One decoded frame: the image at the GT's size, the GT (reduced, void 255) and per method
    its labels and masklet ids (None without a masklets/ file)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    gt: np.ndarray  # (H, W) uint8
    preds: list[np.ndarray]  # (H, W) uint8 each
    masklets: list[np.ndarray | None]  # (H, W) uint16 each


def plan_video(dataset: Dataset, video: str, folders: Sequence[Path]) -> list[FramePaths]:
    """The video's frames with their image, GT and prediction files; names checked (a missing or
    extra prediction frame is an error naming the folder and the first such file)."""
    gt_names = dataset.gt_frames(video)
    preds = [match_frames(gt_names, Path(d) / video, video) for d in folders]
    images = {Path(n).stem: n for n in dataset.image_frames(video)}
    out = []
    for t, g in enumerate(gt_names):
        stem = Path(g).stem
        if stem not in images:
            raise DataError(
                f"{dataset.image_dir(video) / stem}.jpg: the frame of ground-truth {g} is missing;"
                " every GT mask needs its frame (same name, .jpg or .png)"
            )
        image = dataset.image_dir(video) / images[stem]
        paths = tuple(Path(d) / video / p[t] for d, p in zip(folders, preds, strict=True))
        out.append(FramePaths(stem, image, dataset.gt_dir(video) / g, paths))
    return out


def _read_masklets(pred: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    path = pred.parent / "masklets" / pred.name
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            ids = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: cannot decode masklet PNG ({e}); the file is damaged or truncated") from e
    if ids.shape != shape:
        raise DataError(
            f"{path}: masklet ids are {ids.shape[::-1]} (WxH), the labels {shape[::-1]}; masklet PNGs"
            " are single-channel 16-bit at the labels' size (0 = no masklet, k = masklet k-1)"
        )
    return ids


def read_frame(dataset: Dataset, paths: FramePaths) -> Frame:
    gt, _ = dataset.read_gt(paths.gt)
    preds = []
    for path in paths.preds:
        pred = read_label_png(path)
        check_prediction(pred, gt.shape, path, NUM_CLASSES)
        preds.append(pred)
    try:
        with Image.open(paths.image) as im:
            rgb = im.convert("RGB")
    except OSError as e:
        raise DataError(f"{paths.image}: cannot decode the frame ({e}); the file is damaged") from e
    if rgb.size != gt.shape[::-1]:  # pictures only: the counts never read the image
        rgb = rgb.resize(gt.shape[::-1], Image.Resampling.BILINEAR)
    masklets = [_read_masklets(p, gt.shape) for p in paths.preds]
    return Frame(paths.name, np.asarray(rgb), gt, preds, masklets)


# ------------------------------------------------------------------ tiles and sheets
@dataclass(frozen=True)
class Layout:
    """Where each tile of a row of captioned tiles lies: `box(row, col)` is the tile's image area
    in a sheet with `header_h` pixels above its first row (tests locate tiles with it)."""

    tile_w: int
    tile_h: int
    columns: int
    header_h: int = 0

    @property
    def row_h(self) -> int:
        return CAPTION_H + self.tile_h + GAP

    @property
    def width(self) -> int:
        return self.columns * (self.tile_w + GAP) + GAP

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = GAP + col * (self.tile_w + GAP)
        y = self.header_h + row * self.row_h + CAPTION_H
        return x, y, x + self.tile_w, y + self.tile_h


def frame_tiles(frame: Frame, names: Sequence[str]) -> list[tuple[np.ndarray, str]]:
    """(rgb, caption) of each column: frame | methods | GT | error map per method after the first."""
    tiles = [(frame.image, f"frame {frame.name}")]
    tiles += [(colorize(p), n) for n, p in zip(names, frame.preds, strict=True)]
    tiles.append((colorize(frame.gt), "ground truth (void light yellow)"))
    for name, pred in zip(names[1:], frame.preds[1:], strict=True):
        fixed, broken, _ = fix_break_counts(frame.preds[0], pred, frame.gt)
        tiles.append(
            (
                error_map(frame.preds[0], pred, frame.gt),
                f"{name} vs {names[0]}: +{fixed} fixed / -{broken} broken",
            )
        )
    return tiles


def _paste_row(sheet: Image.Image, layout: Layout, row: int, tiles: list[tuple[np.ndarray, str]], k: int):
    draw = ImageDraw.Draw(sheet)
    for col, (rgb, caption) in enumerate(tiles):
        x0, y0, _, _ = layout.box(row, col)
        sheet.paste(Image.fromarray(_enlarge(rgb, k)), (x0, y0))
        draw.text(
            (x0 + 3, y0 - CAPTION_H + 3), caption, fill=(0, 0, 0), font=_fit(draw, caption, layout.tile_w)
        )


def layout_for(frame: Frame, columns: int, header_h: int = 0) -> tuple[Layout, int]:
    """The layout of `columns` tiles of this frame's size, enlarged k times, and k."""
    h, w = frame.gt.shape
    k = scale_for(w)
    return Layout(w * k, h * k, columns, header_h), k


def render_row(frame: Frame, names: Sequence[str]) -> Image.Image:
    """One frame's row of captioned tiles (the MP4's picture)."""
    layout, k = layout_for(frame, 2 * len(names) + 1)
    row = Image.new("RGB", (layout.width, layout.row_h), (255, 255, 255))
    _paste_row(row, layout, 0, frame_tiles(frame, names), k)
    return row


def _summary(frames: Sequence[Frame], m: int) -> str:
    """Pixel accuracy and mean IoU on `frames` only: over the classes in their GT (the demo
    report ranks videos by it) and over the classes in GT or prediction (a class only predicted
    counts as IoU 0, so spurious blobs weigh as much as a missed object)."""
    c = NUM_CLASSES
    conf = np.zeros(c * c, np.int64)
    for f in frames:
        valid = f.gt != IGNORE
        conf += np.bincount(f.gt[valid].astype(np.int64) * c + f.preds[m][valid], minlength=c * c)
    conf = conf.reshape(c, c)
    tp, gt_n, pred_n = np.diag(conf), conf.sum(1), conf.sum(0)
    union = gt_n + pred_n - tp
    present = union > 0
    in_gt = gt_n > 0
    acc = tp.sum() / max(conf.sum(), 1)
    miou = (tp[present] / union[present]).mean() if present.any() else float("nan")
    miou_gt = (tp[in_gt] / union[in_gt]).mean() if in_gt.any() else float("nan")
    return (
        f"pixel accuracy {100 * acc:.2f}%; mIoU {100 * miou_gt:.2f}% over the classes in the GT,"
        f" {100 * miou:.2f}% over the classes in GT or prediction"
    )


LEGEND = (
    (FIXED, "fixed"),
    (BROKEN, "broken"),
    (BOTH_WRONG, "both wrong"),
    (BOTH_RIGHT, "both right"),
    (VOID, "GT void, not counted"),
)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, font) -> None:
    for colour, text in LEGEND:
        draw.rectangle((x, y + 3, x + 13, y + 16), fill=colour, outline=(0, 0, 0))
        draw.text((x + 18, y + 1), text, fill=(0, 0, 0), font=font)
        x += 30 + int(draw.textlength(text, font=font))


def sampled_phrase(shown: int, total: int) -> str:
    """'4 of 24 frames' or 'all 8 frames' (--frames above the video's length shows them all)."""
    return f"all {plural(total, 'frame')}" if shown == total else f"{shown} of {plural(total, 'frame')}"


def contact_sheet(
    video: str, frames: Sequence[Frame], names: Sequence[str], total: int | None = None
) -> tuple[Image.Image, Layout]:
    """The header (video, each method's summary over these frames of `total` (default: these
    are all), the error-map legend with two or more methods) and a row per frame."""
    total = len(frames) if total is None else total
    shown = sampled_phrase(len(frames), total) + ("" if len(frames) == total else ", sampled evenly")
    header = [f"{video}: {shown}; the numbers below are over these frames only"]
    header += [f"{n}: {_summary(frames, m)}" for m, n in enumerate(names)]
    legend_lines = 1 if len(names) > 1 else 0  # no error-map column with one method
    header_h = HEADER_LINE_H * (len(header) + legend_lines) + GAP
    layout, k = layout_for(frames[0], 2 * len(names) + 1, header_h)
    sheet = Image.new("RGB", (layout.width, header_h + len(frames) * layout.row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    for i, line in enumerate(header):
        draw.text((GAP + 2, GAP + i * HEADER_LINE_H), line, fill=(0, 0, 0), font=font)
    if legend_lines:
        legend_y, legend = GAP + len(header) * HEADER_LINE_H, f"error maps, each method against {names[0]}:"
        draw.text((GAP + 2, legend_y + 1), legend, fill=(0, 0, 0), font=font)
        _legend(draw, GAP + 30 + int(draw.textlength(legend, font=font)), legend_y, font)
    for row, frame in enumerate(frames):
        _paste_row(sheet, layout, row, frame_tiles(frame, names), k)
    return sheet, layout


def overlay_sheet(frames: Sequence[Frame], m: int, name: str) -> Image.Image:
    """Method `m`'s labels over each sampled frame, one row each, masklet contours where saved."""
    layout, k = layout_for(frames[0], 1)
    sheet = Image.new("RGB", (layout.width, len(frames) * layout.row_h), (255, 255, 255))
    for row, f in enumerate(frames):
        ids = f.masklets[m]
        # contours found after enlarging: 2 px wide at any scale, not 2k
        rgb = overlay(
            _enlarge(f.image, k), _enlarge(f.preds[m], k), None if ids is None else _enlarge(ids, k)
        )
        saved = "no masklets saved" if ids is None else f"{len(np.unique(ids[ids > 0]))} masklets"
        _paste_row(sheet, layout, row, [(rgb, f"{name}, frame {f.name}: {saved}")], 1)
    return sheet


# ------------------------------------------------------------------ writers
def _save_png(path: Path, im: Image.Image) -> None:
    # zlib level 1: 0.18 s instead of the default's 0.26 s on a 2164x1156 sheet, 3% larger
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG", compress_level=1))


def _even(im: Image.Image) -> Image.Image:
    """yuv420p needs even sides; a wider row than MAX_VIDEO_WIDTH is shrunk to fit."""
    if im.width > MAX_VIDEO_WIDTH:
        s = MAX_VIDEO_WIDTH / im.width
        im = im.resize((MAX_VIDEO_WIDTH, round(im.height * s)), Image.Resampling.BOX)
    w, h = im.width + im.width % 2, im.height + im.height % 2
    if (w, h) == im.size:
        return im
    out = Image.new("RGB", (w, h), (255, 255, 255))
    out.paste(im, (0, 0))
    return out


def write_mp4(path: Path, pictures: Iterable[Image.Image], fps: int = FPS, codec: str | None = None) -> int:
    """Encode `pictures` (all one size) as H.264 (`codec` None: mpeg4 where FFmpeg lacks libx264), yuv420p,
    through PyAV, the core dependency (torchcodec 0.17 has an encoder too, but is an optional
    extra). The file is decoded back before it is renamed into place: a frame count other than
    the pictures' is an error and leaves no file. Returns the frame count."""
    import av

    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = None
            for im in pictures:
                im = _even(im)
                if stream is None:
                    stream = container.add_stream(codec, rate=fps)
                    stream.width, stream.height, stream.pix_fmt = im.width, im.height, "yuv420p"
                    # the demo's 24 rows of 2164x266 take veryfast 0.85 s / 1.1 MB, superfast
                    # 0.43 s / 1.6 MB, ultrafast 0.22 s / 2.1 MB; mpeg4's default 200 kb/s blurs
                    # one-pixel error lines away
                    if codec == "libx264":
                        stream.options = {"crf": "18", "preset": "superfast"}
                    else:
                        stream.bit_rate = 8_000_000
                for packet in stream.encode(av.VideoFrame.from_image(im)):
                    container.mux(packet)
                written += 1
            if stream is not None:
                container.mux(stream.encode())
        decoded = count_video_frames(tmp)
        if decoded != written:
            raise DataError(
                f"{path}: encoded {written} frames but the file decodes to {decoded}; the {codec}"
                f" encoder of PyAV {av.__version__} dropped frames: rerun, or report it with --debug"
            )

    atomic_write(path, write)
    return written


def _file_word(name: str) -> str:
    """A method name usable in a file name (an unnamed --pred is named by its path)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "method"


@dataclass(frozen=True)
class Pictures:
    """What `visualize` wrote for one video."""

    video: str
    contact: Path
    overlays: tuple[Path, ...]
    mp4: Path
    frames: int  # in the MP4 (the video's GT frames)
    sampled: int  # contact-sheet rows: --frames, or every frame of a shorter video


def _rows(dataset: Dataset, plan: list[FramePaths], names: Sequence[str], first: Frame):
    """Every frame's row for the MP4, which needs one picture size: a frame of another size than
    the video's first is an error naming its GT file."""
    for paths in plan:
        frame = read_frame(dataset, paths)
        if frame.gt.shape != first.gt.shape:
            (h, w), (h0, w0) = frame.gt.shape, first.gt.shape
            raise DataError(
                f"{paths.gt}: ground truth is {w}x{h} (WxH), frame {first.name} of the same video is"
                f" {w0}x{h0}; a video's frames must share one size for its side-by-side MP4"
            )
        yield render_row(frame, names)


def visualize_video(
    dataset: Dataset, video: str, plan: list[FramePaths], names: Sequence[str], out: Path, samples: int
) -> Pictures:
    folder = Path(out) / video
    picked = [read_frame(dataset, plan[i]) for i in sample_frames(len(plan), samples)]
    sheet, _ = contact_sheet(video, picked, names, len(plan))
    _save_png(folder / "contact.png", sheet)
    overlays = []
    for m, name in enumerate(names):
        overlays.append(folder / f"overlay_{_file_word(name)}.png")
        _save_png(overlays[-1], overlay_sheet(picked, m, name))
    mp4 = folder / "side_by_side.mp4"
    n = write_mp4(mp4, _rows(dataset, plan, names, picked[0]))
    return Pictures(video, folder / "contact.png", tuple(overlays), mp4, n, len(picked))


def describe(written: Sequence[Pictures], frames: int) -> str:
    """What `viz` wrote, in a line: videos, contact-sheet rows (saying where a video has fewer
    frames than --frames, which then shows them all) and the MP4s' frames."""
    short = [p for p in written if p.sampled < frames]
    if len(written) == 1:
        rows = f"contact sheet of {sampled_phrase(written[0].sampled, written[0].frames)}"
    else:
        rows = f"contact sheets of {frames} sampled frames each"
        if short:
            rows += f", all frames of the {plural(len(short), 'video')} with fewer (e.g. {short[0].video})"
    if short:
        rows += f" (--frames {frames})"
    mp4 = plural(sum(p.frames for p in written), "frame")
    mp4s = "MP4" if len(written) == 1 else "MP4s"
    return f"pictures of {plural(len(written), 'video')}: {rows}; {mp4} in the side-by-side {mp4s}"


def visualize(
    dataset: Dataset,
    methods: Sequence[tuple[str, Path]],
    out: Path,
    split: str = "val",
    videos: Sequence[str] | None = None,
    frames: int = 4,
    progress: bool = True,
) -> list[Pictures]:
    """Pictures of `methods` ((name, prediction folder), the first is what the error maps compare
    against) for `videos` of `split` (all by default), under OUT/<video>/. Every input is checked
    before the first write: the folders, --out (never inside an input), video names, each video's
    frame names."""
    if frames < 1:
        raise ValueError(f"--frames {frames}: must be >= 1 (rows of the contact sheet)")
    for name, folder in methods:
        if not Path(folder).is_dir():
            raise DataError(
                f"--pred {name}={folder}: no such folder; pass a prediction folder, DIR/<video>/<frame>.png"
            )
    protect = [Input("the --data root", dataset.root, tree=False)]
    protect += [Input(f"the {d.name}/ folder of --data", d) for d in dataset.input_dirs()]
    protect += [Input(f"the --pred {name} folder", d) for name, d in methods]
    guard_output(out, protect, command="viz", suggestion="viz")
    check_writable(out, "--out")
    split_videos = dataset.videos(split)
    chosen = list(videos) if videos else split_videos
    for v in chosen:
        if v not in split_videos:
            raise DataError(
                f"--video {v}: not a video of the {split} split of {dataset.root} ({len(split_videos)}"
                f" videos, e.g. {split_videos[0]}); pass a name from {split}.txt, or --split"
            )
    folders = [Path(d) for _, d in methods]
    plans = {v: plan_video(dataset, v, folders) for v in chosen}
    names = [n for n, _ in methods]
    bar = tqdm(chosen, desc="viz", unit="video", disable=not progress)
    return [visualize_video(dataset, v, plans[v], names, out, frames) for v in bar]
