"""The reference refiner: vote semantics pinned on hand-made masklets, SAM2 end to end with random
weights at image size 256, superpixel refinement quality, and resumable, fault-isolated runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2vss.config import MetricConfig, RefineConfig, SynthConfig
from sam2vss.data import open_dataset, read_label_png
from sam2vss.evaluate import evaluate
from sam2vss.model import ModelConfig
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.synth import synthesize
from sam2vss.video import job_windows
from sam2vss.vote import aggregate, aggregate_logits, decide, paint, paint_order, vote_histogram

C = 6


def _masks(*boxes, shape=(6, 8)) -> torch.Tensor:
    out = torch.zeros((len(boxes), *shape), dtype=torch.bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[k, y0:y1, x0:x1] = True
    return out


def _refine_frame(masks, labels, order="area"):
    areas = masks.flatten(1).sum(1)
    ids = aggregate(masks, paint_order(areas, order))
    return paint(ids, decide(vote_histogram(masks, labels, C)), labels)


def test_area_order_lets_smaller_masklets_win_and_outside_keeps_s():
    labels = torch.zeros((6, 8), dtype=torch.uint8)
    labels[:, 4:] = 2
    labels[0, 0] = 5  # outside every masklet: must survive
    labels[2:4, 5:7] = 3
    masks = _masks((2, 4, 5, 7), (1, 6, 0, 8))  # AMG order: a small masklet, then a big one around it
    big_class = decide(vote_histogram(masks, labels, C))[1]
    out = _refine_frame(masks, labels)
    assert out[0, 0] == 5
    assert (out[2:4, 5:7] == 3).all()  # area order paints the small one last: it wins
    assert (out[1:6][~masks[0, 1:6]] == big_class).all()
    amg = _refine_frame(masks, labels, order="amg")  # AMG order paints the big one last: it wins
    assert (amg[1:6] == big_class).all() and amg[0, 0] == 5


def test_votes_read_the_unmodified_labels():
    labels = torch.zeros((6, 8), dtype=torch.uint8)
    labels[:, :3] = 4  # 18 pixels of class 4, 30 of class 0
    small = (0, 6, 0, 3)  # exactly the class-4 strip
    masks = _masks((0, 6, 0, 8), small)
    hist = vote_histogram(masks, labels, C)
    assert hist[0, 4] == 18 and hist[0, 0] == 30  # the big masklet counts the strip it loses
    out = _refine_frame(masks, labels)
    assert (out[:, :3] == 4).all() and (out[:, 3:] == 0).all()


def test_ties_go_to_the_lowest_class():
    labels = torch.tensor([[3, 3, 1, 1]], dtype=torch.uint8)
    masks = torch.ones((1, 1, 4), dtype=torch.bool)
    assert decide(vote_histogram(masks, labels, C)).tolist() == [1]


def test_highest_logit_order_and_empty_masklets():
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[1.0, -2.0, 3.0]]])
    assert aggregate_logits(logits).tolist() == [[0, -1, 1]]
    assert aggregate_logits(torch.zeros((0, 1, 3))).tolist() == [[-1, -1, -1]]
    labels = torch.tensor([[2, 2, 2]], dtype=torch.uint8)
    assert paint(aggregate_logits(torch.zeros((0, 1, 3))), decide(torch.zeros((0, C))), labels).tolist() == [
        [2, 2, 2]
    ]


# ------------------------------------------------------------------ SAM2 end to end (random weights)
MODEL = ModelConfig(image_size=256)
TINY = SynthConfig(videos=2, frames=5, height=64, width=96, objects=3, train_videos=0, seed=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = synthesize(tmp_path_factory.mktemp("tiny") / "ds", TINY, progress=False)
    return open_dataset(root), root / "pred_base"


def _run(tiny, out, cfg, model=MODEL):
    ds, pred = tiny
    cfg = replace(cfg, pipeline="reference")  # the pipeline these tests were written for
    return refine_jobs(dataset_jobs(ds, pred, "val"), out, cfg, model, progress=False)


def _read_all(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): read_label_png(p) for p in sorted(folder.rglob("*.png"))}


def test_sam2_amg_masklets_end_to_end(tiny, tmp_path):
    from sam2vss.engine import Pipeline

    cfg = RefineConfig(masks="sam2", window=2, grid=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    ds, pred = tiny
    job = dataset_jobs(ds, pred, "val")[0]
    window = next(iter(job_windows(job, 2)))[1]
    masks, areas = Pipeline.reference(cfg, MODEL).source.keyframe(window)
    assert len(masks) >= 1 and len(areas) == len(masks)  # lowered thresholds: masks exist
    report = _run(tiny, tmp_path / "out", cfg)
    assert report.done == ["0000_synth5", "0001_synth5"] and not report.failed
    out = _read_all(tmp_path / "out")
    assert len(out) == 2 * TINY.frames  # T=5 not divisible by W=2: every frame written
    assert all(o.max() < cfg.num_classes and o.shape == (64, 96) for o in out.values())


def test_instance_masklets_vote_scopes_agree_for_one_frame_windows(tiny, tmp_path):
    a = _run(tiny, tmp_path / "m", RefineConfig(masks="instances", window=1, vote_scope="masklet"))
    b = _run(tiny, tmp_path / "f", RefineConfig(masks="instances", window=1, vote_scope="frame"))
    assert a.frames == b.frames == 2 * TINY.frames
    out_m, out_f = _read_all(tmp_path / "m"), _read_all(tmp_path / "f")
    assert out_m.keys() == out_f.keys()
    assert all((out_m[k] == out_f[k]).all() for k in out_m)


def test_instance_masklets_change_labels_only_inside_masklets(tiny, tmp_path):
    _run(tiny, tmp_path / "o", RefineConfig(masks="instances", window=5, paint_order="logit"))
    _, pred = tiny
    changed = 0
    for name, refined in _read_all(tmp_path / "o").items():
        base = read_label_png(pred / name)
        changed += int((refined != base).sum())
        assert refined.max() < 124
    assert changed > 0  # prompted with real object masks, the refiner does change labels


def test_run_header_and_masklet_summary_in_output_and_manifest(tiny, tmp_path, capsys):
    import shutil

    from sam2vss.cli import main

    root = tmp_path / "ds"
    shutil.copytree(tiny[0].root, root)
    (root / "one.txt").write_text("0001_synth5\n")  # one video of 5 frames: windows of 3 + 2
    ds, pred, out = open_dataset(root), root / "pred_base", tmp_path / "o"
    argv = ["refine", "--data", str(root), "--pred", str(pred), "--out", str(out), "--window", "3"]
    argv += ["--split", "one", "--masks", "instances", "--checkpoint", "none", "--image-size", "256"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    header = stdout.splitlines()[0]
    assert header.startswith(
        "run: device cpu, pipeline fast, preset exact, backend eager, kernels host, decoder frames,"
        " model sam2.1_hiera_t at 256, random weights, runner local; sam2vss 0.1.0, torch "
    )
    assert {k: manifest["run"][k] for k in ("device", "pipeline", "kernels", "decoder")} == {
        "device": "cpu",
        "pipeline": "fast",
        "kernels": "host",
        "decoder": "frames",
    }
    for video in ("0001_synth5",):
        names = sorted(p.name for p in ds.instance_dir(video).iterdir())
        ids = [read_label_png(ds.instance_dir(video) / names[t]) for t in (0, 3)]  # windows start at 0, 3
        m = manifest["videos"][video]["masklets"]
        assert [w[0] for w in m["per_window"]] == [len(set(np.unique(i)) - {0}) for i in ids]
        assert all(0.0 <= w[1] <= 1.0 for w in m["per_window"]) and m["covered"] == pytest.approx(
            (3 * m["per_window"][0][1] + 2 * m["per_window"][1][1]) / 5, abs=1e-4
        )
        line = f"{video}: 5 frames, "
        assert any(
            s.startswith(line) and f"{m['covered']:.1%} of pixels covered" in s for s in stdout.splitlines()
        )


def test_random_weights_warn_that_masklets_cover_nothing(tiny, tmp_path, caplog):
    cfg = RefineConfig(masks="sam2", window=5, grid=4)  # the paper's thresholds: random weights find no masks
    report = _run(tiny, tmp_path / "o", cfg)
    assert len(report.done) == 2
    assert (
        "0000_synth5: masklets cover 0.00% of the pixels, so the output is nearly the base labels"
        in caplog.text
    )
    _, pred = tiny
    assert all((o == read_label_png(pred / name)).all() for name, o in _read_all(tmp_path / "o").items())


def test_whole_run_progress_advances_per_frame(medium, tmp_path, monkeypatch):
    from tqdm import tqdm

    import sam2vss.refine

    steps, descriptions = [], []

    class Recorder(tqdm):
        def update(self, n=1):
            super().update(n)
            steps.append((self.n, self.total))

        def set_description(self, desc=None, refresh=True):
            super().set_description(desc, refresh)
            descriptions.append(desc)

    monkeypatch.setattr(sam2vss.refine, "tqdm", Recorder)
    jobs = dataset_jobs(open_dataset(medium), medium / "pred_base", "val")
    refine_jobs(jobs, tmp_path / "o", SP, progress=True)
    assert steps == [(n, 36) for n in range(1, 37)]  # one bar for the run, one step per written frame
    assert descriptions == [f"videos {k}/3" for k in range(4)]


# ------------------------------------------------------------------ superpixels
def test_superpixel_refinement_improves_boundaries_and_consistency(tmp_path):
    root = synthesize(
        tmp_path / "ds", SynthConfig(videos=3, frames=24, height=240, width=428, train_videos=0), False
    )
    ds = open_dataset(root)
    cfg = RefineConfig(masks="superpixel", vote_scope="frame")
    report = refine_jobs(dataset_jobs(ds, root / "pred_base", "val"), tmp_path / "sp", cfg, progress=False)
    assert len(report.done) == 3
    base = evaluate(ds, root / "pred_base", cfg=MetricConfig(), progress=False).metrics
    refined = evaluate(ds, tmp_path / "sp", cfg=MetricConfig(), progress=False).metrics
    print(f"base {base}\nrefined {refined}")
    assert refined["mbiou"] > base["mbiou"] + 0.05
    assert refined["mvc16"] > base["mvc16"]


def test_superpixels_need_frame_scope():
    with pytest.raises(ValueError, match="vote_scope='frame'"):
        RefineConfig(masks="superpixel")


# ------------------------------------------------------------------ resumable runs
SP = RefineConfig(masks="superpixel", vote_scope="frame", superpixel_size=64)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "sam2vss", "refine", "-q", *args], capture_output=True, text=True, env=env
    )


def _cli_superpixel(root: Path, out: Path):
    return _cli(
        "--data", str(root), "--pred", str(root / "pred_base"), "--out", str(out), "--masks", "superpixel"
    )


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    cfg = SynthConfig(videos=3, frames=12, height=48, width=64, train_videos=0, seed=2)
    return synthesize(tmp_path_factory.mktemp("medium") / "ds", cfg, progress=False)


def test_killed_run_resumes_to_identical_outputs(medium, tmp_path):
    args = [
        "--data",
        str(medium),
        "--pred",
        str(medium / "pred_base"),
        "--masks",
        "superpixel",
        "--superpixel-size",
        "64",
    ]
    clean = _cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    env = {**os.environ, "SAM2VSS_FAULT_EXIT_AFTER": "17"}  # dies in the middle of the 2nd video
    killed = _cli(*args, "--out", str(tmp_path / "resumed"), env=env)
    assert killed.returncode == 77
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert [v for v, e in manifest["videos"].items() if e["status"] == "done"] == ["0000_synth2"]
    resumed = _cli(*args, "--out", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr
    assert not list(
        (tmp_path / "resumed").rglob("*.tmp")
    )  # a kill mid-write leaves some; the rerun clears them
    assert "skipped 1 already done" in resumed.stdout
    assert _digest(tmp_path / "resumed") == _digest(tmp_path / "clean")


def test_rerun_after_completion_does_no_work(medium, tmp_path):
    jobs = dataset_jobs(open_dataset(medium), medium / "pred_base", "val")
    refine_jobs(jobs, tmp_path / "o", SP, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*")}
    again = refine_jobs(jobs, tmp_path / "o", SP, progress=False)
    assert again.done == [] and len(again.skipped) == 3
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*")} == mtimes


def test_bad_video_is_reported_and_others_complete(medium, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(medium, root)
    bad = sorted((root / "data" / "0001_synth2" / "origin").iterdir())[4]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    run = _cli_superpixel(root, tmp_path / "o")
    assert run.returncode == 1
    assert "sam2vss refine: error: video 0001_synth2 failed" in run.stderr and bad.name in run.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {v: e["status"] for v, e in manifest["videos"].items()} == {
        "0000_synth2": "done",
        "0002_synth2": "done",
        "0001_synth2": "failed",
    }
    assert "Traceback" in manifest["videos"]["0001_synth2"]["traceback"]


def test_other_configuration_in_out_is_refused(medium, tmp_path):
    jobs = dataset_jobs(open_dataset(medium), medium / "pred_base", "val")
    refine_jobs(jobs[:1], tmp_path / "o", SP, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        refine_jobs(
            jobs[:1], tmp_path / "o", RefineConfig(masks="superpixel", vote_scope="frame"), progress=False
        )


def test_refine_cli_errors(medium, tmp_path):
    run = _cli("--data", str(medium), "--pred", str(medium / "pred_base"), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "needs --checkpoint PATH" in run.stderr
    run = _cli(
        "--data",
        str(medium),
        "--pred",
        str(medium / "pred_base"),
        "--out",
        str(tmp_path / "o"),
        "--pipeline",
        "fast",
        "--masks",
        "superpixel",
    )
    assert run.returncode == 0, run.stderr  # superpixels have no model stage: fast runs the same code


def test_refine_video_file_with_label_folder(tmp_path):
    from sam2vss.sinks import write_label_png
    from test_data import _write_video

    _write_video(tmp_path / "clip.mp4", 5)
    for t in range(5):
        write_label_png(tmp_path / "labels" / f"{t:05d}.png", np.full((48, 64), t % 3, np.uint8))
    run = _cli(
        "--video",
        str(tmp_path / "clip.mp4"),
        "--labels",
        str(tmp_path / "labels"),
        "--out",
        str(tmp_path / "o"),
        "--masks",
        "superpixel",
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "o" / "clip").iterdir()) == [f"{t:05d}.png" for t in range(5)]


# ------------------------------------------------------------------ model loading errors
def test_checkpoint_errors(tmp_path):
    from sam2vss.model import ModelError, build

    with pytest.raises(ModelError, match="not found"):
        build(ModelConfig(checkpoint=str(tmp_path / "nope.pt"), image_size=256))
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(ModelError, match="truncated or not a SAM2 checkpoint"):
        build(ModelConfig(checkpoint=str(tmp_path / "trunc.pt"), image_size=256))
    tiny_model = build(ModelConfig(image_size=256), video=False)
    torch.save(
        {"model": {k: v for k, v in tiny_model.state_dict().items() if "image_encoder" not in k}},
        tmp_path / "part.pt",
    )
    with pytest.raises(ModelError, match=r"does not match model sam2.1_hiera_t \(missing"):
        build(ModelConfig(checkpoint=str(tmp_path / "part.pt"), image_size=256))
    torch.save({"model": tiny_model.state_dict()}, tmp_path / "ok.pt")
    loaded = build(ModelConfig(checkpoint=str(tmp_path / "ok.pt"), image_size=256), video=False)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"name": "x"}, "unknown model"), ({"image_size": 300}, "multiple of 32")]
)
def test_model_config_validation(kwargs, message):
    from sam2vss.model import ModelError

    with pytest.raises(ModelError, match=message):
        ModelConfig(**kwargs)


def test_video_with_invalid_inputs_is_reported_not_fatal(medium, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(medium, root)
    (
        root
        / "pred_base"
        / "0002_synth2"
        / sorted(p.name for p in (root / "pred_base" / "0002_synth2").iterdir())[0]
    ).unlink()
    run = _cli_superpixel(root, tmp_path / "o")
    assert run.returncode == 1
    assert "error: video 0002_synth2 failed: prediction folder" in run.stderr and "missing 1" in run.stderr
    assert "refined 2 videos" in run.stdout


# ------------------------------------------------------------------ refine --save-masklets
@pytest.mark.parametrize("scope", ["masklet", "frame"])
@pytest.mark.parametrize(("n", "fits"), [(65535, True), (65536, False)])
def test_masklet_ids_refuse_more_than_16_bits(scope, n, fits):
    """A masklet-id PNG is 16-bit (index + 1): 65535 masklets fit, one more is a clear error."""
    from sam2vss.data import DataError
    from sam2vss.vote import ReferenceOps, Votes

    rank = torch.arange(n if scope == "masklet" else 0, dtype=torch.int32)
    votes = Votes(ReferenceOps(), rank, 2, scope, keep_ids=True)
    ids, labels = torch.tensor([[-1, n - 1]], dtype=torch.int32), torch.zeros((1, 2), dtype=torch.uint8)
    hist = torch.zeros((n, 2), dtype=torch.int64)
    if fits:
        votes.add_ids(ids, hist, labels)
        assert votes.masklet_ids().int().tolist() == [[[0, n]]]
    else:
        with pytest.raises(DataError, match="more than a 16-bit masklet-id PNG holds"):
            votes.add_ids(ids, hist, labels)


def _masklet_pngs(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {
        str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.glob("*/masklets/*.png"))
    }


def test_refine_cli_saves_masklet_ids_and_eval_ignores_them(medium, tmp_path, capsys):
    """`refine --save-masklets`: OUT/<video>/masklets/<frame>.png for every frame, 16-bit, the
    frame's segment id + 1 (superpixels: every pixel has one); the labels are those of a run
    without it, and `eval` of the folder gives the metrics of the folder without the subfolders."""
    import shutil

    from PIL import Image

    from checks import assert_metrics_equal
    from sam2vss.cli import main

    args = [
        "refine",
        "-q",
        "--data",
        str(medium),
        "--pred",
        str(medium / "pred_base"),
        "--masks",
        "superpixel",
    ]
    args += ["--superpixel-size", "64"]
    assert main([*args, "--out", str(tmp_path / "with"), "--save-masklets"]) == 0
    assert main([*args, "--out", str(tmp_path / "without")]) == 0
    ids = _masklet_pngs(tmp_path / "with")
    labels = {str(p.relative_to(tmp_path / "with")): read_label_png(p).tobytes() for p in
              sorted((tmp_path / "with").glob("*/*.png"))}  # fmt: skip
    assert sorted(k.replace("/masklets", "") for k in ids) == sorted(labels) and len(ids) == 36
    assert {Image.open(tmp_path / "with" / k).mode for k in ids} == {"I;16"}
    assert all(v.dtype == np.uint16 and v.min() >= 1 and v.max() <= 65535 for v in ids.values())
    assert labels == {k: v.tobytes() for k, v in _read_all(tmp_path / "without").items()}
    manifest = json.loads((tmp_path / "with" / "manifest.json").read_text())
    assert {e["masklet_ids"] for e in manifest["videos"].values()} == {True}
    ds = open_dataset(medium)
    shutil.copytree(tmp_path / "with", tmp_path / "stripped", ignore=shutil.ignore_patterns("masklets"))
    assert not list((tmp_path / "stripped").glob("*/masklets"))
    got = evaluate(ds, tmp_path / "with", cfg=MetricConfig(), progress=False).metrics
    want = evaluate(ds, tmp_path / "stripped", cfg=MetricConfig(), progress=False).metrics
    assert_metrics_equal(got, want, "eval with masklet ids vs without")


@pytest.mark.parametrize(
    ("first", "second", "damage", "redone"),
    [
        (False, True, False, "its masklet ids were not saved"),  # asked for now: refined again
        (True, False, False, None),  # saved before, not asked: skipped, the ids stay
        (True, True, False, None),
        (True, True, True, "its outputs are missing or were modified"),  # a masklet PNG deleted
        (True, False, True, "its outputs are missing or were modified"),  # redone: ids saved again
        (False, False, False, None),
    ],
    ids=["add", "keep", "again", "damaged", "damaged_without_flag", "neither"],
)
def test_resume_with_and_without_masklet_ids(medium, tmp_path, capsys, first, second, damage, redone):
    jobs = dataset_jobs(open_dataset(medium), medium / "pred_base", "val")[:1]
    out, name = tmp_path / "o", jobs[0].name
    refine_jobs(jobs, out, SP, progress=False, save_masklets=first)
    before = {k: v.tobytes() for k, v in _masklet_pngs(out).items()}
    if damage:
        next((out / name / "masklets").iterdir()).unlink()
    capsys.readouterr()
    report = refine_jobs(jobs, out, SP, progress=False, save_masklets=second)
    assert report.redone == ({name: redone} if redone else {})
    assert report.skipped == ([] if redone else [name])
    if redone:
        assert f"{name}: refining again: {redone}" in capsys.readouterr().out
    saved = first if redone is None else second or first  # a folder never loses the ids it had
    assert json.loads((out / "manifest.json").read_text())["videos"][name]["masklet_ids"] == saved
    after = {k: v.tobytes() for k, v in _masklet_pngs(out).items()}
    assert (len(after) == 12) == saved
    assert after == before or redone is not None


@pytest.mark.parametrize("pipeline", ["reference", "fast"])
def test_every_entry_point_builds_the_configured_pipeline(pipeline, tiny, tmp_path, monkeypatch):
    """refine_jobs, the Ray actors' Pipeline.build and sam2vss.Refiner build cfg.pipeline's parts
    (they once built the fast pipeline for `--pipeline reference`)."""
    from sam2vss import Refiner
    from sam2vss.engine import Pipeline
    from sam2vss.reference import OfficialTracker

    cfg = RefineConfig(masks="instances", window=5, pipeline=pipeline)
    official = {"reference": True, "fast": False}[pipeline]
    assert isinstance(Pipeline.build(cfg, MODEL).tracker, OfficialTracker) is official
    assert isinstance(Refiner(cfg, MODEL).pipeline.tracker, OfficialTracker) is official
    built = []
    original = Pipeline.build.__func__

    def record(cls, *args, **kwargs):
        built.append(original(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(Pipeline, "build", classmethod(record))
    ds, pred = tiny
    refine_jobs(dataset_jobs(ds, pred, "val")[:1], tmp_path / "out", cfg, MODEL, progress=False)
    assert len(built) == 1 and isinstance(built[0].tracker, OfficialTracker) is official
