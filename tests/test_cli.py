"""The command line: synth -> eval (fast and reference agree), errors, demo, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sam2vss.cli import main


@pytest.fixture(scope="module")
def cli_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "ds"
    args = [
        "synth",
        "-q",
        "--out",
        str(root),
        "--videos",
        "2",
        "--frames",
        "18",
        "--height",
        "48",
        "--width",
        "64",
    ]
    assert main(args) == 0
    return root


def test_eval_json_and_reference_agree(cli_set, tmp_path, capsys):
    fast, ref = tmp_path / "fast.json", tmp_path / "ref.json"
    base = ["eval", "-q", "--data", str(cli_set), "--pred", str(cli_set / "pred_base")]
    assert main([*base, "--json", str(fast), "--per-video"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "mVC16" in out and "per video" in out
    assert main([*base, "--json", str(ref), "--reference"]) == 0
    a, b = json.loads(fast.read_text()), json.loads(ref.read_text())
    for key in ("miou", "miou_present", "fwiou", "mbiou", "mvc8", "mvc16"):
        assert 0.0 <= a[key] <= 1.0 and abs(a[key] - b[key]) < 1e-9, key
    assert (a["frames"], a["videos"], a["windows8"], a["windows16"]) == (36, 2, 20, 4)


def test_eval_error_is_one_clear_line(cli_set, capsys):
    assert main(["eval", "-q", "--data", str(cli_set), "--pred", str(cli_set / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam2vss eval: error: prediction folder of") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_demo_writes_report(tmp_path, capsys):
    assert main(["demo", "-q", "--out", str(tmp_path / "demo"), "--videos", "1", "--frames", "17"]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "base (simulated)" in report and "panel_0.png" in report
    assert (tmp_path / "demo" / "panel_1.png").is_file()
    assert "base (simulated)" in capsys.readouterr().out


def test_module_help():
    out = subprocess.run(
        [sys.executable, "-m", "sam2vss", "--help"], capture_output=True, text=True, check=True
    )
    assert "synth" in out.stdout and "eval" in out.stdout and "demo" in out.stdout


def test_bench_rejects_unknown_presets_and_backends(capsys):
    assert main(["bench", "--preset", "exact@onnx"]) == 2
    assert "backends among" in capsys.readouterr().err
    assert main(["bench", "--preset", "quickest"]) == 2
    assert main(["bench", "--window", "0"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sam2vss 0.1.0 (torch ")


def test_help_documents_exit_codes():
    out = subprocess.run([sys.executable, "-m", "sam2vss", "--help"], capture_output=True, text=True).stdout
    assert "exit codes: 0 done, 1 some videos failed" in out and "130 interrupted" in out


def test_traceback_only_with_debug(tmp_path, capsys):
    argv = ["eval", "-q", "--data", str(tmp_path / "nope"), "--pred", str(tmp_path)]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("sam2vss eval: error: --data ")
    run = subprocess.run(
        [sys.executable, "-m", "sam2vss", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "SAM2VSS_DEBUG": "1"},
    )
    assert run.returncode == 2 and "Traceback" in run.stderr


def test_internal_error_is_one_line(monkeypatch, tmp_path, capsys):
    import sam2vss.cli

    def boom(a):
        raise RuntimeError("boom")

    monkeypatch.setattr(sam2vss.cli, "cmd_synth", boom)
    assert main(["synth", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "sam2vss synth: error: internal error (RuntimeError: boom); rerun with --debug and report it"
    )
