"""benchmarks/gpu_check.sh and its trace summary: the dry run end to end on the CPU (every step,
the files it leaves under $OUT), the step runner's time limits and keep-going rule, and
gpu_profile.summarise on a planted trace whose counts and idle share are known."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _load_profile_module():
    spec = importlib.util.spec_from_file_location("gpu_profile", ROOT / "benchmarks" / "gpu_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_profile = _load_profile_module()


def _x(cat: str, name: str, ts: float, dur: float = 1.0, corr: int | None = None) -> dict:
    args = {} if corr is None else {"correlation": corr}
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}


# Three frames of 100 µs; frames 1 and 2 are the "steady" ones (span 100..300 µs).
PLANTED = [
    _x("user_annotation", "sam2vss_frame_0", 0, 100),
    _x("user_annotation", "sam2vss_frame_1", 100, 100),
    _x("user_annotation", "sam2vss_frame_2", 200, 100),
    _x("cpu_op", "aten::mm", 50),
    _x("cuda_runtime", "cudaLaunchKernel", 5, corr=1),
    _x("kernel", "gemm", 10, 20, corr=1),  # frame 0, before the span
    _x("cpu_op", "aten::_scaled_dot_product_flash_attention", 112),
    _x("cuda_runtime", "cudaLaunchKernel", 110, corr=2),
    _x("cuda_runtime", "cudaLaunchKernel", 120, corr=3),
    _x("kernel", "elementwise", 115, 25, corr=2),
    _x("kernel", "void pytorch_flash::flash_fwd_kernel<Traits>", 130, 30, corr=3),  # overlaps: 115..160
    _x("cpu_op", "aten::_scaled_dot_product_attention_math", 205),
    _x("cuda_runtime", "cudaLaunchKernel", 210, corr=4),
    _x("kernel", "late", 290, 35, corr=4),  # launched in frame 2, runs past the span: 10 µs count
    _x("cuda_runtime", "cudaMemcpyAsync", 220, corr=5),
    _x("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 225, 20, corr=5),
    _x("cuda_runtime", "cudaStreamSynchronize", 230, corr=6),
    _x("kernel", "unmatched", 400, 10, corr=99),  # no launch in any frame: not counted
    {"ph": "s", "cat": "ac2g", "name": "ac2g", "ts": 110, "id": 2},
]


def test_summarise_counts_a_planted_trace_exactly():
    s = gpu_profile.summarise(PLANTED, [1, 2])
    assert s["frames"] == [1, 2] and s["frame_ms"] == [0.1, 0.1]
    assert s["kernels_per_frame"] == 1.5  # 2 in frame 1, 1 in frame 2 (by launch, not by run time)
    assert s["window_kernels_per_frame"] == 4 / 3
    assert (s["cpu_ops_per_frame"], s["window_cpu_ops_per_frame"]) == (1.0, 1.0)
    assert s["sdpa_ops_per_frame"] == {"flash": 0.5, "math": 0.5}
    assert s["sdpa_kernels_per_frame"] == {"flash": 0.5}
    assert (s["sync_calls_per_frame"], s["sync_calls"]) == (0.5, {"cudaStreamSynchronize": 1})
    # busy: 115..160 (45) + memcpy 225..245 (20) + the late kernel clipped to 290..300 (10) of 200
    assert (s["gpu_busy_ms"], s["span_ms"]) == (0.075, 0.2)
    assert s["gpu_idle_share"] == pytest.approx(0.625, abs=1e-12)
    assert [k["name"] for k in s["top_kernels"]] == [
        "late",
        "void pytorch_flash::flash_fwd_kernel<Traits>",
        "elementwise",
    ]


def test_summarise_without_gpu_events_has_no_idle_share():
    s = gpu_profile.summarise([e for e in PLANTED if e.get("cat") not in gpu_profile.GPU_CATS], [1, 2])
    assert (s["kernels_per_frame"], s["gpu_idle_share"], s["gpu_busy_ms"]) == (0, None, None)


def test_summarise_names_missing_frames():
    with pytest.raises(ValueError, match=r"frames \[3\] have no sam2vss_frame_N annotation.*\[0, 1, 2\]"):
        gpu_profile.summarise(PLANTED, [2, 3])


def test_steps_fail_time_out_and_go_on_within_the_budget():
    """A failing step is recorded and the next runs; a hung one is killed at the deadline (its
    child process too); once the budget is spent the rest are skipped; the exit status is 1."""
    script = f"""
        source {SCRIPT}
        BUDGET=3 START=$SECONDS
        fails() {{ echo failing; return 3; }}
        hangs() {{ sleep 60; }}
        works() {{ echo worked; }}
        export -f fails hangs works
        step first 10 fails
        step second 20 hangs
        step third 10 works
        summary
    """
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("  first    FAILED (exit 3)") for line in lines), run.stdout
    assert any(line.startswith("  second   TIMED OUT") for line in lines), run.stdout
    assert "  third    skipped: no time left of the 3 s budget" in lines, run.stdout
    assert "worked" not in run.stdout


def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    env.pop("GPU_CHECK_BUDGET", None)
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_dryrun-cpu.json",
        "gpu_check_dryrun-cpu.log",
        "junit_dryrun-cpu.xml",
        "profile_dryrun-cpu.json",
        "profile_dryrun-cpu.txt",
    ]
    log = (out / "gpu_check_dryrun-cpu.log").read_text()
    for name in ("env", "install", "tests", "bench", "profile"):
        assert f"== step {name}: ok" in log, log[-4000:]
    suite = ET.parse(out / "junit_dryrun-cpu.xml").getroot().find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert tests > 500 and skipped == tests, f"{tests} gpu / cupy tests, {skipped} skipped"
    bench = json.loads((out / "bench_dryrun-cpu.json").read_text())
    rows = [(r["pipeline"], r["preset"], r["frames"]) for r in bench["rows"]]
    assert rows == [("reference", "-", 3), ("fast", "exact", 3), ("fast", "fastest", 3)]
    assert all(r["agreement"] is not None for r in bench["rows"][1:])
    profile = json.loads((out / "profile_dryrun-cpu.json").read_text())
    assert sorted(profile["presets"]) == ["exact", "fastest"]
    for s in profile["presets"].values():
        assert s["frames"] == [0, 1, 2] and s["cpu_ops_per_frame"] > 100
        assert s["kernels_per_frame"] == 0 and s["gpu_idle_share"] is None  # no CUDA here
        assert s["sdpa_ops_per_frame"].get("flash (cpu)", 0) > 0
