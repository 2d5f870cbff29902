"""The public Python API (sam2vss.Refiner, sam2vss.evaluate_folder): the README's example runs as
written, the in-memory path gives the folder path's labels, and bad arrays get clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import sam2vss
from sam2vss.data import read_label_png

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md: the Python API example (after <!-- api-example -->) is missing"
    return match.group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README example's namespace after running it in a fresh folder."""
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("api"))
    try:
        namespace: dict = {}
        exec(compile(readme_example(), str(README), "exec"), namespace)
        namespace["root"] = Path.cwd()
    finally:
        os.chdir(cwd)
    return namespace


def test_readme_example_runs_and_in_memory_equals_the_folder_run(example, capsys):
    refined, video, root = example["refined"], example["video"], example["root"]
    folder = root / "synth_refined" / video.name
    names = sorted(p.name for p in folder.glob("*.png"))
    assert refined.dtype == np.uint8 and refined.shape == (8, 96, 160) and len(names) == 8
    written = np.stack([read_label_png(folder / n) for n in names])
    assert np.array_equal(refined, written)  # refine_video == refine_folder, pixel for pixel
    assert [s.frames for s in example["refiner"].window_stats] == [4, 4]


def test_names_are_exported_and_shadow_no_module():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(sam2vss.__path__)}
    assert set(sam2vss.__all__) - {"__version__"} <= set(dir(sam2vss))
    assert not modules & set(sam2vss.__all__), modules & set(sam2vss.__all__)
    for name in sam2vss.__all__:
        assert getattr(sam2vss, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sam2vss.nope  # noqa: B018


@pytest.mark.parametrize(
    ("frames", "labels", "message"),
    [
        (
            np.zeros((2, 8, 8), np.uint8),
            np.zeros((2, 8, 8), np.uint8),
            r"frames: expected \(T, H, W, 3\) uint8",
        ),
        (np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8), "frames: expected"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8), "with T = 2 as the frames"),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            np.full((2, 8, 8), 255, np.uint8),
            "id 255 in frame 0 at x=0, y=0",
        ),
        (np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 8, 8), -1, np.int64), "negative id -1"),
        (np.zeros((2, 8, 8, 3), np.uint8), [[0]], "labels: expected a numpy array or a torch tensor"),
    ],
    ids=["no-channels", "float-frames", "frame-count", "void-label", "negative-label", "list"],
)
def test_refine_video_refuses_bad_arrays(frames, labels, message):
    refiner = sam2vss.Refiner(sam2vss.RefineConfig(masks="superpixel", vote_scope="frame"))
    with pytest.raises((ValueError, TypeError), match=message):
        refiner.refine_video(frames, labels)


def test_superpixel_refiner_runs_without_a_model():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (3, 16, 24), dtype=np.uint8)
    refiner = sam2vss.Refiner(
        sam2vss.RefineConfig(masks="superpixel", vote_scope="frame", superpixel_size=16)
    )
    out = refiner.refine_video(frames, labels)
    assert out.shape == labels.shape and out.dtype == np.uint8
    assert refiner.model is None and refiner.pipeline.tracker is None
    assert not np.array_equal(out, labels)  # every superpixel takes its majority class
