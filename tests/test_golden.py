"""Golden labels: the sha256 of every refined PNG for each pipeline x preset x masklet source,
recorded from the code before the refiner was restructured (issue 15), so that a change which
moves code around but alters one refined pixel fails here, naming the case and the frames.

A hash covers the decoded PNG (mode, size and pixel bytes), not the file's bytes: a Pillow or
zlib upgrade re-encodes the same labels differently and must not trip it. The clip is small
(5 frames of 48x80, windows of 3 and 2 so the partial last window is covered), the model Hiera-T
with random weights at 256, SAM2 masklets with the tests' lowered thresholds (grid 8).

To record again after a deliberate change to refined labels:
    SAM2VSS_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
and say in the commit why the labels changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from sam2vss.config import PRESETS, RefineConfig, SynthConfig
from sam2vss.data import open_dataset
from sam2vss.model import ModelConfig
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.synth import synthesize

GOLDEN = Path(__file__).parent / "golden" / "refined_sha256.json"
RECORD = os.environ.get("SAM2VSS_RECORD_GOLDEN") == "1"
MODEL = ModelConfig(image_size=256)
LOWERED = {"grid": 8, "pred_iou_thresh": 0.0, "stability_thresh": 0.6, "stability_offset": 0.02}
SOURCE_SETTINGS = {"instances": {}, "sam2": LOWERED, "superpixel": {"vote_scope": "frame"}}
MASKS = ("instances", "sam2", "superpixel")
CASES = [f"reference/{m}" for m in MASKS] + [f"fast@{p}/{m}" for p in PRESETS for m in MASKS]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden") / "ds"
    cfg = SynthConfig(videos=1, frames=5, height=48, width=80, objects=3, train_videos=0, seed=11)
    synthesize(root, cfg, progress=False)
    return dataset_jobs(open_dataset(root), root / "pred_base", "val")


@pytest.fixture(scope="module")
def recorded():
    found: dict[str, dict[str, str]] = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    yield found
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(found.items())), indent=1) + "\n")


def label_digest(path: Path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()


@pytest.mark.parametrize("case", CASES)
def test_refined_labels_equal_the_recorded_ones(jobs, recorded, tmp_path, case):
    pipeline_preset, masks = case.split("/")
    pipeline, _, preset = pipeline_preset.partition("@")
    cfg = RefineConfig(
        masks=masks, window=3, preset=preset or "exact", pipeline=pipeline, **SOURCE_SETTINGS[masks]
    )
    report = refine_jobs(jobs, tmp_path, cfg, MODEL, progress=False)
    assert not report.failed, report.failed
    names = [f"{job.name}/{name}" for job in jobs for name in job.label_names]
    digests = {name: label_digest(tmp_path / name) for name in names}
    if RECORD:
        recorded[case] = digests
        return
    assert case in recorded, f"{case}: no recorded hashes in {GOLDEN}; record with SAM2VSS_RECORD_GOLDEN=1"
    want = recorded[case]
    changed = sorted(k for k in digests.keys() | want.keys() if digests.get(k) != want.get(k))
    assert not changed, f"{case}: labels differ from the recorded ones in {len(changed)} frames: {changed}"
