"""Re-detection within a window (refine --redetect-every K, RefineConfig.redetect_every): the rule
against a brute-force twin on hand-made masks (the filter, masklets absent before their frame,
paint ranks, votes over the frames a masklet was tracked), and the fast pipeline's labels equal
to the reference's (fp32, `exact`) on a clip where an object enters mid-window. Random weights
at image size 256."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import pytest
import torch

from checks import assert_equal
from helpers import refine_in_memory
from sam2vss.config import RefineConfig, SynthConfig
from sam2vss.data import list_frames, open_dataset, read_label_png
from sam2vss.engine import Pipeline, redetect_frames
from sam2vss.kernels import kernel_ops
from sam2vss.masklets import InstanceMasks, redetected, tracked_masks
from sam2vss.model import ModelConfig
from sam2vss.reference import Carry, Window
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.sinks import write_label_png
from sam2vss.stages import Stages
from sam2vss.synth import synthesize
from sam2vss.video import refiner_windows
from sam2vss.vote import ReferenceOps
from test_overlap import brute_force as overlap_rule

MODEL = ModelConfig(image_size=256)
LOWERED = {"grid": 8, "pred_iou_thresh": 0.0, "stability_thresh": 0.6, "stability_offset": 0.02}


@pytest.mark.parametrize(("every", "frames", "want"), [(0, 6, []), (2, 6, [2, 4]), (2, 5, [2, 4]),
                         (3, 6, [3]), (6, 6, []), (9, 6, []), (1, 3, [1, 2]), (2, 1, [])])  # fmt: skip
def test_redetect_frames(every, frames, want):
    assert list(redetect_frames(every, frames)) == want


# ------------------------------------------------------------------ the rule, brute force
def _pixels(m: np.ndarray) -> frozenset:
    return frozenset(zip(*np.nonzero(m), strict=True))


def _shift(m: np.ndarray, d: int) -> np.ndarray:
    """The fake tracker's motion: d pixels to the right, nothing wraps."""
    out = np.zeros_like(m)
    out[..., d:] = m[..., : m.shape[-1] - d]
    return out


def _largest(items: list, areas: list[int], cap: int | None) -> list:
    if cap is None or len(items) <= cap:
        return items
    keep = sorted(sorted(range(len(items)), key=lambda i: (-areas[i], i))[:cap])
    return [items[i] for i in keep]


def brute_force(ids: dict[int, np.ndarray], labels: np.ndarray, cfg: RefineConfig, cap: int | None):
    """The README's rule on pixel sets: (labels (T, H, W), masklet count). Masklets: the first
    frame's instances, then at each frame t = K, 2K, ... the frame's instances (the source's cap
    first) except those with more than half of their pixels in the union of the masklets tracked
    at t, at most cap - (masklets so far) of them, the largest. A masklet detected at s covers its
    mask shifted t - s pixels at frame t >= s, nothing before; ranks by detection-frame area."""
    masklets: list[tuple[int, np.ndarray]] = []  # (detection frame, mask there)
    for t in [0, *redetect_frames(cfg.redetect_every, len(labels))]:
        found = [ids[t] == k for k in np.unique(ids[t]) if k != 0]
        found = _largest(found, [int(m.sum()) for m in found], cap)
        union = frozenset().union(*(_pixels(_shift(m, t - s)) for s, m in masklets))
        new = [m for m in found if not len(_pixels(m) & union) > m.sum() / 2]
        left = None if cap is None else max(cap - len(masklets), 0)
        masklets += [(t, m) for m in _largest(new, [int(m.sum()) for m in new], left)]
    areas = [int(m.sum()) for _, m in masklets]
    order = list(range(len(masklets)))  # paint order: later wins
    if cfg.paint_order == "area":
        order = sorted(order, key=lambda i: (-areas[i], i))
    hists = np.zeros((len(masklets), cfg.num_classes), dtype=np.int64)
    winners = []
    for t, s in enumerate(labels):
        won = np.full(s.shape, -1)
        for i in order:
            start, m = masklets[i]
            if start <= t:
                mask = _shift(m, t - start)
                won[mask] = i
                hists[i] += np.bincount(s[mask], minlength=cfg.num_classes)
        winners.append(won)
    out = []
    for t, (s, won) in enumerate(zip(labels, winners, strict=True)):
        if cfg.vote_scope == "frame":  # this frame's votes only
            frame = np.zeros_like(hists)
            for i, (start, m) in enumerate(masklets):
                if start <= t:
                    frame[i] = np.bincount(s[_shift(m, t - start)], minlength=cfg.num_classes)
            classes = frame.argmax(1)
        else:
            classes = hists.argmax(1) if len(masklets) else np.zeros(0, dtype=np.int64)
        out.append(np.where(won >= 0, classes[np.maximum(won, 0)] if len(masklets) else s, s))
    return np.stack(out).astype(np.uint8), len(masklets)


class ShiftTracker:
    """A tracker whose masklets move one pixel right per frame: logits +1 inside, -1 outside, at
    the masks' resolution; fills its carries with masklets.tracked_masks, as the real ones do."""

    frames_device = torch.device("cpu")

    def prepare(self, frames):
        return None

    def preprocess(self, window):
        return None

    def precision(self):
        return contextlib.nullcontext()

    def track(self, window, masks, images=None, keyframe=None, carries=()):
        for t in range(len(window.labels)):
            logits = torch.from_numpy(np.where(_shift(masks.numpy(), t), 1.0, -1.0)).float()
            for carry in carries:
                if t == carry.frame:
                    carry.masks = tracked_masks(logits[:, None], carry.size)
            yield logits


def _boxes(shape, boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    ids = np.zeros(shape, dtype=np.uint8)
    for k, (y0, y1, x0, x1) in boxes.items():
        ids[y0:y1, x0:x1] = k
    return ids


# 12 x 16 frames, K = 2, a 6-frame window: objects 1 and 2 on frame 0; on frame 2, 1 and 2 again
# where the tracker has them (dropped), 3 new, 4 with exactly half inside (kept), 5 with 3 of 5
# inside object 1's tracked mask (dropped); on frame 4, 3 again (dropped) and 6 new.
HAND = {
    0: {1: (0, 4, 0, 4), 2: (6, 8, 2, 6)},
    2: {1: (0, 4, 2, 6), 2: (6, 8, 4, 8), 3: (9, 12, 10, 14), 4: (4, 6, 2, 6), 5: (0, 1, 3, 8)},
    4: {3: (9, 12, 12, 16), 6: (0, 2, 12, 14)},
}


def _ids(case: str) -> dict[int, np.ndarray]:
    if case == "hand":
        return {t: _boxes((12, 16), b) for t, b in HAND.items()}
    rng = np.random.default_rng(int(case.removeprefix("random")))
    ids = {}
    for t in (0, 2, 4):
        boxes = {}
        for k in range(1, 6):
            y, x = rng.integers(0, 10), rng.integers(0, 13)
            boxes[k] = (y, y + rng.integers(2, 6), x, x + rng.integers(2, 8))
        ids[t] = _boxes((12, 16), boxes)
    return ids


@pytest.mark.parametrize("ops", ["reference", "kernels"])
@pytest.mark.parametrize(
    ("paint_order", "vote_scope"), [("area", "masklet"), ("amg", "masklet"), ("area", "frame")]
)
@pytest.mark.parametrize("cap", [None, 3])
@pytest.mark.parametrize("case", ["hand", "random0", "random1", "random2"])
def test_refine_window_follows_the_redetection_rule(case, cap, paint_order, vote_scope, ops):
    ids = _ids(case)
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=(6, 12, 16)).astype(np.uint8)
    cfg = RefineConfig(masks="instances", window=6, redetect_every=2, num_classes=5,
                       paint_order=paint_order, vote_scope=vote_scope)  # fmt: skip
    vote_ops = ReferenceOps() if ops == "reference" else kernel_ops("cpu")
    cpu = torch.device("cpu")
    pipeline = Pipeline(cfg, InstanceMasks(cpu, cap), ShiftTracker(), vote_ops, cpu, Stages())
    frames = torch.zeros((6, 3, 12, 16), dtype=torch.uint8)
    window = Window(frames, torch.from_numpy(labels), None, ids[0], redetect_instances={2: ids[2], 4: ids[4]})
    refined = pipeline.refine_window(window)
    want, count = brute_force(ids, labels, cfg, cap)
    assert refined.masklets == count
    assert_equal(refined.labels, torch.from_numpy(want), f"{case}: labels")
    if case == "hand":  # 1, 2; then 3 and 4 on frame 2; then 6 on frame 4 (the cap: 3 in all)
        assert count == (5 if cap is None else 3)


@pytest.mark.parametrize("cap", [None, 1])
@pytest.mark.parametrize("case", ["hand", "random0", "random1"])
def test_redetected_filter(case, cap):
    """masklets.redetected alone: frame 2's detections against the tracked masks there."""
    ids = _ids(case)
    tracked = np.stack([_shift(ids[0] == k, 2) for k in np.unique(ids[0]) if k != 0])
    found = np.stack([ids[2] == k for k in np.unique(ids[2]) if k != 0])
    areas = torch.from_numpy(found.sum((1, 2))).long()
    masks, got_areas = redetected(torch.from_numpy(tracked), torch.from_numpy(found), areas, cap)
    union = frozenset().union(*(_pixels(m) for m in tracked))
    keep = [m for m in found if not len(_pixels(m) & union) > m.sum() / 2]
    keep = _largest(keep, [int(m.sum()) for m in keep], cap)
    assert [_pixels(m) for m in masks.numpy()] == [_pixels(m) for m in keep]
    assert_equal(got_areas, torch.tensor([int(m.sum()) for m in keep], dtype=torch.int64), f"{case}: areas")
    if case == "hand":
        assert len(keep) == (2 if cap is None else 1)  # 3 and 4; the cap keeps 3 (12 px)


def test_redetected_refuses_masks_at_another_size():
    with pytest.raises(ValueError, match="masklet source's resolution"):
        redetected(torch.zeros(1, 8, 8, dtype=torch.bool), torch.zeros(1, 8, 9, dtype=torch.bool),
                   torch.zeros(1, dtype=torch.int64))  # fmt: skip


# ------------------------------------------------------------------ both pipelines
ENTERS = 2  # the clip's instances other than KEPT are in its instance masks from this frame on
KEPT = (2,)
ENTERING = 200


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 6-frame clip whose instances other than KEPT enter at frame ENTERS (their ids removed
    before), and an instance ENTERING that appears there where the first window's masklets are
    not tracked at that frame (random weights track a mask over most of the frame: the clip's own
    objects lie inside it), so a re-detection at frame 2 has a new object to find."""
    root = tmp_path_factory.mktemp("redetect") / "ds"
    cfg = SynthConfig(videos=1, frames=6, height=48, width=80, objects=3, train_videos=0, seed=11)
    synthesize(root, cfg, progress=False)
    (job,) = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    names = list_frames(job.instance_dir)
    for n in names[:ENTERS]:
        ids = read_label_png(job.instance_dir / n)
        write_label_png(job.instance_dir / n, np.where(np.isin(ids, KEPT), ids, 0).astype(np.uint8))
    refiner = Pipeline.build(RefineConfig(masks="instances", window=6, pipeline="fast"), MODEL)
    _, first = next(iter(refiner_windows(refiner, job)))
    tracked = refiner.refine_window(replace(first, next_keyframe=ENTERS)).carry.masks.any(0).numpy()
    for n in names[ENTERS:]:
        ids = read_label_png(job.instance_dir / n)
        write_label_png(job.instance_dir / n, np.where(~tracked & (ids == 0), ENTERING, ids).astype(np.uint8))
    return root, [job]


class Recorded(NamedTuple):
    """One window of a recorded run."""

    window: Window
    detected: list[torch.Tensor]  # (N, H, W) bool per detection (keyframe, then re-detections)
    tracked: list[torch.Tensor]  # (M, H, W) bool per tracker run (group)
    labels: torch.Tensor
    masklets: int
    carry: Carry | None  # refine_video hands it on and drops it from the Refined


def _refine(jobs, out, cfg: RefineConfig) -> list[Recorded]:
    refiner = Pipeline.build(cfg, MODEL, cfg.pipeline)
    run, detect, track, windows = refiner.refine_window, refiner.source.keyframe, refiner.tracker.track, []

    def recorded_detect(*args, **kwargs):
        masks, areas = detect(*args, **kwargs)
        windows[-1][1].append(masks.cpu())
        return masks, areas

    def recorded_track(window, masks, *args, **kwargs):
        windows[-1][2].append(masks.cpu())
        yield from track(window, masks, *args, **kwargs)

    def recorded(window, **kwargs):
        windows.append([window, [], []])
        refined = run(window, **kwargs)
        windows[-1] += [refined.labels.clone(), refined.masklets, refined.carry]
        return refined

    refiner.refine_window, refiner.source.keyframe = recorded, recorded_detect
    refiner.tracker.track = recorded_track
    report = refine_jobs(jobs, out, cfg, MODEL, progress=False, refiner=refiner)
    assert not report.failed, report.failed
    return [Recorded(*w) for w in windows]


CASES = {  # on the 6-frame clip
    "instances_w6_k2": RefineConfig(masks="instances", window=6, redetect_every=2),
    "sam2_w6_k3": RefineConfig(masks="sam2", window=6, redetect_every=3, **LOWERED),
    "instances_w4_k2_overlap2": RefineConfig(masks="instances", window=4, redetect_every=2, window_overlap=2),
}


SLOW = {"sam2_w6_k3"}  # ~5-9 s on 2 cores; the detection path is the keyframe's, tested without the flag


@pytest.fixture(
    scope="module", params=[pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def runs(request, clip, tmp_path_factory):
    _, jobs = clip
    cfg, tmp = CASES[request.param], tmp_path_factory.mktemp(request.param)
    ref = _refine(jobs, tmp / "reference", replace(cfg, pipeline="reference"))
    fast = _refine(jobs, tmp / "fast", replace(cfg, pipeline="fast"))
    return request.param, jobs[0], tmp, ref, fast


def test_fast_equals_reference_with_redetection(runs):
    """Every window's detections, each group's prompt masks, painted labels and masklet counts,
    and every written frame: equal exactly; some window adds masklets mid-window."""
    case, job, tmp, ref, fast = runs
    assert len(ref) == len(fast)
    for i, (r, f) in enumerate(zip(ref, fast, strict=True)):
        assert len(f.detected) == len(r.detected) and len(f.tracked) == len(r.tracked)
        for k, (a, b) in enumerate(zip(f.detected, r.detected, strict=True)):
            assert_equal(a, b, f"{case} window {i}: detection {k}")
        for k, (a, b) in enumerate(zip(f.tracked, r.tracked, strict=True)):
            assert_equal(a, b, f"{case} window {i}: group {k}'s masklets")
        assert_equal(f.labels, r.labels, f"{case} window {i}: painted labels")
        assert f.masklets == r.masklets == sum(len(m) for m in r.tracked)
    names = job.label_names
    got = np.stack([read_label_png(tmp / "fast" / job.name / n) for n in names])
    want = np.stack([read_label_png(tmp / "reference" / job.name / n) for n in names])
    assert_equal(got, want, f"{case}: written labels")
    added = sum(sum(len(m) for m in r.tracked[1:]) for r in ref)
    print(f"{case}: {added} masklets added by re-detection, {sum(r.masklets for r in ref)} in all")
    for a, b in pairwise(ref):  # with overlap: the next window's carried masklets, all groups'
        assert a.carry.masks.shape[0] == a.masklets
        want = overlap_rule(a.carry.masks.numpy(), b.detected[0].numpy(), None)
        assert [_pixels(m) for m in b.tracked[0].numpy()] == want, f"{case}: the carry-over"
    if case.startswith("instances"):  # ENTERING at least
        assert added > 0, f"{case}: nothing was re-detected, so the test shows nothing"
        assert len(ref[0].tracked) > 1 and len(ref[0].tracked[0]) == len(KEPT)


@pytest.mark.slow  # a fast run more (~3 s); the folder runs above are the default set
@pytest.mark.parametrize("runs", ["instances_w6_k2"], indirect=True)
def test_in_memory_api_redetects_the_same(clip, runs):
    """Refiner.refine_video on the clip in memory (its instance ids per frame): the folder run's
    labels and masklet counts."""
    case, job, tmp, _, fast = runs
    refined, refiner = refine_in_memory(clip[0], job.name, replace(CASES[case], pipeline="fast"), MODEL)
    written = np.stack([read_label_png(tmp / "fast" / job.name / n) for n in job.label_names])
    assert_equal(refined, written, f"{case}: Refiner.refine_video vs refine")
    assert [s.masklets for s in refiner.window_stats] == [r.masklets for r in fast]
