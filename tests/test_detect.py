"""Batched detection against SAM2's official automatic mask generator on the same image features
(random weights at image size 256, thresholds lowered so that random logits pass some and fail
others): candidates' predicted IoU, stability, boxes and masks; the final masks in NMS order; and
the fast pipeline's labels with AMG masklets against the reference's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from checks import (
    AGREEMENT,
    SAM2_IOU_ATOL,
    SAM2_STABILITY_ATOL,
    assert_agreement,
    assert_max_abs,
    label_agreement,
)
from sam2vss.config import RefineConfig, SynthConfig
from sam2vss.data import open_dataset
from sam2vss.detect import BatchedDetector, mask_boxes, point_grid
from sam2vss.kernels import kernel_ops
from sam2vss.model import ModelConfig, build, mask_generator
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.synth import synthesize

MODEL = ModelConfig(image_size=256)
# Random weights give flat logits; a small stability offset spreads the scores over 0.4-0.95.
OFFSET = 0.02


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    cfg = SynthConfig(videos=1, frames=4, height=120, width=170, objects=6, train_videos=0, seed=3)
    root = synthesize(tmp_path_factory.mktemp("detect") / "ds", cfg, progress=False)
    image = np.array(Image.open(sorted((root / "data").glob("*/origin/*.jpg"))[0]).convert("RGB"))
    return root, image, build(MODEL)


def _official(model, cfg: RefineConfig):
    return mask_generator(
        model,
        points_per_side=cfg.grid,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_thresh,
        stability_score_offset=cfg.stability_offset,
        box_nms_thresh=cfg.box_nms_thresh,
    )


def test_point_grid_and_boxes_are_sams():
    from sam2.utils.amg import batched_mask_to_box, build_point_grid

    for n in (1, 4, 16, 32):
        assert np.array_equal(point_grid(n), build_point_grid(n))
    masks = torch.zeros((4, 23, 31), dtype=torch.bool)
    masks[1, 3:9, 5:6] = True
    masks[2, 22, 30] = True
    masks[3] = True
    assert torch.equal(mask_boxes(masks), batched_mask_to_box(masks).float())
    assert mask_boxes(masks[:0]).shape == (0, 4)


@pytest.mark.parametrize("grid", [4, 8])
def test_candidates_equal_the_official_generators(scene, grid):
    """Every candidate that passes the IoU and stability filters, in the official order (point
    major, multimask minor): predicted IoU, stability, box and mask."""
    from sam2.utils.amg import MaskData, rle_to_mask

    _, image, model = scene
    cfg = RefineConfig(grid=grid, pred_iou_thresh=0.0, stability_thresh=0.6, stability_offset=OFFSET)
    amg = _official(model, cfg)
    h, w = image.shape[:2]
    with torch.inference_mode():
        amg.predictor.set_image(image)
        points = amg.point_grids[0] * np.array([[w, h]])
        theirs = MaskData()
        for i in range(0, len(points), amg.points_per_batch):
            theirs.cat(amg._process_batch(points[i : i + 64], (h, w), [0, 0, w, h], (h, w), normalize=True))
        backbone = model.forward_image(amg.predictor._transforms(image)[None])
        det = BatchedDetector(model, cfg, kernel_ops("cpu"))
        low_res, iou, pts = det.candidates(*det.features(backbone), (h, w))
        stability = det.stability(low_res, (h, w))
    keep = stability >= cfg.stability_thresh
    assert 0 < int(keep.sum()) < keep.numel(), "the threshold must keep some candidates and drop others"
    up = torch.nn.functional.interpolate(low_res[keep][:, None], (h, w), mode="bilinear")[:, 0] > 0
    print(f"grid {grid}: {int(keep.sum())} of {keep.numel()} candidates kept")
    assert_max_abs(iou[keep], theirs["iou_preds"], atol=SAM2_IOU_ATOL, what="predicted IoU")
    assert_max_abs(stability[keep], theirs["stability_score"], atol=SAM2_STABILITY_ATOL, what="stability")
    assert_max_abs(pts[keep], theirs["points"].float(), atol=1e-4, what="points")
    assert torch.equal(mask_boxes(up), theirs["boxes"].float())
    assert torch.equal(up, torch.from_numpy(np.stack([rle_to_mask(r) for r in theirs["rles"]])))


@pytest.mark.parametrize("nms", [1.0, 0.7])
def test_detection_equals_the_official_generators_output(scene, nms):
    _, image, model = scene
    cfg = RefineConfig(
        grid=8, pred_iou_thresh=0.0, stability_thresh=0.6, stability_offset=OFFSET, box_nms_thresh=nms
    )
    amg = _official(model, cfg)
    with torch.inference_mode():
        records = amg.generate(image)
        backbone = model.forward_image(amg.predictor._transforms(image)[None])
        found = BatchedDetector(model, cfg, kernel_ops("cpu")).detect(backbone, image.shape[:2])
    print(f"nms {nms}: {len(records)} masks")
    assert len(records) == found.masks.shape[0] >= 1
    for k, r in enumerate(records):
        assert np.array_equal(r["segmentation"], found.masks[k].numpy()), f"mask {k}"
        assert r["area"] == int(found.areas[k])
        x, y, bw, bh = r["bbox"]
        assert [x, y, x + bw, y + bh] == found.boxes[k].tolist()
    iou = torch.tensor([r["predicted_iou"] for r in records], dtype=found.iou.dtype)
    stability = torch.tensor([r["stability_score"] for r in records], dtype=found.stability.dtype)
    assert_max_abs(found.iou, iou, atol=SAM2_IOU_ATOL, what=f"nms {nms}: predicted IoU")
    assert_max_abs(found.stability, stability, atol=SAM2_STABILITY_ATOL, what=f"nms {nms}: stability")


def test_low_resolution_stability_is_the_kernel(scene):
    """The faster presets' stability: the amg_stats kernel on the logits as they are."""
    from sam2vss.detect import amg_stats

    _, image, model = scene
    cfg = RefineConfig(grid=4, stability_offset=OFFSET)
    amg = _official(model, cfg)
    with torch.inference_mode():
        backbone = model.forward_image(amg.predictor._transforms(image)[None])
        det = BatchedDetector(model, cfg, kernel_ops("cpu"), low_res_stability=True)
        low_res, _, _ = det.candidates(*det.features(backbone), image.shape[:2])
        exact = BatchedDetector(model, cfg, kernel_ops("cpu")).stability(low_res, image.shape[:2])
        fast = det.stability(low_res, image.shape[:2])
    assert torch.equal(fast, amg_stats(low_res, 0.0, OFFSET, image.shape[:2])[0])
    print(f"low-res vs full-size stability: max |diff| {float((fast - exact).abs().max()):.3f}")


@pytest.mark.parametrize("nms", [1.0, 0.7])
def test_fast_pipeline_with_amg_masklets_agrees_with_reference(scene, tmp_path, nms):
    root, _, _ = scene
    cfg = RefineConfig(
        masks="sam2",
        window=4,
        grid=4,
        pred_iou_thresh=0.0,
        stability_thresh=0.6,
        stability_offset=OFFSET,
        box_nms_thresh=nms,
    )
    (job,) = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    ref = refine_jobs([job], tmp_path / "ref", replace(cfg, pipeline="reference"), MODEL, progress=False)
    fast = refine_jobs([job], tmp_path / "fast", replace(cfg, pipeline="fast"), MODEL, progress=False)
    assert ref.frames == fast.frames == 4 and not fast.failed
    share, _ = label_agreement(
        tmp_path / "fast", tmp_path / "ref", f"AMG masklets, nms {nms}: fast vs reference"
    )
    assert_agreement(share, AGREEMENT, f"AMG masklets, nms {nms}")


def test_shared_keyframe_is_encoded_once(scene):
    """Presets with device preprocessing hand the tracker's keyframe features to detection: the
    image encoder runs once per frame; `exact` runs it once more per window (the image
    predictor's own preprocessing) to stay equal to the reference."""
    from sam2vss.engine import Pipeline
    from sam2vss.video import job_windows

    root, _, _ = scene
    (job,) = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    window = next(iter(job_windows(job, 4)))[1]
    base = dict(masks="sam2", window=4, grid=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    calls = {}
    for preset in ("exact", "fast"):
        refiner = Pipeline.fast(RefineConfig(**base, preset=preset), MODEL)
        images = []
        model = refiner.source.model  # detection's model; the tracker's too at full size
        assert model is refiner.tracker.model
        original = model.forward_image

        def counting(x, original=original, images=images):
            images.append(x.shape[0])
            return original(x)

        model.forward_image = counting
        refiner.refine_window(window)
        calls[preset] = sum(images)
    assert calls == {"exact": 5, "fast": 4}


def test_bench_grid_sweep_times_detection_against_the_official_generator(tmp_path):
    """`bench --grid` (detection only, `--window ''`): per grid, the official generator and each
    preset on the clip's first frame; `exact` keeps exactly the official masks (IoU 1)."""
    import json

    from sam2vss.bench import RANDOM_WEIGHT_DETECTION
    from sam2vss.cli import main

    args = "bench -q --frames 2 --masklets 4 --height 120 --width 170 --preset exact,fastest"
    args = [*args.split(), "--compare-reference", "--window", "", "--grid", "4,8"]
    args += ["--json", str(tmp_path / "d.json")]
    assert main([*args, "--data-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["rows"] == []
    rows = result["detect_rows"]
    assert [(r["pipeline"], r["preset"], r["grid"]) for r in rows] == [
        (pipeline, preset, grid)
        for grid in (4, 8)
        for pipeline, preset in (("reference", "-"), ("fast", "exact"), ("fast", "fastest"))
    ]
    for grid in (4, 8):
        ref, exact, fastest = (r for r in rows if r["grid"] == grid)
        assert ref["masks"] > 0, f"lowered thresholds {RANDOM_WEIGHT_DETECTION} should keep masks"
        assert exact["masks"] == ref["masks"] and exact["mask_iou"] == 1.0
        assert 0.0 <= fastest["mask_iou"] <= 1.0 and all(r["ms"] > 0 for r in (ref, exact, fastest))
    assert main(["bench", "--window", "", "--grid", "0"]) == 2
