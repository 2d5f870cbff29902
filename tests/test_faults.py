"""The fault table (README "Bad input -> what happens"): each plausible mistake, run through the CLI
as a user would, must end with its exit code and a one-line error naming the file or flag, leave
every input file byte-identical (sha256) and leave no partial output (no temporary files, no
half-written video folder, no lock).

Runs are in-process (`cli.main`) on a 3-video synthetic set of 3 frames at 64x96 with superpixel
masklets, so a case takes about a second; the kill -9, Ctrl-C and concurrent-run cases need a
real second process. Read-only targets are injected (EROFS / EACCES raised where the OS would:
os.open, os.mkdir, open) because CI runs as root, which the OS lets write anywhere.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2vss.cli import main
from sam2vss.config import SynthConfig
from sam2vss.sinks import write_label_png
from sam2vss.synth import synthesize

VIDEOS = ("0000_synth3", "0001_synth3", "0002_synth3")
SP = ("--masks", "superpixel", "--superpixel-size", "64")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    cfg = SynthConfig(videos=3, frames=3, height=64, width=96, objects=2, train_videos=0, seed=3)
    return synthesize(tmp_path_factory.mktemp("faults") / "ds", cfg, progress=False)


@dataclass
class Ctx:
    """One case's world: a private copy of the dataset, the output folder, pytest's fixtures."""

    tmp: Path
    root: Path
    out: Path
    mp: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    after: Callable[[Ctx, str], None] | None = None  # a case's own checks of the run's outcome
    procs: list[subprocess.Popen] = field(default_factory=list)  # second processes of the case

    @property
    def pred(self) -> Path:
        return self.root / "pred_base"

    def refine(self, *extra: str, out: Path | None = None) -> list[str]:
        base = ["refine", "-q", "--data", str(self.root), "--pred", str(self.pred)]
        return [*base, "--out", str(out or self.out), *extra]

    def eval(self, *extra: str) -> list[str]:
        return ["eval", "-q", "--data", str(self.root), "--pred", str(self.pred), *extra]

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refusals
            code = e.code
        out, err = self.capsys.readouterr()
        return code, out, err

    def label(self, video: int, frame: int) -> Path:
        return sorted((self.pred / VIDEOS[video]).iterdir())[frame]

    def frame(self, video: int, frame: int) -> Path:
        return sorted((self.root / "data" / VIDEOS[video] / "origin").iterdir())[frame]


def _digests(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(out: Path) -> dict[str, str]:
    """The refined label PNGs (what eval reads), by relative path."""
    rel = {p.relative_to(out): h for p, h in _digests(out).items()}
    return {str(r): h for r, h in rel.items() if r.suffix == ".png" and not r.parts[0].startswith(".")}


def _readonly(mp: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Make creating anything under `folder` fail with `code` (EROFS, EACCES) at the calls the OS
    would fail: os.open (tempfile), os.mkdir (Path.mkdir) and open() for writing."""
    folder = folder.resolve()

    def denied(path) -> bool:
        return folder == Path(path).resolve() or folder in Path(path).resolve().parents

    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    real_open, real_mkdir, real_builtin_open = os.open, os.mkdir, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and denied(path):
            fail(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if denied(path):
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    def builtin_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+") and denied(file):
            fail(file)
        return real_builtin_open(file, mode, *args, **kwargs)

    mp.setattr(os, "open", os_open)
    mp.setattr(os, "mkdir", mkdir)
    mp.setattr(builtins, "open", builtin_open)


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Fault:
    """`prepare` breaks the world (and may run a first run) and returns the argv under test."""

    prepare: Callable[[Ctx], list[str]]
    code: int
    names: Callable[[Ctx], list[str]]  # what the error line must contain: the file or the flag
    failed: tuple[str, ...] = ()  # videos that fail (their output must not exist)
    out_may_change: bool = False  # OUT held a previous run's results that this run may replace


def _patch(value: int, whole: bool = False):
    def prepare(c: Ctx) -> list[str]:
        path = c.label(1, 1)
        labels = np.array(Image.open(path))
        if whole:
            labels[:] = value
        else:
            labels[5:9, 10:14] = value
        write_label_png(path, labels)
        return c.refine(*SP)

    return prepare


def _resized(c: Ctx) -> list[str]:
    write_label_png(c.label(1, 2), np.zeros((32, 48), np.uint8))
    return c.refine(*SP)


def _rgb(c: Ctx) -> list[str]:
    Image.new("RGB", (96, 64), (3, 3, 3)).save(c.label(1, 0))
    return c.refine(*SP)


def _truncated_jpeg(c: Ctx) -> list[str]:
    path = c.frame(1, 1)
    path.write_bytes(path.read_bytes()[:200])
    return c.refine(*SP)


def _one_label_fewer(c: Ctx) -> list[str]:
    c.label(1, 2).unlink()
    return c.refine(*SP)


def _one_label_more(c: Ctx) -> list[str]:
    shutil.copy(c.label(1, 0), c.pred / VIDEOS[1] / "99999999.png")
    return c.refine(*SP)


def _empty_frames(c: Ctx) -> list[str]:
    for p in (c.root / "data" / VIDEOS[1] / "origin").iterdir():
        p.unlink()
    return c.refine(*SP)


def _argv(*extra: str, out: Callable[[Ctx], Path] | None = None):
    return lambda c: c.refine(*SP, *extra, out=out(c) if out else None)


def _rerun_after_label_change(c: Ctx) -> list[str]:
    assert c.run(c.refine(*SP))[0] == 0
    _patch(3)(c)  # a valid edit of video 1's base labels
    fresh = c.tmp / "fresh"
    assert c.run(c.refine(*SP, out=fresh))[0] == 0

    def check(c: Ctx, stdout: str) -> None:
        assert f"{VIDEOS[1]}: refining again: its inputs changed (labels/{c.label(1, 1).name})" in stdout
        assert "refined 1 video (1 of them again" in stdout and "skipped 2 already done" in stdout
        assert _outputs(c.out) == _outputs(fresh)

    c.after = check
    return c.refine(*SP)


def _overwrite_smaller_split(c: Ctx) -> list[str]:
    assert c.run(c.refine(*SP))[0] == 0
    old = _outputs(c.out)
    (c.root / "small.txt").write_text(f"{VIDEOS[0]}\n{VIDEOS[2]}\n")
    argv = [*c.refine("--masks", "superpixel", "--superpixel-size", "32", "--overwrite"), "--split", "small"]

    def check(c: Ctx, stdout: str) -> None:
        assert sorted(p.name for p in c.out.iterdir() if not p.name.startswith(".")) == [
            VIDEOS[0],
            VIDEOS[2],
            "manifest.json",
        ]
        manifest = json.loads((c.out / "manifest.json").read_text())
        assert manifest["settings"]["refine"]["superpixel_size"] == 32 and set(manifest["videos"]) == {
            VIDEOS[0],
            VIDEOS[2],
        }
        (aside,) = (c.out / ".superseded").iterdir()
        assert _outputs(aside) == old  # moved, byte for byte, never deleted
        assert (
            json.loads((aside / "manifest.json").read_text())["settings"]["refine"]["superpixel_size"] == 64
        )

    c.after = check
    return argv


def _other_configuration(c: Ctx) -> list[str]:
    assert c.run(c.refine(*SP))[0] == 0
    return c.refine("--masks", "superpixel", "--superpixel-size", "32", "--paint-order", "amg")


def _readonly_out(c: Ctx) -> list[str]:
    (c.tmp / "ro").mkdir()
    _readonly(c.mp, c.tmp / "ro", errno.EROFS)
    return c.refine(*SP, out=c.tmp / "ro" / "refined")


def _readonly_json(c: Ctx) -> list[str]:
    (c.tmp / "ro").mkdir()
    _readonly(c.mp, c.tmp / "ro", errno.EACCES)
    return c.eval("--json", str(c.tmp / "ro" / "m.json"))


def _readonly_csv(c: Ctx) -> list[str]:
    (c.tmp / "ro").mkdir()
    _readonly(c.mp, c.tmp / "ro", errno.EACCES)
    return c.eval("--csv", str(c.tmp / "ro" / "m.csv"))


def _vps(c: Ctx, drop_entry: bool = False, category: int | None = None) -> list[str]:
    """The base labels written as VPS predictions (DIR/pan_pred + DIR/pred.json, one segment per
    class and frame), with one frame's entry dropped from pred.json or one category replaced."""
    from sam2vss.data import read_label_png

    vps, annotations = c.tmp / "vps", []
    for video in VIDEOS:
        entries = []
        for png in sorted((c.pred / video).iterdir()):
            labels = read_label_png(png).astype(np.int64)
            ids = labels + 1  # segment id = class + 1 (0 would be black, still a valid id)
            rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
            (vps / "pan_pred" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(vps / "pan_pred" / video / png.name)
            segments = [{"id": int(k) + 1, "category_id": int(k)} for k in np.unique(labels)]
            entries.append({"file_name": png.name, "segments_info": segments})
        annotations.append({"video_id": video, "annotations": entries})
    if drop_entry:
        annotations[1]["annotations"].pop(1)
    if category is not None:
        annotations[2]["annotations"][0]["segments_info"][0]["category_id"] = category
    (vps / "pred.json").write_text(json.dumps({"annotations": annotations}))
    return ["eval", "-q", "--data", str(c.root), "--pred", str(vps), "--pred-format", "vps"]


def _vps_png(video: int, frame: int):
    return lambda c: [str(sorted((c.tmp / "vps" / "pan_pred" / VIDEOS[video]).iterdir())[frame])]


def _checkpoint(c: Ctx, name: str, model: str = "t") -> list[str]:
    return c.refine(
        "--masks", "instances", "--checkpoint", str(c.tmp / name), "--model", model, "--image-size", "256"
    )


def _random_bytes_checkpoint(c: Ctx) -> list[str]:
    (c.tmp / "junk.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return _checkpoint(c, "junk.pt")


def _other_model_size(c: Ctx) -> list[str]:
    from sam2vss.model import ModelConfig, build

    torch.save({"model": build(ModelConfig(image_size=256), video=False).state_dict()}, c.tmp / "tiny.pt")
    return _checkpoint(c, "tiny.pt", model="s")  # a Hiera-T checkpoint given as Hiera-S


def _no_cuda(c: Ctx) -> None:
    c.mp.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU


def _eval_cuda_without_gpu(c: Ctx) -> list[str]:
    _no_cuda(c)
    return c.eval("--device", "cuda")


def _tensorrt_on_cpu(c: Ctx) -> list[str]:
    _no_cuda(c)
    return c.refine(
        "--masks", "instances", "--checkpoint", "none", "--image-size", "256", "--backend", "tensorrt"
    )


def _gt_out_of_range(reference: bool):
    def prepare(c: Ctx) -> list[str]:
        path = sorted((c.root / "data" / VIDEOS[2] / "mask").iterdir())[1]
        raw = np.array(Image.open(path))
        raw[0:3, 0:3] = 200
        write_label_png(path, raw)
        return c.eval(*(["--reference"] if reference else []))

    return prepare


def _gt_file(c: Ctx) -> list[str]:
    return [str(sorted((c.root / "data" / VIDEOS[2] / "mask").iterdir())[1]), "raw id 200"]


FAULTS = {
    "base id out of range (patch)": Fault(
        _patch(200), 1, lambda c: [str(c.label(1, 1)), "base label 200 on 16 pixels"], (VIDEOS[1],)
    ),
    "base id out of range (whole frame)": Fault(
        _patch(130, whole=True),
        1,
        lambda c: [str(c.label(1, 1)), "base label 130 on 6144 pixels"],
        (VIDEOS[1],),
    ),
    "base void 255": Fault(_patch(255), 1, lambda c: [str(c.label(1, 1)), "255 (void)"], (VIDEOS[1],)),
    "--num-classes below the labels": Fault(
        _argv("--num-classes", "3"), 1, lambda c: ["outside 0..2", "--num-classes"], VIDEOS
    ),
    "label of another size in a video": Fault(
        _resized, 1, lambda c: [str(c.label(1, 2)), "is 48x32 (WxH)", "one size"], (VIDEOS[1],)
    ),
    "label in RGB mode": Fault(_rgb, 1, lambda c: [str(c.label(1, 0)), "mode 'RGB'"], (VIDEOS[1],)),
    "truncated JPEG": Fault(
        _truncated_jpeg, 1, lambda c: [str(c.frame(1, 1)), "cannot decode"], (VIDEOS[1],)
    ),
    "label folder: a frame fewer": Fault(
        _one_label_fewer, 1, lambda c: [str(c.pred / VIDEOS[1]), "missing 1"], (VIDEOS[1],)
    ),
    "label folder: a frame more": Fault(
        _one_label_more,
        1,
        lambda c: [str(c.pred / VIDEOS[1]), "1 not in the frame folder", "99999999.png"],
        (VIDEOS[1],),
    ),
    "empty frame folder": Fault(
        _empty_frames, 1, lambda c: [str(c.root / "data" / VIDEOS[1] / "origin"), "holds no"], (VIDEOS[1],)
    ),
    "missing --data": Fault(
        lambda c: [
            "refine",
            "-q",
            "--data",
            str(c.tmp / "nope"),
            "--pred",
            str(c.pred),
            "--out",
            str(c.out),
            *SP,
        ],
        2,
        lambda c: [f"--data {c.tmp / 'nope'}: no such folder"],
    ),
    "missing --pred": Fault(
        lambda c: [
            "refine",
            "-q",
            "--data",
            str(c.root),
            "--pred",
            str(c.tmp / "nope"),
            "--out",
            str(c.out),
            *SP,
        ],
        2,
        lambda c: [f"--pred {c.tmp / 'nope'}: no such folder"],
    ),
    "--out equal to --pred": Fault(
        _argv(out=lambda c: c.pred), 2, lambda c: [f"--out {c.pred}: is the --pred folder", "ds/refined"]
    ),
    "--out inside --pred": Fault(
        _argv(out=lambda c: c.pred / "refined"),
        2,
        lambda c: [f"--out {c.pred / 'refined'}: lies inside the --pred"],
    ),
    "--out equal to the dataset root": Fault(
        _argv(out=lambda c: c.root), 2, lambda c: [f"--out {c.root}: is the --data root"]
    ),
    "--out containing the dataset": Fault(
        _argv(out=lambda c: c.tmp), 2, lambda c: [f"--out {c.tmp}: contains the --data root"]
    ),
    "rerun after one base label changed": Fault(
        _rerun_after_label_change, 0, lambda c: [], out_may_change=True
    ),
    "--overwrite with a smaller split": Fault(_overwrite_smaller_split, 0, lambda c: [], out_may_change=True),
    "--out of another configuration": Fault(
        _other_configuration,
        2,
        lambda c: [f"--out {c.out}", "refine.paint_order 'area' -> 'amg'", "refine.superpixel_size 64 -> 32"],
    ),
    "read-only --out (EROFS)": Fault(
        _readonly_out,
        2,
        lambda c: [f"--out {c.tmp / 'ro' / 'refined'}: cannot write", "Read-only file system"],
    ),
    "read-only --json (EACCES)": Fault(
        _readonly_json, 2, lambda c: [f"--json {c.tmp / 'ro' / 'm.json'}: cannot write", "Permission denied"]
    ),
    "read-only --csv (EACCES)": Fault(
        _readonly_csv, 2, lambda c: [f"--csv {c.tmp / 'ro' / 'm.csv'}: cannot write", "Permission denied"]
    ),
    "eval: two --pred folders without names": Fault(
        lambda c: [*c.eval(), "--pred", str(c.pred)],
        2,
        lambda c: [f"--pred {c.pred}", "need a name each", "--pred NAME=DIR"],
    ),
    "eval --pred-format vps: a frame missing from pred.json": Fault(
        lambda c: _vps(c, drop_entry=True),
        2,
        lambda c: [*_vps_png(1, 1)(c), f"no entry for video {VIDEOS[1]}", "pred.json"],
    ),
    "eval --pred-format vps: a category id out of range": Fault(
        lambda c: _vps(c, category=200),
        2,
        lambda c: [*_vps_png(2, 0)(c), "category_id 200, not a class in 0..123"],
    ),
    "random-bytes checkpoint": Fault(
        _random_bytes_checkpoint, 2, lambda c: [str(c.tmp / "junk.pt"), "not a SAM2 checkpoint"]
    ),
    "checkpoint of another model size": Fault(
        _other_model_size,
        2,
        lambda c: [str(c.tmp / "tiny.pt"), "does not match model sam2.1_hiera_s", "--model"],
    ),
    "eval --device cuda without a GPU": Fault(
        _eval_cuda_without_gpu, 2, lambda c: ["--device cuda: CUDA is not available", "--device cpu"]
    ),
    "--backend tensorrt on a CPU": Fault(
        _tensorrt_on_cpu, 2, lambda c: ["--backend tensorrt: needs a CUDA GPU"]
    ),
    "GT raw id out of range (eval)": Fault(_gt_out_of_range(reference=False), 2, _gt_file),
    "GT raw id out of range (eval --reference)": Fault(_gt_out_of_range(reference=True), 2, _gt_file),
    "--pred-iou-thresh above 1": Fault(
        _argv("--pred-iou-thresh", "1.5"), 2, lambda c: ["--pred-iou-thresh: must be in [0, 1], got 1.5"]
    ),
    "--stability-thresh below 0": Fault(
        _argv("--stability-thresh", "-0.1"), 2, lambda c: ["--stability-thresh: must be in [0, 1], got -0.1"]
    ),
    "--box-nms-thresh above 1": Fault(
        _argv("--box-nms-thresh", "2"), 2, lambda c: ["--box-nms-thresh: must be in [0, 1], got 2"]
    ),
    "--stability-offset below 0": Fault(
        _argv("--stability-offset", "-1"), 2, lambda c: ["--stability-offset: must be in [0, inf], got -1"]
    ),
}


def _assert_clean(c: Ctx, before: dict[Path, str], failed: tuple[str, ...], out_may_change: bool) -> None:
    """Every input byte-identical; no temporary file, lock or partial video left."""
    after = _digests(c.tmp)
    for path, digest in before.items():
        if out_may_change and c.out in path.parents:
            continue
        assert after.get(path) == digest, f"{path} changed or vanished"
    assert not [p for p in c.tmp.rglob("*") if p.name.endswith(".tmp")], "temporary files left"
    assert not (c.out / ".lock").exists(), "the lock was not released"
    assert not (c.out / ".partial").exists() or not any((c.out / ".partial").iterdir()), (
        "a partial video left"
    )
    for video in failed:
        assert not (c.out / video).exists(), f"{video} failed but has outputs"


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_fault(fault: Fault, pristine, tmp_path, monkeypatch, capsys):
    c = Ctx(tmp_path, tmp_path / "ds", tmp_path / "out", monkeypatch, capsys)
    shutil.copytree(pristine, c.root)
    argv = fault.prepare(c)
    capsys.readouterr()
    before = _digests(tmp_path)
    existed = c.out.exists()
    code, stdout, stderr = c.run(argv)
    assert code == fault.code, stderr
    assert "Traceback" not in stderr
    command = argv[0]
    lines = stderr.strip().splitlines()
    if fault.code != 0:
        assert lines[-1].startswith(f"sam2vss {command}: error: "), lines[-1]
        names = fault.names(c)
        assert any(
            all(n in line for n in names) for line in lines if line.startswith(f"sam2vss {command}: error: ")
        ), f"no error line names {names}:\n{stderr}"
    if fault.code == 2 and not existed:
        assert not c.out.exists(), "refused before work, yet --out was created"
    if fault.code == 1:
        manifest = json.loads((c.out / "manifest.json").read_text())["videos"]
        assert {v for v, e in manifest.items() if e["status"] == "failed"} == set(fault.failed)
        assert all(e["attempts"] <= 1 for e in manifest.values()), "bad input data was retried"
        for video in set(VIDEOS) - set(fault.failed):  # the others finish
            assert manifest[video]["status"] == "done" and len(list((c.out / video).iterdir())) == 3
    _assert_clean(c, before, fault.failed, fault.out_may_change)
    if c.after is not None:
        c.after(c, stdout)


# ------------------------------------------------------------------ cases that need a second process
def _spawn(c: Ctx, *extra: str, env: dict | None = None) -> subprocess.Popen:
    argv = c.refine(*SP, *extra)
    return subprocess.Popen(
        [sys.executable, "-m", "sam2vss", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _paused(c: Ctx) -> tuple[subprocess.Popen, Path]:
    """A refine run held after its first written frame (SAM2VSS_FAULT_PAUSE)."""
    gate = c.tmp / "gate"
    proc = _spawn(c, env={"SAM2VSS_FAULT_PAUSE": str(gate)})
    c.procs.append(proc)  # killed at teardown if a failed assertion left it waiting
    deadline = time.monotonic() + 120
    while not Path(f"{gate}.paused").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its first frame"
        time.sleep(0.05)
    return proc, gate


@pytest.fixture
def ctx(pristine, tmp_path, monkeypatch, capsys):
    c = Ctx(tmp_path, tmp_path / "ds", tmp_path / "out", monkeypatch, capsys)
    shutil.copytree(pristine, c.root)
    yield c
    for proc in c.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fault_second_concurrent_run_is_refused(ctx):
    c = ctx
    before = _digests(c.root)
    first, gate = _paused(c)
    code, _, err = c.run(c.refine(*SP, "--superpixel-size", "32"))  # another configuration, same --out
    assert code == 2 and err.strip().splitlines()[-1].startswith("sam2vss refine: error: --out ")
    assert f"another run (pid {first.pid} on " in err and "is writing here since" in err
    gate.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    manifest = json.loads((c.out / "manifest.json").read_text())
    assert manifest["settings"]["refine"]["superpixel_size"] == 64
    for video, entry in manifest["videos"].items():  # the manifest is right about every video
        from sam2vss.data import open_dataset
        from sam2vss.refine import dataset_jobs
        from sam2vss.video import output_digest

        job = next(j for j in dataset_jobs(open_dataset(c.root), c.pred, "val") if j.name == video)
        assert entry["status"] == "done" and entry["sha256"] == output_digest(job, c.out)
    assert _digests(c.root) == before
    _assert_clean(c, {}, (), True)


def _signalled(c: Ctx, sig: int) -> str:
    """Send `sig` to a run held mid-video; its stderr. The first video must not be visible."""
    proc, _ = _paused(c)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err
    assert not (c.out / VIDEOS[0]).exists(), "a half-written video is visible"
    return err


def test_fault_kill_9_mid_video_then_rerun_is_byte_identical(ctx):
    c = ctx
    before = _digests(c.root)
    _signalled(c, signal.SIGKILL)
    assert (c.out / ".lock").exists()  # left by the killed run: stale, taken over below
    code, _, err = c.run(c.refine(*SP))
    assert code == 0, err
    clean = c.tmp / "clean"
    assert c.run(c.refine(*SP, out=clean))[0] == 0
    assert _outputs(c.out) == _outputs(clean) and len(_outputs(clean)) == 3 * len(VIDEOS)
    assert _digests(c.root) == before
    _assert_clean(c, {}, (), True)


def test_fault_ctrl_c_leaves_no_partial_output(ctx):
    c = ctx
    before = _digests(c.root)
    err = _signalled(c, signal.SIGINT)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("sam2vss refine: error: interrupted (Ctrl-C)")
    assert _digests(c.root) == before
    _assert_clean(c, {}, (VIDEOS[0],), True)
