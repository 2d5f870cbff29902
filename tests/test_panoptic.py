"""Video-panoptic predictions (DVIS / DVIS++ / CAVIS VPSEvaluator output) -> semantic label maps:
equal to a brute-force conversion on generated cases, one-line errors on bad files, and `eval
--pred-format vps` equal to `eval` of the same labels written as semantic PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2vss.data import DataError, read_label_png
from sam2vss.panoptic import convert_vps, rgb2id, vps_to_semantic

C = 124


def id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def write_vps(root: Path, videos: dict[str, list[tuple[str, np.ndarray, list[dict]]]]) -> Path:
    """DIR/pan_pred/<video>/<frame>.png + DIR/pred.json from (name, segment-id map, segments)."""
    annotations = []
    for video, frames in videos.items():
        entries = []
        for name, ids, segments in frames:
            path = root / "pan_pred" / video / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(id2rgb(ids)).save(path)
            entries.append({"file_name": name, "segments_info": segments})
        annotations.append({"video_id": video, "annotations": entries})
    (root / "pred.json").write_text(json.dumps({"annotations": annotations}))
    return root


def random_frame(rng, h: int, w: int, n: int, unclaimed: float) -> tuple[np.ndarray, list[dict]]:
    """A blocky segment-id map of n segments (ids up to 2^24), `unclaimed` of the pixels given an
    id no segment has."""
    ids = rng.choice(np.arange(1, 2**24), size=n + 1, replace=False)
    small = rng.integers(0, n, size=(h // 3 + 1, w // 3 + 1))
    seg = np.kron(small, np.ones((3, 3), np.int64))[:h, :w]
    seg[0, 0] = 0  # every segment appears: index 0..n-1 in the corner and the rest
    seg.flat[: min(n, seg.size)] = np.arange(min(n, seg.size))
    present = np.unique(seg)
    pan = ids[seg]
    pan[rng.random((h, w)) < unclaimed] = ids[n]  # the unclaimed id
    if (pan == ids[n]).all():
        pan.flat[0] = ids[present[0]]
    segments = [
        {"id": int(ids[k]), "category_id": int(rng.integers(0, C)), "iscrowd": 0}
        for k in present
        if (pan == ids[k]).any()
    ]
    return pan, segments


def brute_force_classes(pan: np.ndarray, segments: list[dict]) -> list[list[set[int]]]:
    """Per pixel, the classes it may take: its segment's, or those of the claimed pixels nearest
    to it (every tie)."""
    cat = {s["id"]: s["category_id"] for s in segments}
    h, w = pan.shape
    claimed = [(y, x, cat[int(pan[y, x])]) for y in range(h) for x in range(w) if int(pan[y, x]) in cat]
    out = []
    for y in range(h):
        row = []
        for x in range(w):
            if int(pan[y, x]) in cat:
                row.append({cat[int(pan[y, x])]})
                continue
            d = [(cy - y) ** 2 + (cx - x) ** 2 for cy, cx, _ in claimed]
            best = min(d)
            row.append({c for (_, _, c), dd in zip(claimed, d, strict=True) if dd == best})
        out.append(row)
    return out


@pytest.mark.parametrize(
    ("h", "w", "n", "unclaimed"),
    [(1, 1, 1, 0.0), (7, 13, 3, 0.0), (7, 13, 3, 0.3), (31, 5, 6, 0.5), (24, 40, 12, 0.1), (9, 9, 1, 0.9)],
    ids=["1x1", "7x13", "7x13-holes", "31x5-holes", "24x40", "9x9-mostly-holes"],
)
def test_conversion_equals_brute_force(tmp_path, h, w, n, unclaimed):
    rng = np.random.default_rng(h * 1000 + w + n)
    pan, segments = random_frame(rng, h, w, n, unclaimed)
    path = tmp_path / "f.png"
    Image.fromarray(id2rgb(pan)).save(path)
    assert np.array_equal(rgb2id(np.asarray(Image.open(path))), pan)
    sem = vps_to_semantic(path, segments, C)
    allowed = brute_force_classes(pan, segments)
    wrong = [(y, x) for y in range(h) for x in range(w) if int(sem[y, x]) not in allowed[y][x]]
    assert sem.dtype == np.uint8 and sem.shape == (h, w) and not wrong, wrong[:5]


def _one(tmp_path, segments, ids=None, mode="RGB"):
    ids = np.array([[5, 5], [7, 7]]) if ids is None else ids
    path = tmp_path / "f.png"
    Image.fromarray(id2rgb(ids)).convert(mode).save(path)
    return path, segments


@pytest.mark.parametrize(
    ("segments", "ids", "mode", "message"),
    [
        (
            [{"id": 5, "category_id": 124}],
            None,
            "RGB",
            "segment 5 has category_id 124, not a class in 0..123",
        ),
        ([{"id": 5, "category_id": -1}], None, "RGB", "category_id -1"),
        (
            [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 2}],
            None,
            "RGB",
            "segment 9 of pred.json has no pixel",
        ),
        (
            [{"id": 9, "category_id": 1}],
            np.array([[9, 9]]) * 0 + 3,
            "RGB",
            "segment 9 of pred.json has no pixel",
        ),
        ([], None, "RGB", "no segment of pred.json claims any pixel"),
        ([{"id": 5, "category_id": 1}], None, "L", "RGB PNG of segment ids, got mode L"),
    ],
    ids=[
        "category-too-big",
        "category-negative",
        "segment-without-pixels",
        "no-match",
        "no-segments",
        "gray-png",
    ],
)
def test_bad_frames_name_the_file_and_the_fix(tmp_path, segments, ids, mode, message):
    path, segs = _one(tmp_path, segments, ids, mode)
    with pytest.raises(DataError) as e:
        vps_to_semantic(path, segs, C)
    assert message in str(e.value) and str(path) in str(e.value)


def test_bad_folders_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"no pan_pred/ folder; --pred-format vps reads"):
        convert_vps(tmp_path, tmp_path / "out", C)
    (tmp_path / "pan_pred").mkdir()
    with pytest.raises(DataError, match=r"pred\.json: not found"):
        convert_vps(tmp_path, tmp_path / "out", C)
    (tmp_path / "pred.json").write_text("{}")
    with pytest.raises(DataError, match=r"not a VPS pred\.json"):
        convert_vps(tmp_path, tmp_path / "out", C)
    write_vps(tmp_path, {"v": [("00000000.png", np.array([[5]]), [{"id": 5, "category_id": 1}])]})
    (tmp_path / "pan_pred" / "v" / "00000001.png").write_bytes(
        (tmp_path / "pan_pred" / "v" / "00000000.png").read_bytes()
    )
    with pytest.raises(DataError, match="no entry for video v frame 00000001"):
        convert_vps(tmp_path, tmp_path / "out", C)


@pytest.fixture(scope="module")
def vps_set(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic set and its pred_base written as VPS (one segment per class and frame, random
    ids): (dataset root, VPS folder)."""
    from sam2vss.config import SynthConfig
    from sam2vss.synth import synthesize

    tmp = tmp_path_factory.mktemp("vps_set")
    root = synthesize(
        tmp / "ds", SynthConfig(videos=2, frames=18, height=40, width=56, train_videos=0), False
    )
    rng = np.random.default_rng(0)
    videos = {}
    for video in sorted((root / "pred_base").iterdir()):
        frames = []
        for png in sorted(video.iterdir()):
            labels = read_label_png(png).astype(np.int64)
            classes = np.unique(labels)
            ids = rng.choice(np.arange(1, 2**24), size=classes.size, replace=False)
            pan = ids[np.searchsorted(classes, labels)]
            segments = [{"id": int(i), "category_id": int(c)} for i, c in zip(ids, classes, strict=True)]
            frames.append((png.name, pan, segments))
        videos[video.name] = frames
    return root, write_vps(tmp / "vps", videos)


def test_eval_of_vps_predictions_equals_eval_of_the_same_semantic_labels(vps_set, tmp_path, capsys):
    """`eval --pred-format vps` gives the same metrics as `eval` of pred_base, exactly."""
    from sam2vss.cli import main

    root, vps = vps_set
    out = {}
    for name, extra in (
        ("semantic", ["--pred", str(root / "pred_base")]),
        ("vps", ["--pred", str(vps), "--pred-format", "vps"]),
    ):
        assert (
            main(["eval", "-q", "--data", str(root), *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
        )
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for key in ("miou", "fwiou", "mbiou", "mvc8", "mvc16", "frames"):
        assert out["vps"][key] == out["semantic"][key], key
    capsys.readouterr()
    assert main(["eval", "-q", "--data", str(root), "--pred", str(tmp_path), "--pred-format", "vps"]) == 2
    err = capsys.readouterr().err
    assert "no pan_pred/ folder" in err and len(err.strip().splitlines()) == 1


def test_refine_and_sweep_read_vps_predictions(vps_set, tmp_path, capsys):
    """`refine` and `sweep` with --pred-format vps refine exactly what they refine from the same
    labels as PNGs, and a rerun of the VPS refine resumes (skips every video)."""
    from sam2vss.cli import main

    root, vps = vps_set
    sp = ["-q", "--data", str(root), "--masks", "superpixel", "--superpixel-size", "64"]
    digests = {}
    for name, pred in (
        ("semantic", ["--pred", str(root / "pred_base")]),
        ("vps", ["--pred", str(vps), "--pred-format", "vps"]),
    ):
        assert main(["refine", *sp, *pred, "--out", str(tmp_path / name)]) == 0
        videos = json.loads((tmp_path / name / "manifest.json").read_text())["videos"]
        digests[name] = {v: e["sha256"] for v, e in videos.items()}
    assert digests["vps"] == digests["semantic"] and len(digests["vps"]) == 2
    capsys.readouterr()
    assert (
        main(["refine", *sp, "--pred", str(vps), "--pred-format", "vps", "--out", str(tmp_path / "vps")]) == 0
    )
    assert (
        "nothing to do: all 2 videos already done" in capsys.readouterr().out
    )  # the converted labels' bytes are unchanged: resumed
    sweep = ["sweep", *sp[:-2], "--param", "superpixel_size", "--values", "64"]
    assert main([*sweep, "--pred", str(vps), "--pred-format", "vps", "--out", str(tmp_path / "sw")]) == 0
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert (
        rows["rows"][0]["metrics"]["miou"]
        == json.loads((tmp_path / "sw" / "superpixel_size=64" / "eval.json").read_text())["metrics"]["miou"]
    )
    videos = json.loads((tmp_path / "sw" / "superpixel_size=64" / "manifest.json").read_text())["videos"]
    assert {v: e["sha256"] for v, e in videos.items()} == digests["semantic"]
    base = json.loads((tmp_path / "sw" / "base_eval.json").read_text())["metrics"]
    assert (
        main(
            [
                "eval",
                "-q",
                "--data",
                str(root),
                "--pred",
                str(root / "pred_base"),
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    assert base["miou"] == json.loads((tmp_path / "b.json").read_text())["miou"]
