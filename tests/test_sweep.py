"""`sam2vss sweep`: every row equals a separate refine + eval of its setting, the summary files,
resume per setting, a rerun that builds no model and writes nothing, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam2vss import engine, model
from sam2vss.cli import main
from sam2vss.config import SynthConfig
from sam2vss.sweep import SUMMARY
from sam2vss.synth import synthesize

KEYS = ("miou", "fwiou", "mbiou", "mvc8", "mvc16")
RANDOM_SAM2 = ["--checkpoint", "none", "--image-size", "256"]
LOWERED = ["--grid", "8", "--stability-thresh", "0.6", "--stability-offset", "0.02"]  # random weights
# case -> (fixed flags, swept field, values): the three sweeps
CASES = {
    "superpixel": (["--masks", "superpixel"], "superpixel_size", "64,256"),
    "instances": (["--masks", "instances", *RANDOM_SAM2], "window", "1,4,16"),
    "sam2": (["--masks", "sam2", *RANDOM_SAM2, *LOWERED], "pred_iou_thresh", "0.0,0.7"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    cfg = SynthConfig(videos=1, frames=5, height=48, width=80, objects=3, train_videos=0, seed=11)
    root = synthesize(tmp_path_factory.mktemp("sweep") / "ds", cfg, progress=False)
    return root, root / "pred_base"


def _sweep(data, out: Path, *flags: str) -> int:
    root, pred = data
    return main(["sweep", "--data", str(root), "--pred", str(pred), "--out", str(out), "-q", *flags])


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


def _no_build(*args, **kwargs):
    raise AssertionError("a finished sweep built a model")


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_rows_equal_separate_refine_and_eval(case, data, tmp_path, monkeypatch):
    flags, param, values = CASES[case]
    out = tmp_path / "sweep"
    assert _sweep(data, out, *flags, "--param", param, "--values", values) == 0
    assert all((out / name).is_file() for name in SUMMARY)
    doc = json.loads((out / "sweep.json").read_text())
    rows = doc["rows"]
    assert [str(r["values"][param]) for r in rows] == values.split(",")
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in rows}) >= 2  # the setting matters
    shared = [r["setting"] for r in rows] if case != "superpixel" else None  # one SAM2 for all rows
    assert doc["model_shared_by"] == ([shared] if shared else [])
    assert ("- model: " + ", ".join(shared or []) in (out / "sweep.md").read_text()) is bool(shared)
    root, pred = data
    for row in rows:
        value = str(row["values"][param])
        alone, metrics = tmp_path / f"refine_{value}", tmp_path / f"eval_{value}.json"
        common = ["--data", str(root), "--pred", str(pred), "-q"]
        assert (
            main(["refine", *common, "--out", str(alone), *flags, f"--{param.replace('_', '-')}", value]) == 0
        )
        assert main(["eval", "--data", str(root), "--pred", str(alone), "--json", str(metrics), "-q"]) == 0
        separate = json.loads(metrics.read_text())
        assert {k: row["metrics"][k] for k in KEYS} == {k: separate[k] for k in KEYS}, row["setting"]
        swept = json.loads((out / row["setting"] / "manifest.json").read_text())["videos"]
        here = json.loads((alone / "manifest.json").read_text())["videos"]
        assert {v: e["sha256"] for v, e in swept.items()} == {v: e["sha256"] for v, e in here.items()}
    base = json.loads((out / "base_eval.json").read_text())["metrics"]
    pred_eval = tmp_path / "base.json"
    assert main(["eval", "--data", str(root), "--pred", str(pred), "--json", str(pred_eval), "-q"]) == 0
    assert {k: base[k] for k in KEYS} == {k: json.loads(pred_eval.read_text())[k] for k in KEYS}
    # the rerun: no model, no pipeline, no byte written, every mtime as it was
    before = _mtimes(out)
    monkeypatch.setattr(model, "build", _no_build)
    monkeypatch.setattr(engine.Pipeline, "build", _no_build)
    assert _sweep(data, out, *flags, "--param", param, "--values", values) == 0
    assert _mtimes(out) == before


def test_sweep_table_lists_the_settings_and_the_base_row(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert _sweep(data, out, "--masks", "superpixel", "--param", "superpixel_size", "--values", "64,256") == 0
    table = (out / "sweep.md").read_text()
    assert table in capsys.readouterr().out  # the command prints the table it wrote
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    metrics = ["mIoU", "FWIoU", "mBIoU", "mVC8", "mVC16"]
    assert header == ["superpixel_size", *metrics, "masklets/window", "seconds"]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["base (unrefined)", "64", "256"]
    csv_rows = (out / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows] == [
        "setting",
        "base",
        "superpixel_size=64",
        "superpixel_size=256",
    ]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_resumes_per_setting(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    sp = ["--masks", "superpixel", "--param", "superpixel_size"]
    assert _sweep(data, out, *sp, "--values", "64") == 0
    first = _mtimes(out / "superpixel_size=64")
    capsys.readouterr()
    assert _sweep(data, out, *sp, "--values", "64,256") == 0
    printed = capsys.readouterr().out
    assert (
        "sweep 1/1: superpixel_size=256 -> " in printed
        and "1 settings already done" in printed
        and "superpixel_size=64 ->" not in printed
    )
    assert _mtimes(out / "superpixel_size=64") == first  # neither refined nor evaluated again
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["superpixel_size=64", "superpixel_size=256"]


def test_sweep_grid_of_two_params(data, tmp_path):
    out = tmp_path / "sweep"
    flags = ["--masks", "superpixel", "--param", "superpixel_size", "--values", "64,256"]
    assert _sweep(data, out, *flags, "--param", "paint_order", "--values", "area,amg") == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [
        "superpixel_size=64,paint_order=area",
        "superpixel_size=64,paint_order=amg",
        "superpixel_size=256,paint_order=area",
        "superpixel_size=256,paint_order=amg",
    ]
    assert all((out / r["setting"] / "eval.json").is_file() for r in rows)


# ------------------------------------------------------------------ refusals: one line, nothing touched
SP = ["--masks", "superpixel"]
REFUSALS = {
    "unknown field": ([*SP, "--param", "windw", "--values", "1"], "--param windw: not a refiner field"),
    "values missing": (
        [*SP, "--param", "superpixel_size", "--values", "64", "--param", "paint_order"],
        "give one --values per --param",
    ),
    "value out of range": ([*SP, "--param", "pred_iou_thresh", "--values", "0.5,1.5"], "must be in [0, 1]"),
    "not a number": ([*SP, "--param", "superpixel_size", "--values", "64,big"], "expected an integer"),
    "not a choice": ([*SP, "--param", "paint_order", "--values", "area,size"], "'size' is not one of"),
    "param twice": (
        [
            *SP,
            "--param",
            "superpixel_size",
            "--values",
            "64",
            "--param",
            "superpixel-size",
            "--values",
            "128",
        ],
        "given twice",
    ),
    "invalid setting": (
        [*SP, "--param", "paint_order", "--values", "logit"],
        "superpixels have no logits",
    ),
    "model needed": (
        [*SP, "--param", "masks", "--values", "superpixel,instances"],
        "--masks instances needs --checkpoint",
    ),
    "other configuration": (
        [*SP, "--superpixel-compactness", "20", "--param", "superpixel_size", "--values", "64"],
        "superpixel_size=64/ holds results of another configuration (folder -> this sweep:"
        " refine.superpixel_compactness",
    ),
}


@pytest.fixture(scope="module")
def done_sweep(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refusals") / "sweep"
    assert _sweep(data, out, *SP, "--param", "superpixel_size", "--values", "64") == 0
    return out


@pytest.mark.parametrize("case", list(REFUSALS))
def test_sweep_refusals(case, data, done_sweep, capsys):
    flags, message = REFUSALS[case]
    before = _mtimes(done_sweep)
    assert _sweep(data, done_sweep, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sam2vss sweep: error: ") and message in err[0], err
    assert _mtimes(done_sweep) == before


def test_sweep_refuses_a_foreign_folder_and_one_inside_the_inputs(data, tmp_path, capsys):
    pred = data[1]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert _sweep(data, foreign, *SP, "--param", "superpixel_size", "--values", "64") == 2
    assert "not a sweep's (first: notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert _sweep(data, pred / "sweep", *SP, "--param", "superpixel_size", "--values", "64") == 2
    assert "--out" in capsys.readouterr().err and not (pred / "sweep").exists()


@pytest.mark.slow  # any RefineConfig field sweeps; the three sweeps above are the default set
def test_sweep_over_window_overlap(data, tmp_path):
    """`--param window_overlap` like any field: a folder per value, 0 being the non-overlapping
    configuration as hashed before the field existed, 2 a window every W - K = 1 frames."""
    out = tmp_path / "sweep"
    flags = ["--masks", "instances", *RANDOM_SAM2, "--window", "3"]
    assert _sweep(data, out, *flags, "--param", "window_overlap", "--values", "0,2") == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["values"]["window_overlap"] for r in rows] == [0, 2]
    manifests = [json.loads((out / r["setting"] / "manifest.json").read_text()) for r in rows]
    assert "window_overlap" not in manifests[0]["config"]["refine"]
    assert manifests[1]["config"]["refine"]["window_overlap"] == 2
    windows = [len(next(iter(m["videos"].values()))["masklets"]["per_window"]) for m in manifests]
    assert windows == [2, 3]  # [0, 3) + [3, 5); [0, 3) + [1, 4) + [2, 5)


def test_sweep_with_a_damaged_base_label_fails_that_video_and_keeps_the_rest(tmp_path, capsys):
    """A truncated base label PNG in one of two videos: every setting fails that video (exit 1,
    one error line per setting naming the file), the other video's outputs are written and
    kept, the table lists the failed settings and says why the base row is missing; after the
    fix the rerun refines only the damaged video."""
    cfg = SynthConfig(videos=2, frames=3, height=48, width=80, objects=2, train_videos=0, seed=4)
    root = synthesize(tmp_path / "ds", cfg, progress=False)
    bad = sorted((root / "pred_base" / "0001_synth4").iterdir())[1]
    good = bad.read_bytes()
    bad.write_bytes(good[:60])
    data, out = (root, root / "pred_base"), tmp_path / "sweep"
    flags = [*SP, "--param", "superpixel_size", "--values", "64,256"]
    assert _sweep(data, out, *flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(bad.name in line and "0001_synth4" in line for line in err), err
    for setting in ("superpixel_size=64", "superpixel_size=256"):
        assert len(list((out / setting / "0000_synth4").glob("*.png"))) == 3  # the good video kept
        assert not (out / setting / "0001_synth4").exists()  # nothing partial where eval reads
    table = (out / "sweep.md").read_text()
    assert "not evaluated: no setting finished" in table and "Failed settings" in table
    kept = _mtimes(out / "superpixel_size=64" / "0000_synth4")
    bad.write_bytes(good)
    assert _sweep(data, out, *flags) == 0
    assert _mtimes(out / "superpixel_size=64" / "0000_synth4") == kept
    assert "base (unrefined) | " in (out / "sweep.md").read_text()
