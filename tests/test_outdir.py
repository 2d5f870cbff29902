"""The output folder's rules one by one (outdir.py): the guard, the lock and its stale detection,
input records, the manifest's schema and field-by-field mismatch, the pinned configuration hash,
and the label-id policy every reader applies (labels.bad_label_ids)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from sam2vss.config import RefineConfig, SynthConfig
from sam2vss.data import open_dataset
from sam2vss.labels import bad_label_ids
from sam2vss.model import ModelConfig
from sam2vss.outdir import (
    Input,
    OutputError,
    OutputLock,
    changed_inputs,
    guard_output,
    input_record,
    settings_diff,
)
from sam2vss.refine import dataset_jobs, refine_config_hash, refine_jobs
from sam2vss.synth import synthesize

SP = RefineConfig(masks="superpixel", vote_scope="frame", superpixel_size=64)


# ------------------------------------------------------------------ the configuration hash
@pytest.mark.parametrize(
    ("cfg", "model", "pipeline", "expected"),
    [
        (RefineConfig(), ModelConfig(image_size=256), "fast", "e087f84dc7c102c5"),
        (RefineConfig(), ModelConfig(image_size=256), "reference", "b81f9b3435b062ea"),
        (RefineConfig(preset="fastest"), ModelConfig(), "fast", "6bd78bfbf24cad22"),
        (SP, None, "fast", "396f6afb0b23d788"),
    ],
    ids=["fast", "reference", "fastest", "superpixel"],
)
def test_config_hash_is_pinned(cfg, model, pipeline, expected):
    """Values computed by the code before the manifest had a schema (commit 6db4f9a): folders
    refined then must keep resuming. A deliberate change of the hash bumps outdir.SCHEMA and the
    README says how older folders are treated (refused as another configuration; --overwrite
    sets them aside)."""
    assert refine_config_hash(cfg, model, pipeline) == expected
    assert refine_config_hash(cfg, model, pipeline, model_dtype="float32") == expected
    assert refine_config_hash(cfg, model, pipeline, model_dtype="bfloat16") != expected


@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_window_overlap_is_another_configuration_only_when_set(pipeline):
    """--window-overlap 0 (the default) is hashed as before the field existed; K > 0 is another
    configuration, read back from the manifest's settings as it was given."""
    from dataclasses import replace

    from sam2vss.refine import config_from_fields, refine_fields

    model, plain = ModelConfig(image_size=256), RefineConfig(pipeline=pipeline)
    overlapped = replace(plain, window_overlap=8)
    assert "window_overlap" not in refine_fields(plain) and refine_fields(overlapped)["window_overlap"] == 8
    assert refine_config_hash(plain, model) != refine_config_hash(overlapped, model)
    assert refine_config_hash(replace(overlapped, window_overlap=4), model) != refine_config_hash(
        overlapped, model
    )
    assert config_from_fields(refine_fields(overlapped), pipeline) == overlapped
    assert config_from_fields(refine_fields(plain), pipeline) == plain


@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_redetect_every_is_another_configuration_only_when_set(pipeline):
    """--redetect-every 0 (the default) is hashed as before the field existed (the pinned hashes
    above); K > 0 is another configuration, read back from the manifest's settings."""
    from dataclasses import replace

    from sam2vss.refine import config_from_fields, refine_fields

    model, plain = ModelConfig(image_size=256), RefineConfig(pipeline=pipeline)
    redetecting = replace(plain, redetect_every=8)
    assert "redetect_every" not in refine_fields(plain) and refine_fields(redetecting)["redetect_every"] == 8
    assert refine_config_hash(plain, model) != refine_config_hash(redetecting, model)
    assert refine_config_hash(replace(plain, redetect_every=4), model) != refine_config_hash(
        redetecting, model
    )
    assert config_from_fields(refine_fields(redetecting), pipeline) == redetecting


# ------------------------------------------------------------------ guard
def test_guard_allows_siblings_and_refuses_overlap(tmp_path):
    root, pred = tmp_path / "S", tmp_path / "S" / "pred_base"
    inputs = [
        Input("the --data root", root, tree=False),
        Input("the data/ folder", root / "data"),
        Input("the --pred folder", pred),
    ]
    guard_output(root / "refined", inputs)  # beside pred_base: fine
    guard_output(tmp_path / "elsewhere", inputs)
    for out, problem in [
        (pred, "is the --pred folder"),
        (pred / "x" / "y", "lies inside the --pred folder"),
        (root, "is the --data root"),
        (root / "data" / "v", "lies inside the data/ folder"),
        (tmp_path, "contains the --data root"),
    ]:
        with pytest.raises(OutputError, match=problem):
            guard_output(out, inputs)


def test_guard_sees_through_symlinks_and_dots(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pred")
    inputs = [Input("the --pred folder", tmp_path / "pred")]
    with pytest.raises(OutputError, match="is the --pred folder"):
        guard_output(tmp_path / "link", inputs)
    with pytest.raises(OutputError, match="is the --pred folder"):
        guard_output(tmp_path / "other" / ".." / "pred", inputs)


def test_guard_for_a_video_file(tmp_path):
    inputs = [
        Input("the --labels folder", tmp_path / "labels" / "clip"),
        Input("the folder of --video", tmp_path / "videos", tree=False),
    ]
    guard_output(tmp_path / "videos" / "refined", inputs)  # beside the video file
    guard_output(tmp_path / "labels" / "refined", inputs)  # beside its label folder
    with pytest.raises(OutputError, match="is the folder of --video"):
        guard_output(tmp_path / "videos", inputs)
    with pytest.raises(OutputError, match="is the --labels folder"):
        guard_output(tmp_path / "labels" / "clip", inputs)


# ------------------------------------------------------------------ lock
def _lock(out: Path, pid: int, host: str, started: str = "2026-01-01 00:00:00 +0000") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": started}))


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = OutputLock(tmp_path / "o"), OutputLock(tmp_path / "o")
    a.acquire()
    with pytest.raises(OutputError, match=rf"another run \(pid {os.getpid()} on {socket.gethostname()}\)"):
        b.acquire()
    a.release()
    assert not (tmp_path / "o" / ".lock").exists()
    b.acquire()
    b.release()


def test_stale_lock_is_taken_over(tmp_path):
    _lock(tmp_path, _dead_pid(), socket.gethostname())
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text()) == lock.info
    lock.release()


def test_lock_of_another_host_is_respected(tmp_path):
    _lock(tmp_path, _dead_pid(), "some-other-node", "2026-01-02 03:04:05 +0000")
    with pytest.raises(
        OutputError, match=r"on some-other-node\) is writing here since 2026-01-02 03:04:05.*delete"
    ):
        OutputLock(tmp_path).acquire()


def test_empty_lock_is_held_while_young_and_stale_when_old(tmp_path):
    (tmp_path / ".lock").write_text("")  # a run between creating its lock and writing it
    with pytest.raises(OutputError, match="a run starting up"):
        OutputLock(tmp_path).acquire()
    old = time.time() - OutputLock.STALE_EMPTY_S - 5
    os.utime(tmp_path / ".lock", (old, old))
    lock = OutputLock(tmp_path)
    lock.acquire()
    lock.release()


# ------------------------------------------------------------------ input records
def test_input_records_rehash_only_touched_files(tmp_path, monkeypatch):
    from sam2vss import outdir

    files = {f"labels/{i}.png": tmp_path / f"{i}.png" for i in range(3)}
    for i, p in enumerate(files.values()):
        p.write_bytes(bytes([i]) * 10)
    record = input_record(files)
    hashed = []
    real = outdir.hashlib.sha256
    monkeypatch.setattr(outdir.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    assert changed_inputs(files, record) == ([], record) and hashed == []  # stat only
    os.utime(files["labels/1.png"], ns=(1, 1))  # touched, same bytes
    changed, now = changed_inputs(files, record)
    assert changed == [] and now["labels/1.png"][1] == 1 and len(hashed) == 1
    files["labels/2.png"].write_bytes(b"other bytes")
    changed, _ = changed_inputs(files, now)
    assert changed == ["labels/2.png"]
    assert changed_inputs({**files, "labels/9.png": files["labels/0.png"]}, now)[0] == [
        "labels/2.png",
        "labels/9.png",
    ]


# ------------------------------------------------------------------ manifest schemas
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = SynthConfig(videos=2, frames=2, height=48, width=64, objects=1, train_videos=0, seed=4)
    return synthesize(tmp_path_factory.mktemp("outdir") / "ds", cfg, progress=False)


def _jobs(root):
    return dataset_jobs(open_dataset(root), root / "pred_base", "val")


def _as_landed(out: Path) -> None:
    """Rewrite OUT/manifest.json as the code before the schema key wrote it (schema 1)."""
    m = json.loads((out / "manifest.json").read_text())
    videos = {
        v: {k: e[k] for k in ("status", "frames", "seconds", "fps", "attempts", "sha256")}
        for v, e in m["videos"].items()
    }
    (out / "manifest.json").write_text(
        json.dumps({"config_hash": m["config_hash"], "config": m["config"], "videos": videos})
    )
    shutil.rmtree(out / ".inputs")


def test_landed_manifest_resumes_and_is_upgraded(small, tmp_path):
    out = tmp_path / "o"
    refine_jobs(_jobs(small), out, SP, progress=False)
    _as_landed(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "0000_synth4").iterdir()}
    again = refine_jobs(_jobs(small), out, SP, progress=False)
    assert again.done == [] and len(again.skipped) == 2  # read, trusted: outputs match their digests
    assert {p.name: p.stat().st_mtime_ns for p in (out / "0000_synth4").iterdir()} == mtimes
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema"] == 2 and all(e["inputs"]["files"] == 4 for e in m["videos"].values())
    assert sorted(p.name for p in (out / ".inputs").iterdir()) == ["0000_synth4.json", "0001_synth4.json"]


def test_landed_manifest_of_another_configuration_names_the_fields(small, tmp_path):
    out = tmp_path / "o"
    refine_jobs(_jobs(small), out, SP, progress=False)
    _as_landed(out)
    other = RefineConfig(masks="superpixel", vote_scope="frame", superpixel_size=32)
    with pytest.raises(OutputError, match=r"folder -> this run: refine.superpixel_size 64 -> 32\)"):
        refine_jobs(_jobs(small), out, other, progress=False)


def test_settings_diff_names_nested_fields():
    a = {"refine": {"window": 32, "grid": 16}, "pipeline": "reference"}
    b = {"refine": {"window": 8, "grid": 16}, "pipeline": "fast", "model_dtype": "bfloat16"}
    assert settings_diff(a, b) == [
        "model_dtype '(unset)' -> 'bfloat16'",
        "pipeline 'reference' -> 'fast'",
        "refine.window 32 -> 8",
    ]


def test_folder_without_manifest_is_refused(small, tmp_path):
    (tmp_path / "o" / "some_video").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"holds 1 entries .* but no manifest\.json"):
        refine_jobs(_jobs(small), tmp_path / "o", SP, progress=False)


def test_a_damaged_output_is_redone_and_named(small, tmp_path):
    out = tmp_path / "o"
    refine_jobs(_jobs(small), out, SP, progress=False)
    victim = sorted((out / "0001_synth4").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-5])
    again = refine_jobs(_jobs(small), out, SP, progress=False)
    assert again.done == ["0001_synth4"] and again.redone == {
        "0001_synth4": "its outputs are missing or were modified"
    }


# ------------------------------------------------------------------ the label-id policy
@pytest.mark.parametrize(
    ("values", "void_ok", "expected"),
    [
        ([0, 4], False, None),
        ([0, 4], True, None),
        ([0, 255], True, None),  # GT: void means "not evaluated"
        ([0, 255], False, (255, 1, 1, 0)),  # predictions and base labels: every pixel needs a class
        ([7, 5, 200], True, (5, 3, 1, 0)),  # the smallest bad id, all bad pixels counted
        ([0, 5, 5], False, (5, 2, 1, 0)),
    ],
)
def test_label_policy(values, void_ok, expected):
    labels = np.array([values], np.uint8)
    assert bad_label_ids(labels, 5, void_ok) == expected
