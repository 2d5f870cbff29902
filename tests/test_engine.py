"""The fast pipeline against the reference: batched propagation equal to SAM2's per-object loop,
and refined labels agreeing on >= 99.9% of pixels (random weights at image size 256, masklets
prompted from the synthetic instance masks so their number is realistic)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checks import (
    AGREEMENT,
    UPSAMPLE_ATOL,
    assert_agreement,
    assert_equal,
    assert_ids_explain_labels,
    label_agreement,
)
from sam2vss.config import PRESETS, EngineConfig, RefineConfig, SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.engine import Pipeline
from sam2vss.masklets import InstanceMasks
from sam2vss.model import ModelConfig
from sam2vss.propagate import BatchedTracker, preprocess
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sources import to_rgb
from sam2vss.synth import synthesize
from sam2vss.video import job_windows

MODEL = ModelConfig(image_size=256)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    cfg = SynthConfig(videos=2, frames=7, height=64, width=96, objects=5, train_videos=0, seed=5)
    root = synthesize(tmp_path_factory.mktemp("engine") / "ds", cfg, progress=False)
    return open_dataset(root), root / "pred_base"


@pytest.fixture(scope="module")
def reference():
    return Pipeline.reference(RefineConfig(masks="instances", window=7), MODEL)


def test_batched_propagation_equals_the_per_object_predictor(clip, reference):
    ds, pred = clip
    window = next(iter(job_windows(dataset_jobs(ds, pred, "val")[0], 7)))[1]
    masks, _ = reference.source.keyframe(window)
    assert len(masks) >= 3
    official = list(reference.tracker.track(window, masks))
    tracker = BatchedTracker(reference.tracker.predictor)
    with torch.inference_mode():
        low = list(
            tracker.track(
                torch.stack([preprocess(f, 256) for f in to_rgb(window.frames)]),
                masks,
            )
        )
    assert len(low) == len(official) == 7
    for t, (ours, theirs) in enumerate(zip(low, official, strict=True)):
        ours = F.interpolate(ours, size=theirs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        err = (ours - theirs).abs().max().item()
        assert err < 1e-4, f"frame {t}: logits differ by {err}"
        assert torch.equal(ours > 0, theirs > 0), f"frame {t}: masks differ"


@pytest.mark.parametrize("tokens", [256, 512, 1024])
def test_chunked_memory_attention_equals_one_call(clip, reference, tokens):
    """ObjectChunks runs the memory attention on 1, 2 or 4 masklets at a time (uneven splits of
    the clip's masklets): the logits of every frame equal the one-call tracker's, and the model's
    own memory attention is back in place afterwards."""
    ds, pred = clip
    window = next(iter(job_windows(dataset_jobs(ds, pred, "val")[0], 7)))[1]
    masks, _ = reference.source.keyframe(window)
    per_call = tokens // 256  # 256 image tokens per masklet at image size 256
    assert per_call == 1 or len(masks) % per_call, "the split should end in a partial chunk"
    images = torch.stack([preprocess(f, 256) for f in to_rgb(window.frames)])
    predictor = reference.tracker.predictor
    attention = predictor.memory_attention
    with torch.inference_mode():
        whole = list(BatchedTracker(predictor).track(images, masks))
        batches = []
        hook = attention.register_forward_hook(lambda _m, args, _out: batches.append(args[1].shape[1]))
        try:
            chunked = list(BatchedTracker(predictor, chunk_tokens=tokens).track(images, masks))
        finally:
            hook.remove()
    assert predictor.memory_attention is attention
    n = len(masks)
    assert batches == ([per_call] * (n // per_call) + [n % per_call] * (n % per_call > 0)) * 6
    err = max((a - b).abs().max().item() for a, b in zip(whole, chunked, strict=True))
    print(f"chunks of {tokens} tokens: max |logit difference| {err:.3g}")
    assert err <= 1e-5
    assert all(torch.equal(a > 0, b > 0) for a, b in zip(whole, chunked, strict=True))
    with pytest.raises(ValueError, match="chunk_tokens"):
        BatchedTracker(predictor, chunk_tokens=0)


@pytest.mark.parametrize(
    "cfg",
    [
        RefineConfig(masks="instances", window=7),  # one window covers the clip
        RefineConfig(masks="instances", window=3),  # T = 7 not divisible by W
        RefineConfig(masks="instances", window=1, vote_scope="frame"),
        RefineConfig(masks="instances", window=32, paint_order="logit"),
    ],
    ids=["w7", "w3", "w1_frame", "w32_logit"],
)
def test_fast_labels_agree_with_reference(clip, tmp_path, cfg):
    ds, pred = clip
    jobs = dataset_jobs(ds, pred, "val")
    refine_jobs(jobs, tmp_path / "ref", replace(cfg, pipeline="reference"), MODEL, progress=False)
    fast = refine_jobs(jobs, tmp_path / "fast", replace(cfg, pipeline="fast"), MODEL, progress=False)
    assert fast.frames == 14 and not fast.failed
    share, _ = label_agreement(tmp_path / "fast", tmp_path / "ref", "fast vs reference")
    assert_agreement(share, AGREEMENT, "fast vs reference")
    entry = next(iter(json.loads((tmp_path / "fast" / "manifest.json").read_text())["videos"].values()))
    assert {"decode wait", "encode", "propagate", "aggregate+vote", "write wait"} <= set(
        entry["stages_ms_per_frame"]
    )
    assert 0 <= entry["decode_wait_share"] < 1


LOWERED = {"grid": 8, "pred_iou_thresh": 0.0, "stability_thresh": 0.6, "stability_offset": 0.02}
IDS_CASES = {
    "instances_w7": RefineConfig(masks="instances", window=7),
    "instances_w3": RefineConfig(masks="instances", window=3),
    "instances_w1_frame": RefineConfig(masks="instances", window=1, vote_scope="frame"),
    "instances_w32_logit": RefineConfig(masks="instances", window=32, paint_order="logit"),
    "sam2_w7": RefineConfig(masks="sam2", window=7, **LOWERED),  # one detection (the official AMG is slow)
    "superpixel_w3": RefineConfig(masks="superpixel", window=3, vote_scope="frame"),
}


def _recording(tracker, logits: list[torch.Tensor]):
    """The reference tracker's track(), keeping each frame's (N, H, W) logits in `logits`."""
    track = tracker.track

    def recorded(*args, **kwargs):
        for frame in track(*args, **kwargs):
            logits.append(frame)
            yield frame

    return recorded


SLOW_IDS = {
    "instances_w7",
    "sam2_w7",
    "instances_w32_logit",
}  # 6-30 s each on 2 cores; the others cover each path


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_IDS else c for c in IDS_CASES]
)
def test_masklet_ids_fast_equal_reference_and_explain_the_labels(clip, case):
    """refine_window(keep_ids=True): the fast pipeline's masklet ids equal the reference's
    exactly, as the labels do (with paint order logit, except at pixels where the two winners'
    logits tie within the upsampling's rounding), every window's ids explain its labels (base
    where no masklet won, one class per masklet region), and ids stay within 0..N."""
    cfg = IDS_CASES[case]
    ds, pred = clip
    windows = [w for _, w in job_windows(dataset_jobs(ds, pred, "val")[0], cfg.window)]
    reference, fast = Pipeline.reference(cfg, MODEL), Pipeline.fast(cfg, MODEL)
    logits: list[torch.Tensor] = []  # the reference's, per frame
    if reference.tracker is not None:
        reference.tracker.track = _recording(reference.tracker, logits)
    ref = [reference.refine_window(w, keep_ids=True) for w in windows]
    got = [fast.refine_window(w, keep_ids=True) for w in windows]
    want_ids, got_ids = torch.cat([r.ids for r in ref]).long(), torch.cat([r.ids for r in got]).long()
    assert_equal(torch.cat([r.labels for r in got]), torch.cat([r.labels for r in ref]), f"{case}: labels")
    differ = (got_ids != want_ids).nonzero()
    if cfg.paint_order == "logit" and len(differ):  # a tie: the logits of both winners (0: none)
        print(f"{case}: {len(differ)} of {got_ids.numel()} pixels have another winner (logits tie)")
        frames = [torch.cat([torch.zeros_like(f[:1]), f]) for f in logits]  # index 0: no masklet, 0
        t, y, x = differ.unbind(1)
        at = torch.stack([frames[i][:, j, k] for i, j, k in differ.tolist()])  # (D, N + 1)
        gap = at.gather(1, got_ids[t, y, x][:, None]) - at.gather(1, want_ids[t, y, x][:, None])
        assert float(gap.abs().max()) <= UPSAMPLE_ATOL, f"{case}: winners differ by {gap.abs().max()}"
    else:
        assert_equal(got_ids, want_ids, f"{case}: masklet ids")
    scope = cfg.vote_scope
    [assert_ids_explain_labels(r.ids, r.labels, w.labels, scope, f"{case} window {k}") for k, (r, w) in
     enumerate(zip(ref, windows, strict=True))]  # fmt: skip
    assert int(want_ids.max()) > 0, f"{case}: no masklet won a pixel, so the ids test nothing"
    if cfg.masks == "superpixel":  # a partition: every pixel has its segment
        assert int(want_ids.min()) == 1
    else:
        assert all(int(r.ids.int().max()) <= r.masklets for r in ref)
    assert reference.refine_window(windows[0]).ids is None  # only when asked


def test_zero_masklets_and_one_frame_video(tmp_path):
    cfg = SynthConfig(videos=1, frames=1, height=48, width=64, objects=0, train_videos=0, seed=1)
    root = synthesize(tmp_path / "ds", cfg, progress=False)
    jobs = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    report = refine_jobs(
        jobs, tmp_path / "o", RefineConfig(masks="instances", pipeline="fast"), MODEL, progress=False
    )
    assert report.frames == 1
    (out,) = list((tmp_path / "o").rglob("*.png"))
    assert np.array_equal(
        read_label_png(out), read_label_png(root / "pred_base" / out.parent.name / out.name)
    )


def test_bench_compares_pipelines(tmp_path, capsys):

    from sam2vss.cli import main

    args = "bench -q --frames 3 --masklets 3 --window 1,3 --height 48 --width 64 --compare-reference"
    args += " --preset exact,fastest"
    paths = [
        "--json",
        str(tmp_path / "b.json"),
        "--plot",
        str(tmp_path / "b.png"),
        "--data-dir",
        str(tmp_path),
    ]
    assert main(args.split() + paths) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["pipeline"], r["preset"], r["window"]) for r in rows] == [
        ("reference", "-", 1),
        ("fast", "exact", 1),
        ("fast", "fastest", 1),
        ("reference", "-", 3),
        ("fast", "exact", 3),
        ("fast", "fastest", 3),
    ]
    fast = [r for r in rows if r["pipeline"] == "fast"]
    assert all(
        r["fps"] > 0 and r["floor_ms"] > 0 and r["model_gflop_per_frame"] > 0 for r in rows if r in fast
    )
    exact = [r["agreement"] for r in fast if r["preset"] == "exact"]
    assert_agreement(min(exact), AGREEMENT, "bench rows of preset exact, the lowest")
    assert {"decode wait", "encode", "propagate", "aggregate+vote", "write wait"} <= set(fast[0]["stages_ms"])
    out = capsys.readouterr().out
    assert "matmul ceiling" in out and "frames/s" in out
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_device_preprocessing_keeps_agreement(clip, tmp_path):
    """The fused device preprocessing (one uint8 level from Pillow's) against the reference."""
    ds, pred = clip
    jobs = dataset_jobs(ds, pred, "val")
    cfg = RefineConfig(masks="instances", window=7)
    refine_jobs(jobs, tmp_path / "ref", replace(cfg, pipeline="reference"), MODEL, progress=False)
    fast = replace(cfg, pipeline="fast", engine=EngineConfig(preprocess="device"))
    refine_jobs(jobs, tmp_path / "fast", fast, MODEL, progress=False)
    share, _ = label_agreement(tmp_path / "fast", tmp_path / "ref", "device preprocessing vs reference")
    assert_agreement(share, AGREEMENT, "device preprocessing vs reference")


def _window_and_masks(clip, refiner):
    ds, pred = clip
    window = next(iter(job_windows(dataset_jobs(ds, pred, "val")[0], 7)))[1]
    masks, _ = refiner.source.keyframe(window)
    return refiner.tracker.preprocess(window), masks


def test_memory_frames_bound_the_state_and_cover_the_model(clip):
    """memory_frames=6 keeps exactly what SAM2 reads within a 7-frame window (6 memory frames,
    the prompt, pointers of all earlier frames): equal logits; memory_frames=2 keeps 2 frames."""
    exact = Pipeline.fast(RefineConfig(masks="instances", window=7), MODEL)
    images, masks = _window_and_masks(clip, exact)
    tracker = exact.tracker.batched
    with torch.inference_mode():
        ref = list(tracker.track(images, masks))
        bounded = BatchedTracker(tracker.model, memory_frames=6, chunk_tokens=tracker.chunk_tokens)
        assert all(torch.equal(a, b) for a, b in zip(ref, bounded.track(images, masks), strict=True))
        small = BatchedTracker(tracker.model, memory_frames=2)
        sizes = []
        original = small._step

        def spy(state, *args):
            out = original(state, *args)
            sizes.append(len(state.non_cond))
            return out

        small._step = spy
        list(small.track(images, masks))
    assert sizes == [1, 2, 2, 2, 2, 2]


def test_presets_cap_masklets_and_shrink_tracking(clip):
    fastest = Pipeline.fast(RefineConfig(masks="instances", window=7, preset="fastest"), MODEL)
    assert fastest.tracker.model.image_size == PRESETS["fastest"].track_size(256) == 128
    assert fastest.tracker.batched.memory_frames == PRESETS["fastest"].memory_frames
    ds, pred = clip
    window = next(iter(job_windows(dataset_jobs(ds, pred, "val")[0], 7)))[1]
    all_masks, all_areas = InstanceMasks().keyframe(window)
    fastest.source.max_masklets = 2
    masks, areas = fastest.source.keyframe(window)
    assert len(all_masks) > 2 and len(masks) == 2
    assert sorted(areas.tolist()) == sorted(all_areas.tolist())[-2:]
    with torch.inference_mode():
        (first, *_) = fastest.tracker.batched.track(fastest.tracker.preprocess(window), masks)
    assert first.shape == (2, 1, 32, 32)  # 128 / 4


def test_labels_at_another_resolution_follow_one_rule(tmp_path):
    """Frames 241x427, labels 121x214 (odd sizes): both pipelines resize SAM2's low-resolution
    logits once to the labels' size (reference.py), so they agree as at equal sizes."""
    from PIL import Image

    from sam2vss.sinks import write_label_png

    cfg = SynthConfig(videos=1, frames=3, height=241, width=427, objects=4, train_videos=0, seed=8)
    root = synthesize(tmp_path / "ds", cfg, progress=False)
    small = tmp_path / "small"
    for p in sorted((root / "pred_base").rglob("*.png")):
        label = Image.fromarray(read_label_png(p)).resize((214, 121), Image.NEAREST)
        write_label_png(small / p.parent.name / p.name, np.asarray(label))
    jobs = dataset_jobs(open_dataset(root), small, "val")
    refine = RefineConfig(masks="instances", window=3)
    refine_jobs(jobs, tmp_path / "ref", replace(refine, pipeline="reference"), MODEL, progress=False)
    refine_jobs(jobs, tmp_path / "fast", replace(refine, pipeline="fast"), MODEL, progress=False)
    what = "labels at 121x214, frames at 241x427"
    share, pixels = label_agreement(tmp_path / "fast", tmp_path / "ref", what)
    assert pixels == 3 * 121 * 214
    assert_agreement(share, at_least=0.9999, what=what)
