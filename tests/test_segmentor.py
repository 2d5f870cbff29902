"""I-SAM2: masked average pooling, training, segmentation with and without base fill, encoders."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from sam2vss.cli import main
from sam2vss.config import MetricConfig, SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import evaluate
from sam2vss.segmentor import SegmentorConfig, load, masked_average, segment, train, write_majority_baseline
from sam2vss.synth import synthesize


def tiny_encoder() -> nn.Module:
    """A plug-in encoder for --features test_segmentor:tiny_encoder: 3 colour channels at 1/2."""
    return nn.AvgPool2d(2)


def _train_cli(ds, out, *flags: str) -> int:
    return main(["train-classifier", "-q", "--data", str(ds.root), "--out", str(out), *flags])


def _segment_cli(ds, classifier, out) -> int:
    return main(["segment", "-q", "--data", str(ds.root), "--classifier", str(classifier), "--out", str(out)])


def test_masked_average_pools_each_masklet():
    feats = torch.zeros((2, 4, 4))
    feats[0, :, :2], feats[0, :, 2:] = 1.0, 3.0
    feats[1] = 5.0
    masks = torch.zeros((3, 8, 8), dtype=torch.bool)
    masks[0, :, :4] = True  # left half: feature 0 = 1
    masks[1, :, 4:] = True  # right half: 3
    masks[2, :, 2:6] = True  # straddles: mean 2
    pooled = masked_average(feats, masks)
    assert torch.allclose(pooled, torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]]))
    assert masked_average(feats, masks[:0]).shape == (0, 2)


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    cfg = SynthConfig(videos=2, frames=6, height=96, width=160, train_videos=3, seed=9)
    return open_dataset(synthesize(tmp_path_factory.mktemp("seg") / "ds", cfg, progress=False))


@pytest.fixture(scope="module")
def trained(seg_set, tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "cls.pt"
    ckpt = train(seg_set, "train", SegmentorConfig(epochs=30), path, progress=False)
    return path, ckpt


def test_training_loss_falls_and_beats_the_majority_baseline(seg_set, trained, tmp_path):
    path, ckpt = trained
    assert ckpt["losses"][-1] < 0.5 * ckpt["losses"][0]
    frames = segment(seg_set, "val", path, tmp_path / "out", progress=False)
    assert frames == 12
    ours = evaluate(seg_set, tmp_path / "out", cfg=MetricConfig(), progress=False).metrics
    write_majority_baseline(seg_set, "train", "val", tmp_path / "maj")
    base = evaluate(seg_set, tmp_path / "maj", cfg=MetricConfig(), progress=False).metrics
    print(
        f"I-builtin mIoU {ours['miou']:.4f} / present {ours['miou_present']:.4f}; majority {base['miou']:.4f}"
    )
    assert ours["miou_present"] > base["miou_present"] + 0.25


def test_round_trip_and_determinism(seg_set, trained, tmp_path):
    path, ckpt = trained
    cfg, model_cfg, mlp = load(path)
    assert cfg == SegmentorConfig(epochs=30) and model_cfg is None
    assert all(torch.equal(mlp.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    again = train(seg_set, "train", SegmentorConfig(epochs=30), tmp_path / "again.pt", progress=False)
    assert again["losses"] == ckpt["losses"]  # same seed, same data: same training
    segment(seg_set, "val", path, tmp_path / "a", progress=False)
    segment(seg_set, "val", path, tmp_path / "b", progress=False)
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*.png"))}  # noqa: E731
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_instance_masklets_with_and_without_base_fill(seg_set, tmp_path):
    cfg = SegmentorConfig(masklets="instances", epochs=5, purity=0.5)
    path = tmp_path / "inst.pt"
    train(seg_set, "train", cfg, path, progress=False)
    base_dir = seg_set.root / "pred_base"
    segment(seg_set, "val", path, tmp_path / "with_base", base=base_dir, progress=False)
    segment(seg_set, "val", path, tmp_path / "nearest", progress=False)
    for v in seg_set.videos("val"):
        inst_names = sorted(p.name for p in seg_set.instance_dir(v).iterdir())
        for f, inst_name in zip(seg_set.gt_frames(v), inst_names, strict=True):
            inst = read_label_png(seg_set.instance_dir(v) / inst_name)
            with_base = read_label_png(tmp_path / "with_base" / v / f)
            nearest = read_label_png(tmp_path / "nearest" / v / f)
            base = read_label_png(base_dir / v / f)
            assert (with_base[inst == 0] == base[inst == 0]).all()  # uncovered: the base's labels
            assert with_base.max() < 124 and nearest.max() < 124  # every pixel labelled, in range
            assert (nearest[inst > 0] == with_base[inst > 0]).all()  # masklets classified the same


def test_sam2_features_and_plugin_encoder_via_cli(seg_set, tmp_path):
    sam2_cls = tmp_path / "sam2.pt"
    flags = ["--features", "sam2", "--checkpoint", "none", "--image-size", "256", "--epochs", "3"]
    assert _train_cli(seg_set, sam2_cls, *flags, "--frame-stride", "3") == 0
    assert load(sam2_cls)[2].net[0].normalized_shape == (256,)  # SAM2's image_embed width
    assert _segment_cli(seg_set, sam2_cls, tmp_path / "o") == 0
    assert len(list((tmp_path / "o").rglob("*.png"))) == 12
    plug = tmp_path / "plug.pt"
    assert _train_cli(seg_set, plug, "--features", "test_segmentor:tiny_encoder", "--epochs", "2") == 0
    assert load(plug)[2].net[0].normalized_shape == (3,)


def test_bad_encoder_spec_and_missing_classifier(seg_set, tmp_path, capsys):
    assert _train_cli(seg_set, tmp_path / "x.pt", "--features", "no_such_module:thing") == 2
    assert "cannot import thing from no_such_module" in capsys.readouterr().err
    assert _segment_cli(seg_set, tmp_path / "nope.pt", tmp_path / "o") == 2
    assert "not found" in capsys.readouterr().err


def test_sam2_masklets_share_the_trackers_features(tmp_path, monkeypatch):
    """SAM2 masklets + SAM2 features: the features come from the predictor's own encoder pass."""
    from sam2vss import segmentor
    from sam2vss.model import ModelConfig

    def no_second_pass(*args, **kwargs):
        raise AssertionError("a second encoder was built")

    monkeypatch.setattr(segmentor, "build_encoder", no_second_pass)
    tiny = SynthConfig(videos=1, frames=3, height=48, width=64, train_videos=1, seed=4)
    ds = open_dataset(synthesize(tmp_path / "ds", tiny, progress=False))
    cfg = SegmentorConfig(
        features="sam2",
        masklets="sam2",
        epochs=2,
        window=3,
        grid=4,
        purity=0.0,
        pred_iou_thresh=0.0,
        stability_thresh=0.0,
        image_size=256,
    )
    ckpt = train(ds, "train", cfg, tmp_path / "c.pt", ModelConfig(image_size=256), progress=False)
    assert ckpt["dim"] == 256 and ckpt["samples"] > 0
    assert segment(ds, "val", tmp_path / "c.pt", tmp_path / "o", progress=False) == 3
