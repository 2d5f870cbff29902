"""The synthetic generator: layout, value ranges, determinism, realistic base-model errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sam2vss.config import MetricConfig, SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import evaluate
from sam2vss.synth import synthesize

CFG = SynthConfig(videos=2, frames=20, height=64, width=96, classes=10, train_videos=1, seed=3)


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "a", CFG, progress=False)


def test_layout_and_value_ranges(synth_root):
    ds = open_dataset(synth_root)
    val, train = ds.videos("val"), ds.videos("train")
    assert len(val) == 2 and len(train) == 1
    for video in val + train:
        names = ds.gt_frames(video)
        assert len(names) == 20 and names == sorted(names)
        assert [n[:-4] for n in ds.image_frames(video)] == [n[:-4] for n in names]
        raw = np.stack([read_label_png(ds.gt_dir(video) / n) for n in names])
        pred = np.stack([read_label_png(synth_root / "pred_base" / video / n) for n in names])
        inst = np.stack([read_label_png(ds.instance_dir(video) / n) for n in names])
        assert set(np.unique(raw)) <= set(range(CFG.classes + 1)) | {255}
        assert pred.max() < CFG.classes
        assert inst.max() <= CFG.objects and inst.max() >= 1
        assert raw.shape == pred.shape == (20, CFG.height, CFG.width)


def test_same_arguments_same_bytes(synth_root, tmp_path):
    again = synthesize(tmp_path / "b", CFG, progress=False)
    assert _digest(again) == _digest(synth_root)
    other = synthesize(tmp_path / "c", SynthConfig(**{**CFG.__dict__, "seed": 4}), progress=False)
    assert _digest(other) != _digest(synth_root)


def test_base_predictions_err_like_a_vss_model(synth_root):
    m = evaluate(
        open_dataset(synth_root), synth_root / "pred_base", cfg=MetricConfig(), progress=False
    ).metrics
    # Mostly right, worse at boundaries than inside regions, and flickering over time.
    assert 0.5 < m["miou_present"] < 0.98
    assert m["mbiou"] < m["miou_present"] - 0.1
    assert m["mvc8"] < 0.97 and m["mvc16"] < m["mvc8"]


def test_config_validation():
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=2)
    with pytest.raises(ValueError, match="height and width"):
        SynthConfig(height=8)
