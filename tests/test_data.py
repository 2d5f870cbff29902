"""Data I/O: label conventions, readers and writers, and the error for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import random_video, write_dataset
from sam2vss.config import MetricConfig
from sam2vss.data import (
    DataError,
    open_dataset,
    open_video_with_labels,
    read_label_png,
    read_split,
)
from sam2vss.evaluate import evaluate
from sam2vss.labels import CLASS_NAMES, VSPW_PALETTE, reduce_vspw, vipseg_to_semantic
from sam2vss.sinks import write_label_png


def test_reduce_vspw_every_value():
    raw = np.arange(256, dtype=np.uint8)
    red = reduce_vspw(raw)
    assert red[0] == 255 and red[255] == 255
    assert (red[1:125] == np.arange(124)).all()
    assert (red[125:255] == np.arange(124, 254)).all()  # not classes: ignored by the metrics


def test_vipseg_panomask_to_semantic():
    pano = np.array([[0, 1, 5, 124], [6100, 6101, 12400, 200]], np.int32)
    assert vipseg_to_semantic(pano).tolist() == [[255, 0, 4, 123], [60, 60, 123, 1]]
    with pytest.raises(ValueError, match="12500"):
        vipseg_to_semantic(np.array([[12500]], np.int32))


def test_vipseg_layout_eval(tmp_path):
    pano = np.array([[6100, 6100, 29], [0, 15, 15]], np.uint16)
    (tmp_path / "panomasks" / "vid").mkdir(parents=True)
    Image.fromarray(pano).save(tmp_path / "panomasks" / "vid" / "00000001.png")
    write_label_png(
        tmp_path / "pred" / "vid" / "00000001.png", np.array([[60, 60, 28], [3, 14, 13]], np.uint8)
    )
    (tmp_path / "val.txt").write_text("vid")  # no final newline: must not lose a character
    ds = open_dataset(tmp_path)
    assert ds.layout == "vipseg"
    m = evaluate(ds, tmp_path / "pred", progress=False, device="cpu").metrics
    # classes 60: 1, 28: 1, 14: I=1 U=2 -> 0.5, 13: predicted, absent -> 0
    assert m["miou"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)


def test_palette_rule_and_names():
    assert len(CLASS_NAMES) == 124 and CLASS_NAMES[0] == "wall" and CLASS_NAMES[123] == "train"
    assert VSPW_PALETTE[0].tolist() == [0, 0, 0]
    assert VSPW_PALETTE[1].tolist() == [128, 0, 0]
    assert VSPW_PALETTE[9].tolist() == [191, 0, 0]
    assert VSPW_PALETTE[21].tolist() == [128, 64, 128]
    assert VSPW_PALETTE[22].tolist() == [22, 22, 22] and VSPW_PALETTE[255].tolist() == [255, 255, 255]


def test_label_png_round_trip_palette_and_gray(tmp_path):
    labels = np.random.default_rng(0).integers(0, 124, (31, 17)).astype(np.uint8)
    write_label_png(tmp_path / "p.png", labels)
    write_label_png(tmp_path / "g.png", labels, palette=False)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]
    assert (read_label_png(tmp_path / "p.png") == labels).all()
    assert (read_label_png(tmp_path / "g.png") == labels).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "p.png"]  # no temporaries left


def test_rgb_and_truncated_pngs_are_named(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png.*mode 'RGB'"):
        read_label_png(tmp_path / "rgb.png")
    write_label_png(tmp_path / "t.png", np.zeros((64, 64), np.uint8))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png.*damaged or truncated"):
        read_label_png(tmp_path / "t.png")


def test_read_split_strips_and_skips_blank_lines(tmp_path):
    (tmp_path / "val.txt").write_text("a_1\n\n  b_2  \r\nc_3")
    assert read_split(tmp_path / "val.txt") == ["a_1", "b_2", "c_3"]


@pytest.fixture
def small_set(tmp_path):
    rng = np.random.default_rng(1)
    videos = {"vid_a": random_video(rng, 3, 8, 10, 5), "vid_b": random_video(rng, 2, 8, 10, 5)}
    root, pred = write_dataset(tmp_path / "ds", videos)
    return open_dataset(root), pred


def _eval(ds, pred, **kw):
    return evaluate(ds, pred, device="cpu", progress=False, **kw)


def test_missing_split_file(small_set):
    ds, pred = small_set
    with pytest.raises(DataError, match=r"split file .*train\.txt not found"):
        _eval(ds, pred, split="train")


def test_missing_dataset_layout(tmp_path):
    with pytest.raises(DataError, match=r"--data .*: no such folder"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="neither data/"):
        open_dataset(tmp_path)


def test_missing_prediction_folder(small_set):
    ds, pred = small_set
    for f in (pred / "vid_b").iterdir():
        f.unlink()
    (pred / "vid_b").rmdir()
    with pytest.raises(DataError, match=r"prediction folder of vid_b .*vid_b does not exist"):
        _eval(ds, pred)


def test_missing_and_extra_prediction_frames(small_set):
    ds, pred = small_set
    (pred / "vid_a" / "00000101.png").rename(pred / "vid_a" / "00000999.png")
    with pytest.raises(
        DataError, match=r"vid_a has 3 frames.*missing 1 \(first: 00000101\.png\).*00000999\.png"
    ):
        _eval(ds, pred)


def test_frame_count_mismatch(small_set):
    ds, pred = small_set
    (pred / "vid_a" / "00000102.png").unlink()
    with pytest.raises(DataError, match=r"has 2 frames, the ground truth of vid_a has 3"):
        _eval(ds, pred)


def test_size_mismatch_names_the_file(small_set):
    ds, pred = small_set
    write_label_png(pred / "vid_b" / "00000101.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"vid_b/00000101\.png: prediction is 9x8 .*ground truth is 10x8"):
        _eval(ds, pred)


def test_label_out_of_range_names_the_file(small_set):
    ds, pred = small_set
    bad = np.zeros((8, 10), np.uint8)
    bad[3, 3] = 255
    write_label_png(pred / "vid_a" / "00000100.png", bad)
    with pytest.raises(
        DataError, match=r"vid_a/00000100\.png: predicted label 255 \(void\) on 1 pixels .*outside 0\.\.4"
    ):
        _eval(ds, pred, cfg=MetricConfig(num_classes=5))


def _write_video(path, frames: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(frames):
            img = np.full((48, 64, 3), 10 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_with_label_folder(tmp_path):
    _write_video(tmp_path / "clip.mp4", 7)
    for t in range(7):
        write_label_png(tmp_path / "labels" / f"{t:05d}.png", np.zeros((48, 64), np.uint8))
    pair = open_video_with_labels(tmp_path / "clip.mp4", tmp_path / "labels")
    assert pair.name == "clip" and len(pair.frames) == 7
    (tmp_path / "labels" / "00006.png").unlink()
    with pytest.raises(DataError, match=r"clip\.mp4 decodes to 7 frames but label folder .* holds 6"):
        open_video_with_labels(tmp_path / "clip.mp4", tmp_path / "labels")


def test_corrupt_video_is_named(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    write_label_png(tmp_path / "labels" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"bad\.mp4: cannot decode video"):
        open_video_with_labels(tmp_path / "bad.mp4", tmp_path / "labels")
