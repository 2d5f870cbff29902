"""The Ray runner on the CPU (ray.init with 2 CPUs): byte-identical to the local runner, survives a
worker killed mid-video, reports a corrupt video while the others complete, and a rerun after
completion does no work. Each run is its own `sam2vss refine` process, as a user would run it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from sam2vss.config import SynthConfig
from sam2vss.synth import synthesize

SP = ["--masks", "superpixel", "--superpixel-size", "64"]


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory):
    cfg = SynthConfig(videos=4, frames=10, height=48, width=64, train_videos=0, seed=2)
    return synthesize(tmp_path_factory.mktemp("scale") / "ds", cfg, progress=False)


def _refine(root: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "sam2vss",
        "refine",
        "-q",
        "--data",
        str(root),
        "--pred",
        str(root / "pred_base"),
        "--out",
        str(out),
        *SP,
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=240)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def local_outputs(four_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    run = _refine(four_videos, out, "--runner", "local")
    assert run.returncode == 0, run.stderr
    return out


def test_ray_outputs_are_byte_identical_to_local(four_videos, local_outputs, tmp_path):
    run = _refine(four_videos, tmp_path / "ray", "--runner", "ray", "--workers", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refined 4 videos (40 frames" in run.stdout
    assert _digest(tmp_path / "ray") == _digest(local_outputs)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert all(e["status"] == "done" and e["sha256"] for e in manifest["videos"].values())


def test_worker_killed_mid_video_still_completes(four_videos, local_outputs, tmp_path):
    once = tmp_path / "killed_once"
    env = {"SAM2VSS_FAULT_EXIT_AFTER": "5", "SAM2VSS_FAULT_ONCE": str(once)}  # 5th frame of the first video
    run = _refine(four_videos, tmp_path / "ray", "--runner", "ray", "--workers", "2", env=env)
    assert once.exists(), "the fault hook never fired"
    assert run.returncode == 0, run.stderr[-2000:]
    assert _digest(tmp_path / "ray") == _digest(local_outputs)


def test_corrupt_video_is_reported_while_others_complete(four_videos, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(four_videos, root)
    bad = sorted((root / "data" / "0002_synth2" / "origin").iterdir())[3]
    bad.write_bytes(b"not a jpeg")
    run = _refine(root, tmp_path / "ray", "--runner", "ray", "--workers", "2", "--retries", "1")
    assert run.returncode == 1
    assert "error: video 0002_synth2 failed" in run.stderr and bad.name in run.stderr
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())["videos"]
    assert {v: e["status"] for v, e in manifest.items()} == {
        "0000_synth2": "done",
        "0001_synth2": "done",
        "0002_synth2": "failed",
        "0003_synth2": "done",
    }
    assert manifest["0002_synth2"]["attempts"] == 1  # bad input data is not retried


def test_rerun_after_completion_does_no_work(four_videos, tmp_path):
    assert _refine(four_videos, tmp_path / "ray", "--runner", "ray").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")}
    again = _refine(four_videos, tmp_path / "ray", "--runner", "ray")
    assert again.returncode == 0 and "nothing to do: all 4 videos already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")} == before
    # A damaged output is noticed by its checksum and only that video is redone.
    victim = sorted((tmp_path / "ray" / "0001_synth2").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-9])
    redo = _refine(four_videos, tmp_path / "ray", "--runner", "local")
    assert "refined 1 video " in redo.stdout and "skipped 3 already done" in redo.stdout


@pytest.mark.parametrize(
    ("device", "gpus", "want"),
    [
        ("auto", 2, ("cuda", True)),
        ("auto", 0, ("cpu", False)),
        ("cuda", 1, ("cuda", True)),
        ("cpu", 4, ("cpu", False)),
    ],
)
def test_actor_device(device, gpus, want):
    """--device under --runner ray: each actor's own GPU (cuda:0 inside it), or the CPU."""
    from sam2vss.model import ModelConfig
    from sam2vss.ray_runner import actor_device

    cfg, on_gpu = actor_device(ModelConfig(device=device), gpus)
    assert (cfg.device, on_gpu) == want


@pytest.mark.parametrize(
    ("device", "gpus", "message"), [("cuda:1", 2, "sees as cuda:0"), ("cuda", 0, "no GPUs")]
)
def test_actor_device_errors(device, gpus, message):
    from sam2vss.model import ModelConfig
    from sam2vss.ray_runner import actor_device

    with pytest.raises(ValueError, match=message):
        actor_device(ModelConfig(device=device), gpus)
