"""eval (streaming torch) and its numpy reference twin against the brute-force oracle, plus
hand-computed cases that pin every flagged semantic of METRICS.md section 8."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import checks
import oracle
from helpers import random_video, write_dataset
from sam2vss.config import MetricConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import evaluate
from sam2vss.kernels import kernel_ops
from sam2vss.metrics import VideoMetrics, label_band, summarize
from sam2vss.metrics_reference import evaluate_reference

KEYS = ("miou", "miou_present", "fwiou", "mbiou", "mvc8", "mvc16", "windows8", "windows16")


def assert_metrics_equal(got: dict, want: dict, label: str) -> None:
    checks.assert_metrics_equal(got, want, label, keys=KEYS, atol=checks.METRIC_ATOL)


# Video lengths around the skip rule (16) and the window sizes; odd sizes; 1-frame video.
LENGTHS = {"v_short": 1, "v_16": 16, "v_17": 17, "v_25": 25, "v_12": 12}

CONFIGS = {
    "default": MetricConfig(num_classes=12),
    "pad_border": MetricConfig(num_classes=12, pad_border=True),
    "void_keep": MetricConfig(num_classes=12, void_mode="keep"),
    "kernel3": MetricConfig(num_classes=12, boundary_kernel=3),
    "kernel11": MetricConfig(num_classes=12, boundary_kernel=11),
    "skip_n": MetricConfig(num_classes=12, vc_skip_rule="n"),
    "raw_gt": MetricConfig(num_classes=12, vc_gt="raw"),
    "last_window": MetricConfig(num_classes=12, vc_last_window=True),
    "per_video": MetricConfig(num_classes=12, vc_aggregate="per_video"),
    "vspw_classes": MetricConfig(),
}


@pytest.fixture(scope="module")
def random_set(tmp_path_factory):
    rng = np.random.default_rng(7)
    videos = {name: random_video(rng, n, 21, 37, classes=12) for name, n in LENGTHS.items()}
    root, pred = write_dataset(tmp_path_factory.mktemp("rand"), videos)
    return videos, open_dataset(root), pred


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_matches_oracle(random_set, name):
    videos, dataset, pred = random_set
    cfg = CONFIGS[name]
    want = oracle.metrics(list(videos.values()), cfg)
    fast = evaluate(dataset, pred, cfg=cfg, device="cpu", workers=2, progress=False).metrics
    assert_metrics_equal(fast, want, f"eval [{name}]")


@pytest.mark.parametrize("name", ["default", "pad_border", "void_keep", "raw_gt", "last_window", "per_video"])
def test_reference_twin_matches_oracle(random_set, name):
    videos, dataset, pred = random_set
    cfg = CONFIGS[name]
    want = oracle.metrics(list(videos.values()), cfg)
    ref = evaluate_reference(dataset, pred, cfg=cfg, progress=False)
    assert_metrics_equal(ref, want, f"reference [{name}]")


def test_eval_matches_oracle_on_synthetic_set(tmp_path):
    from sam2vss.config import SynthConfig
    from sam2vss.synth import synthesize

    root = synthesize(
        tmp_path / "s", SynthConfig(videos=2, frames=18, height=40, width=64, train_videos=0), False
    )
    dataset = open_dataset(root)
    videos = []
    for v in dataset.videos("val"):
        names = dataset.gt_frames(v)
        raws = [read_label_png(dataset.gt_dir(v) / n) for n in names]
        preds = [read_label_png(root / "pred_base" / v / n) for n in names]
        videos.append((raws, preds))
    cfg = MetricConfig()
    want = oracle.metrics(videos, cfg)
    got = evaluate(dataset, root / "pred_base", cfg=cfg, device="cpu", progress=False).metrics
    assert_metrics_equal(got, want, "eval on synth")
    assert got["windows16"] == 2 * (18 - 16)


def _run(frames_gt, frames_pred, cfg, raw=None):
    """VideoMetrics on in-memory reduced GT and predictions of one video."""
    acc = VideoMetrics(cfg, len(frames_gt), kernel_ops("cpu"))
    for i, (g, p) in enumerate(zip(frames_gt, frames_pred, strict=True)):
        r = None if raw is None else torch.from_numpy(raw[i])
        acc.update(torch.from_numpy(g), torch.from_numpy(p), r)
    return summarize([acc.finish("v")], cfg)


def _const(value, n, shape=(6, 8)):
    return [np.full(shape, value, np.uint8) for _ in range(n)]


# ---------------------------------------------------------------- mVC window count and skips
@pytest.mark.parametrize(
    ("length", "last", "skip", "w8", "w16"),
    [
        (20, False, "16", 12, 4),  # L - n windows: the reference drops the last one
        (20, True, "16", 13, 5),  # flag: L - n + 1
        (17, False, "16", 9, 1),
        (16, False, "16", 0, 0),  # <= 16 frames: skipped for both n (CFFM/TV3S)
        (12, False, "n", 4, 0),  # skip rule n: VC8 runs on a 12-frame video, VC16 does not
        (8, False, "n", 0, 0),
    ],
)
def test_vc_window_count_and_skip_rule(length, last, skip, w8, w16):
    cfg = MetricConfig(num_classes=4, vc_last_window=last, vc_skip_rule=skip)
    m = _run(_const(1, length), _const(1, length), cfg)
    assert (m["windows8"], m["windows16"]) == (w8, w16)
    assert m["mvc8"] == 1.0 if w8 else math.isnan(m["mvc8"])


def test_vc_counts_ignore_pixels():
    """GT void that stays void is GT-consistent and counts (no ignore masking in VC)."""
    cfg = MetricConfig(num_classes=4)
    n = 20
    gt = _const(255, n)  # all void, constant
    pred = _const(1, n)
    for t in range(0, n, 2):
        pred[t][:3] = 2  # top half flickers every frame
    m = _run(gt, pred, cfg)
    assert m["mvc8"] == pytest.approx(0.5, abs=0)  # 24 of 48 pixels stay constant
    assert math.isnan(m["miou"])  # no valid pixel for IoU


def test_vc_per_window_pooling_weights_long_videos():
    cfg = MetricConfig(num_classes=4)
    a = _run(_const(1, 20), _const(1, 20), cfg)  # 12 windows of 1.0
    acc = []
    for length, flicker in ((20, False), (30, True)):
        v = VideoMetrics(cfg, length, kernel_ops("cpu"))
        for t in range(length):
            p = np.full((6, 8), 1 if (not flicker or t % 2) else 2, np.uint8)
            v.update(torch.full((6, 8), 1, dtype=torch.uint8), torch.from_numpy(p))
        acc.append(v.finish(str(length)))
    pooled = summarize(acc, cfg)
    per_video = summarize(acc, replace(cfg, vc_aggregate="per_video"))
    assert a["mvc8"] == 1.0
    assert pooled["mvc8"] == pytest.approx(12 / (12 + 22))  # 22 windows of 0 from the 30-frame video
    assert per_video["mvc8"] == pytest.approx(0.5)


def test_vc_raw_gt_distinguishes_others_from_void():
    """Reduced GT maps both 'others' (0) and void (255) to 255: flipping between them is
    GT-consistent; the raw GT (original VSPW script) treats them as different labels."""
    n = 20
    raw = [np.full((4, 4), 0 if t % 2 else 255, np.uint8) for t in range(n)]
    reduced = [np.full((4, 4), 255, np.uint8) for _ in range(n)]
    pred = _const(1, n, (4, 4))
    reduced_m = _run(reduced, pred, MetricConfig(num_classes=4), raw=raw)
    raw_m = _run(reduced, pred, MetricConfig(num_classes=4, vc_gt="raw"), raw=raw)
    assert reduced_m["mvc8"] == 1.0
    assert math.isnan(raw_m["mvc8"])  # no GT-consistent pixel in any window


# ---------------------------------------------------------------- mIoU semantics
def test_miou_absent_class_and_void():
    cfg = MetricConfig(num_classes=4)
    gt = np.array([[0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 2, 1, 3]], np.uint8)  # 3 predicted on void only: not counted
    m = _run([gt], [pred], cfg)
    # class 0: I=1, U=2; class 1: I=1, U=1; class 2: predicted, absent from GT: IoU 0 (mmseg)
    assert m["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["miou_present"] == pytest.approx((0.5 + 1.0) / 2)  # Evaluator: GT-present only
    assert m["fwiou"] == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 1.0)


def test_gt_values_out_of_range_are_ignored():
    cfg = MetricConfig(num_classes=4)
    gt = np.array([[0, 7, 200]], np.uint8)  # 7 and 200 are not classes: ignored like 255
    pred = np.array([[0, 1, 2]], np.uint8)
    m = _run([gt], [pred], cfg)
    assert m["miou"] == 1.0


# ---------------------------------------------------------------- mBIoU semantics
def test_band_is_max_ne_min_with_border_rule():
    lab = torch.zeros((9, 11), dtype=torch.uint8)
    assert not label_band(lab, 5, False).any()  # one label: no boundary without the border rule
    border = label_band(lab, 5, True)
    assert border.sum() == 9 * 11 - 5 * 7  # everything within 2 px of the edge
    lab[4, 5] = 3
    band = label_band(lab, 5, False)
    assert band.sum() == 25 and band[2:7, 3:8].all()


def test_boundary_identical_maps_give_one_and_shift_hurts_more_than_iou():
    cfg = MetricConfig(num_classes=4)
    gt = np.zeros((60, 60), np.uint8)
    gt[15:45, 15:45] = 1
    same = _run([gt], [gt], cfg)
    assert same["mbiou"] == 1.0 and same["miou"] == 1.0
    shifted = _run([gt], [np.roll(gt, 1, axis=1)], cfg)
    assert 1 - shifted["mbiou"] > 3 * (1 - shifted["miou"])


def test_border_rule_changes_only_pixels_near_the_edge():
    gt = np.zeros((30, 40), np.uint8)
    gt[10:20, 10:30] = 1
    pred = gt.copy()
    pred[0:2, :] = 2  # differs only within 2 px of the top edge
    a = oracle.band(gt, 5, True) ^ oracle.band(gt, 5, False)
    assert not a[2:-2, 2:-2].any()
    for pad in (False, True):
        cfg = MetricConfig(num_classes=4, pad_border=pad)
        assert_metrics_equal(
            _run([gt], [pred], cfg), oracle.metrics([([g + 1 for g in [gt]], [pred])], cfg), f"pad {pad}"
        )


def test_void_mode_drop_and_keep():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 5:] = 255  # right half void
    pred = np.zeros((10, 10), np.uint8)
    pred[:, 5:] = 1  # predicted boundary between 0 and 1 at columns 3..6
    drop = _run([gt], [pred], MetricConfig(num_classes=4, void_mode="drop"))
    keep = _run([gt], [pred], MetricConfig(num_classes=4, void_mode="keep"))
    # GT band of class 0: columns 3,4 (next to void). Pred band: columns 3..6 (0 at 3,4; 1 at 5,6).
    assert drop["mbiou"] == 1.0  # class 0 bands agree; class 1's band lies on void and is dropped
    assert keep["mbiou"] == pytest.approx(0.5)  # class 1: 0 / 20 -> 0, class 0: 1


def test_video_metrics_rejects_extra_frames():
    acc = VideoMetrics(MetricConfig(num_classes=4), 1, kernel_ops("cpu"))
    acc.update(torch.zeros((2, 2), dtype=torch.uint8), torch.zeros((2, 2), dtype=torch.uint8))
    with pytest.raises(ValueError, match="more than the announced 1 frames"):
        acc.update(torch.zeros((2, 2), dtype=torch.uint8), torch.zeros((2, 2), dtype=torch.uint8))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("boundary_kernel", 4, "odd"),
        ("void_mode", "x", "void_mode"),
        ("vc_skip_rule", "8", "vc_skip_rule"),
        ("num_classes", 255, "num_classes"),
        ("vc_lengths", (), "vc_lengths"),
    ],
)
def test_metric_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        MetricConfig(**{field: value})
