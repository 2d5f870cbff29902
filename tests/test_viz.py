"""`sam2vss viz`: the fixed / broken counts against a per-pixel brute force, the error-map tile's
colours against those counts, one void colour (no class's) in the GT and error tiles, the legend
naming every error-map colour and only with an error map, masklet contours only where masklets
were saved, the MP4's frame count decoded back with PyAV, the printed summary, and the refusals
(one line, nothing written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sam2vss.cli import main
from sam2vss.config import SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import plural
from sam2vss.labels import IGNORE, NUM_CLASSES, VSPW_PALETTE
from sam2vss.sinks import write_label_png
from sam2vss.synth import synthesize
from sam2vss.viz import (
    BOTH_RIGHT,
    BOTH_WRONG,
    BROKEN,
    CONTOUR,
    FIXED,
    LEGEND,
    VOID,
    Frame,
    Layout,
    Pictures,
    contact_sheet,
    describe,
    error_map,
    fix_break_counts,
    frame_tiles,
    masklet_edges,
    overlay,
    plan_video,
    read_frame,
    sample_frames,
    scale_for,
)

FRAMES, H, W, CLASSES = 5, 48, 64, 24


def _brute(first: np.ndarray, other: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """The counts pixel by pixel, from the definitions: fixed = first wrong and other right,
    broken = first right and other wrong, both wrong; void GT pixels are skipped."""
    fixed = broken = both = 0
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            g = int(gt[y, x])
            if g == IGNORE:
                continue
            a, b = int(first[y, x]) == g, int(other[y, x]) == g
            fixed += (not a) and b
            broken += a and not b
            both += (not a) and not b
    return fixed, broken, both


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (13, 17), (48, 64)])
@pytest.mark.parametrize("void", [0.0, 0.3, 1.0])
def test_fix_break_counts_equal_a_brute_force(shape, void):
    rng = np.random.default_rng([shape[0], shape[1], int(10 * void)])
    gt = rng.integers(0, 4, shape).astype(np.uint8)  # 4 classes: many agreements and disagreements
    gt[rng.random(shape) < void] = IGNORE
    first = rng.integers(0, 4, shape).astype(np.uint8)
    other = np.where(rng.random(shape) < 0.5, gt, rng.integers(0, 4, shape)).astype(np.uint8)
    other[other == IGNORE] = 0
    assert fix_break_counts(first, other, gt) == _brute(first, other, gt)


@pytest.fixture(scope="module")
def viz_set(tmp_path_factory):
    """A 2-video synthetic set, a `refined` folder derived from the base (some pixels set to the
    GT, some base-right pixels broken) and masklets saved for video 0 only."""
    top = tmp_path_factory.mktemp("viz")
    cfg = SynthConfig(videos=2, frames=FRAMES, height=H, width=W, objects=3, train_videos=0, seed=4)
    root = synthesize(top / "ds", cfg, progress=False)
    ds = open_dataset(root)
    refined = top / "refined"
    rng = np.random.default_rng(7)
    for i, video in enumerate(ds.videos("val")):
        for name in ds.gt_frames(video):
            gt, _ = ds.read_gt(ds.gt_dir(video) / name)
            base = read_label_png(root / "pred_base" / video / name)
            fix = (rng.random(gt.shape) < 0.4) & (gt != IGNORE)
            out = np.where(fix, gt, base)
            brk = (rng.random(gt.shape) < 0.05) & (base == gt)
            out = np.where(brk, (base + 1) % CLASSES, out).astype(np.uint8)
            write_label_png(refined / video / name, out)
            if i == 0:
                ids = np.zeros(gt.shape, np.uint16)
                ids[5:20, 4:30], ids[25:40, 35:60] = 1, 2
                (refined / video / "masklets").mkdir(exist_ok=True)
                Image.fromarray(ids).save(refined / video / "masklets" / name)  # 16-bit, mode I;16
    return root, refined


@pytest.fixture(scope="module")
def viz_run(viz_set, tmp_path_factory):
    root, refined = viz_set
    out = tmp_path_factory.mktemp("viz_out") / "pictures"
    args = ["viz", "-q", "--data", str(root), "--pred", f"base={root / 'pred_base'}"]
    assert main([*args, "--pred", f"refined={refined}", "--out", str(out)]) == 0
    return root, refined, out


def _videos(root):
    return open_dataset(root).videos("val")


@pytest.mark.parametrize("index", [0, 1])
def test_viz_writes_pictures_and_an_mp4_of_every_frame(viz_run, index):
    root, _, out = viz_run
    folder = out / _videos(root)[index]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["contact.png", "overlay_base.png", "overlay_refined.png", "side_by_side.mp4"]
    with av.open(str(folder / "side_by_side.mp4")) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(stream))
        assert stream.width % 2 == 0 and stream.height % 2 == 0
    assert decoded == FRAMES


@pytest.mark.parametrize("row", range(len(sample_frames(FRAMES, 4))))
def test_error_tile_colours_are_the_caption_counts(viz_run, row):
    """The error map (last column) of each contact-sheet row holds k*k FIXED / BROKEN pixels per
    fixed / broken pixel (tiles are enlarged k times), the counts the caption prints."""
    root, refined, out = viz_run
    ds, video = open_dataset(root), _videos(root)[0]
    plan = plan_video(ds, video, [root / "pred_base", refined])
    frames = [read_frame(ds, plan[i]) for i in sample_frames(FRAMES, 4)]
    sheet, layout = contact_sheet(video, frames, ["base", "refined"], FRAMES)
    written = np.asarray(Image.open(out / video / "contact.png").convert("RGB"))
    assert np.array_equal(np.asarray(sheet), written)
    x0, y0, x1, y1 = layout.box(row, layout.columns - 1)
    tile = written[y0:y1, x0:x1]
    f = frames[row]
    fixed, broken, _ = fix_break_counts(f.preds[0], f.preds[1], f.gt)
    assert fixed > 0 and broken > 0  # the fixture makes both happen
    k2 = scale_for(W) ** 2
    assert (np.all(tile == FIXED, axis=-1).sum(), np.all(tile == BROKEN, axis=-1).sum()) == (
        fixed * k2,
        broken * k2,
    )
    assert frame_tiles(f, ["base", "refined"])[-1][1] == f"refined vs base: +{fixed} fixed / -{broken} broken"


def _void_frame() -> Frame:
    """A 24x32 frame (enlarged to 320 px) whose GT has a void box and both predictions class 0
    there, the class whose palette colour is black."""
    rng = np.random.default_rng(11)
    gt = rng.integers(0, 4, (24, 32)).astype(np.uint8)
    gt[2:10, 3:15] = IGNORE
    first = np.where(rng.random(gt.shape) < 0.5, gt, 1).astype(np.uint8)
    other = np.where(rng.random(gt.shape) < 0.7, gt, 2).astype(np.uint8)
    first[gt == IGNORE] = other[gt == IGNORE] = 0
    image = rng.integers(0, 256, (*gt.shape, 3)).astype(np.uint8)
    return Frame("00000", image, gt, [first, other], [None, None])


def _tile(sheet, layout, col) -> np.ndarray:
    x0, y0, x1, y1 = layout.box(0, col)
    return np.asarray(sheet)[y0:y1, x0:x1]


def test_void_is_one_colour_of_no_class_in_the_gt_and_error_tiles():
    classes = {tuple(c) for c in VSPW_PALETTE[:NUM_CLASSES]}
    assert VOID not in classes and VOID not in {FIXED, BROKEN, BOTH_WRONG, BOTH_RIGHT, CONTOUR}
    f = _void_frame()
    sheet, layout = contact_sheet("v", [f], ["base", "refined"])
    void = _enlarge_mask(f.gt == IGNORE, scale_for(f.gt.shape[1]))
    for col in (3, 4):  # frame | base | refined | GT | error map
        tile = _tile(sheet, layout, col)
        assert np.array_equal(np.all(tile == VOID, axis=-1), void), f"column {col}"
    assert frame_tiles(f, ["base", "refined"])[3][1] == "ground truth (void light yellow)"


def _enlarge_mask(mask: np.ndarray, k: int) -> np.ndarray:
    return mask.repeat(k, axis=0).repeat(k, axis=1)


def test_legend_names_every_error_map_colour():
    f = _void_frame()
    drawn = {tuple(c) for c in error_map(f.preds[0], f.preds[1], f.gt).reshape(-1, 3)}
    assert drawn == {colour for colour, _ in LEGEND}  # the fixture draws all five
    assert [text for _, text in LEGEND] == [
        "fixed",
        "broken",
        "both wrong",
        "both right",
        "GT void, not counted",
    ]


@pytest.mark.parametrize(("names", "legend"), [(["base"], False), (["base", "refined"], True)])
def test_error_map_legend_only_with_an_error_map(names, legend):
    """One method: no error-map column, so no legend line and none of its swatches in the header."""
    f = _void_frame()
    f.preds, f.masklets = f.preds[: len(names)], f.masklets[: len(names)]
    sheet, layout = contact_sheet("v", [f], names)
    header = np.asarray(sheet)[: layout.header_h]
    assert layout.columns == 2 * len(names) + 1
    assert np.all(header == FIXED, axis=-1).any() == legend
    assert np.all(header == VOID, axis=-1).any() == legend


def _pictures(video: str, frames: int, sampled: int) -> Pictures:
    return Pictures(video, Path("c.png"), (), Path("s.mp4"), frames, sampled)


@pytest.mark.parametrize(
    ("written", "frames", "line"),
    [
        ([(8, 8)], 20, "pictures of 1 video: contact sheet of all 8 frames (--frames 20); 8 frames in"),
        ([(24, 4)], 4, "pictures of 1 video: contact sheet of 4 of 24 frames; 24 frames in"),
        ([(1, 1)], 4, "pictures of 1 video: contact sheet of all 1 frame (--frames 4); 1 frame in"),
        ([(24, 4), (9, 4)], 4, "pictures of 2 videos: contact sheets of 4 sampled frames each; 33 frames"),
        (
            [(24, 4), (3, 3)],
            4,
            "pictures of 2 videos: contact sheets of 4 sampled frames each, all frames of the 1 video"
            " with fewer (e.g. v1) (--frames 4); 27 frames",
        ),
    ],
)
def test_describe_says_how_many_frames_each_sheet_shows(written, frames, line):
    pictures = [_pictures(f"v{i}", n, k) for i, (n, k) in enumerate(written)]
    assert describe(pictures, frames).startswith(line)


@pytest.mark.parametrize(("n", "text"), [(0, "0 videos"), (1, "1 video"), (2, "2 videos")])
def test_plural(n, text):
    assert plural(n, "video") == text


def test_viz_one_pred_more_frames_than_the_video(viz_set, tmp_path, capsys):
    """--frames above the video's length: every frame, said in the summary; one --pred: no
    error-map column."""
    root, _ = viz_set
    video = _videos(root)[0]
    args = ["viz", "-q", "--data", str(root), "--pred", f"base={root / 'pred_base'}", "--video", video]
    assert main([*args, "--frames", "20", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"wrote pictures of 1 video: contact sheet of all {FRAMES} frames (--frames 20);" in out
    sheet = Image.open(tmp_path / "out" / video / "contact.png")
    assert sheet.width == Layout(W * scale_for(W), H * scale_for(W), 3).width  # frame | base | GT


def _contour_pixels(path, rows: int) -> int:
    """CONTOUR pixels inside the overlay sheet's tiles (the background around them is white too)."""
    im = np.asarray(Image.open(path).convert("RGB"))
    k = scale_for(W)
    layout = Layout(W * k, H * k, 1)
    total = 0
    for r in range(rows):
        x0, y0, x1, y1 = layout.box(r, 0)
        total += int(np.all(im[y0:y1, x0:x1] == CONTOUR, axis=-1).sum())
    return total


@pytest.mark.parametrize(
    ("video", "method", "contours"),
    [(0, "refined", True), (0, "base", False), (1, "refined", False)],
)
def test_masklet_contours_only_where_masklets_were_saved(viz_run, video, method, contours):
    root, _, out = viz_run
    path = out / _videos(root)[video] / f"overlay_{method}.png"
    assert (_contour_pixels(path, len(sample_frames(FRAMES, 4))) > 0) == contours


def test_overlay_contours_are_the_masklet_edges():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    labels = rng.integers(0, CLASSES, (30, 40)).astype(np.uint8)
    ids = np.zeros((30, 40), np.uint16)
    ids[3:12, 5:20], ids[15:28, 22:38] = 1, 300
    got = np.all(overlay(image, labels, ids) == CONTOUR, axis=-1)
    assert np.array_equal(got, masklet_edges(ids)) and got.sum() > 0
    assert not np.all(overlay(image, labels, None) == CONTOUR, axis=-1).any()


def _missing_frame(refined, video, frame):
    (refined / video / frame).unlink()


def _damaged_frame(refined, video, frame):
    (refined / video / frame).write_bytes(b"\x89PNG\r\n\x1a\n truncated")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing frame", "missing 1 (first: {frame})"),
        ("damaged frame", "{refined}/{video}/{frame}: cannot decode PNG"),
        ("no pred folder", "--pred refined={tmp}/nope: no such folder"),
        ("out inside pred", "--out {refined}/viz: lies inside the --pred refined folder"),
        ("bad video", "--video nope: not a video of the val split"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(viz_set, tmp_path, capsys, case, message):
    root, refined_src = viz_set
    refined = tmp_path / "refined"
    shutil.copytree(refined_src, refined)
    video = _videos(root)[0]
    frame = sorted(p.name for p in (refined / video).glob("*.png"))[0]
    out = refined / "viz" if case == "out inside pred" else tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    pred, extra = refined, []
    if case == "missing frame":
        _missing_frame(refined, video, frame)
    elif case == "damaged frame":
        _damaged_frame(refined, video, frame)
    elif case == "no pred folder":
        pred = tmp_path / "nope"
    elif case == "bad video":
        extra = ["--video", "nope"]
    args = ["viz", "-q", "--data", str(root), "--pred", f"base={root / 'pred_base'}"]
    assert main([*args, "--pred", f"refined={pred}", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sam2vss viz: error: ")
    assert message.format(frame=frame, refined=refined, video=video, tmp=tmp_path) in err
    assert sorted(p.name for p in out.rglob("*")) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier"


def test_viz_cli_defaults_are_the_library_defaults():
    import inspect

    from sam2vss.cli import build_parser
    from sam2vss.viz import visualize

    a = build_parser().parse_args(["viz", "--data", "d", "--pred", "p", "--out", "o"])
    defaults = {
        k: p.default for k, p in inspect.signature(visualize).parameters.items() if p.default is not p.empty
    }
    assert defaults == {"split": a.split, "videos": a.video, "frames": a.frames, "progress": not a.quiet}


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
@pytest.mark.parametrize(("decodes", "ok"), [(3, True), (2, False)])
def test_write_mp4_checks_the_decoded_frame_count(tmp_path, monkeypatch, codec, decodes, ok):
    """A file that decodes to another frame count than was encoded is an error and is not kept."""
    from sam2vss import viz

    real = viz.count_video_frames
    monkeypatch.setattr(viz, "count_video_frames", lambda p: real(p) - 3 + decodes)
    pictures = [Image.new("RGB", (33, 21), (40 * i, 0, 0)) for i in range(3)]  # odd sides: padded
    path = tmp_path / "v.mp4"
    if ok:
        assert viz.write_mp4(path, pictures, codec=codec) == 3
    else:
        with pytest.raises(viz.DataError, match="encoded 3 frames but the file decodes to 2"):
            viz.write_mp4(path, pictures, codec=codec)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["v.mp4"] if ok else [])
