"""Host build of the kernels against their torch twins (exact), input checks, and the CUDA
sources compiling with nvcc for sm_80 and sm_90 (device warnings are errors)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from checks import assert_equal
from sam2vss.config import MetricConfig
from sam2vss.kernels import KernelOps
from sam2vss.metrics import VCState, Workspace

ROOT = Path(__file__).resolve().parents[1]
HOST, TORCH = KernelOps("host"), KernelOps("torch")

SHAPES = [(1, 1), (1, 9), (9, 1), (5, 5), (23, 31), (64, 127), (481, 853)]


def labels(shape, classes, seed, void=True) -> torch.Tensor:
    """Blocky maps (long runs, like real label maps) with speckle and optional void."""
    rng = np.random.default_rng(seed)
    h, w = shape
    coarse = rng.integers(0, classes, size=(h // 7 + 1, w // 7 + 1))
    lab = np.kron(coarse, np.ones((7, 7), np.int64))[:h, :w]
    speckle = rng.random((h, w)) < 0.02
    lab = np.where(speckle, rng.integers(0, classes, (h, w)), lab).astype(np.uint8)
    if void:
        lab[rng.random((h, w)) < 0.03] = 255
    return torch.from_numpy(lab)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [3, 5, 7, 15, 17])
@pytest.mark.parametrize("pad", [False, True])
def test_band_host_equals_torch(shape, k, pad):
    lab = labels(shape, 6, seed=k)
    assert_equal(HOST.band(lab, k, pad), TORCH.band(lab, k, pad), f"band {shape} k={k} pad={pad}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "cfg",
    [
        MetricConfig(),
        MetricConfig(num_classes=4, pad_border=True),
        MetricConfig(num_classes=4, void_mode="keep", boundary_kernel=3),
        MetricConfig(num_classes=254, boundary_kernel=11),
    ],
    ids=["vspw", "pad", "keep_k3", "c254_k11"],
)
def test_frame_counts_host_equals_torch(shape, cfg):
    c = cfg.num_classes
    gt = labels(shape, min(c + 3, 255), seed=1)  # includes out-of-range GT values
    pred = labels(shape, c, seed=2, void=False)
    ws = Workspace()
    for name, got, want in zip(
        ("confusion", "band co-occurrence"),
        HOST.frame_counts(gt, pred, cfg, ws),
        TORCH.frame_counts(gt, pred, cfg, ws),
        strict=True,
    ):
        assert_equal(got, want, f"{name} {shape}")
    assert HOST.frame_counts(gt, pred, cfg, ws)[0].sum() == (gt < c).sum()


def test_frame_counts_non_contiguous_inputs():
    cfg = MetricConfig(num_classes=8)
    gt_t = labels((40, 30), 8, seed=3).t()  # a transposed view
    pred = labels((60, 41), 8, seed=4, void=False)[::2, 1:]  # every other row
    assert not gt_t.is_contiguous() and not pred.is_contiguous()
    ws = Workspace()
    for got, want in zip(
        HOST.frame_counts(gt_t, pred, cfg, ws), TORCH.frame_counts(gt_t, pred, cfg, ws), strict=True
    ):
        assert_equal(got, want, "non-contiguous")


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (120, 213)])
@pytest.mark.parametrize("ns", [[], [8], [8, 16], [2, 3, 5]])
def test_vc_step_host_equals_torch(shape, ns):
    frames = [
        (labels(shape, 3, seed=t, void=True), labels(shape, 3, seed=100 + t // 3, void=False))
        for t in range(12)
    ]
    for t in range(12):  # make runs: most pixels repeat the previous frame
        if t % 4:
            g, p = frames[t]
            frames[t] = (torch.where(torch.rand(shape) < 0.9, frames[t - 1][0], g), p)
    ws_h, ws_t = Workspace(), Workspace()
    st_h, st_t = VCState.like(frames[0][0], ws_h), VCState.like(frames[0][0], ws_t)
    for t, (g, p) in enumerate(frames):
        got = HOST.vc_step(g, p, st_h, t == 0, 16, ns, ws_h)
        want = TORCH.vc_step(g, p, st_t, t == 0, 16, ns, ws_t)
        assert_equal(got, want, f"vc counts frame {t}")
        assert_equal(st_h.run_gt, st_t.run_gt, f"run_gt frame {t}")
        assert_equal(st_h.run_pred, st_t.run_pred, f"run_pred frame {t}")


def test_input_checks_name_the_problem():
    cfg = MetricConfig(num_classes=4)
    u8 = torch.zeros((4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"input 1: expected an \(H, W\) uint8 label map, got torch.int64"):
        HOST.frame_counts(u8, u8.long(), cfg, Workspace())
    with pytest.raises(ValueError, match=r"input 1: shape \(4, 5\) differs"):
        HOST.frame_counts(u8, torch.zeros((4, 5), dtype=torch.uint8), cfg, Workspace())
    with pytest.raises(ValueError, match="unknown kernel backend 'x'"):
        KernelOps("x")


def test_forcing_torch_backend(monkeypatch):
    from sam2vss import envs, kernels

    monkeypatch.setattr(envs, "SAM2VSS_KERNELS", "torch")
    assert kernels.select_backend("cpu") == "torch"
    monkeypatch.setattr(envs, "SAM2VSS_KERNELS", "auto")
    assert kernels.select_backend("cpu") == "host"


# ------------------------------------------------------------------ refiner ops
def blob_logits(n, h, w, seed, dtype=torch.float32) -> torch.Tensor:
    """Masklet-like low-res logits: smooth blobs, positive inside, plus noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centre = torch.rand((n, 2), generator=g)
    radius = 0.1 + 0.3 * torch.rand((n, 1, 1), generator=g)
    d = ((ys[None] - centre[:, 0, None, None]) ** 2 + (xs[None] - centre[:, 1, None, None]) ** 2).sqrt()
    return (8 * (radius - d) + 0.3 * torch.randn((n, h, w), generator=g)).to(dtype)


# 255 masklets (the most a uint8-class refiner paints) at the smaller sizes: the torch twin would
# need 420 MB of upsampled logits at 481x853.
AGGREGATE_CASES = [
    (n, low, out)
    for n in (0, 1, 25, 255)
    for low, out in (((16, 16), (1, 1)), ((7, 13), (23, 31)), ((64, 64), (481, 853)))
    if not (n == 255 and out == (481, 853))
]


@pytest.mark.parametrize(("n", "low", "out"), AGGREGATE_CASES)
@pytest.mark.parametrize("by_logit", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aggregate_host_equals_torch(n, low, out, by_logit, dtype):
    logits = blob_logits(n, *low, seed=n, dtype=dtype)
    rank = torch.randperm(n, generator=torch.Generator().manual_seed(1)).int()
    labels_ = labels(out, 124, seed=3, void=False)
    got_ids, got_hist = HOST.aggregate(logits, rank, labels_, 124, by_logit)
    want_ids, want_hist = TORCH.aggregate(logits, rank, labels_, 124, by_logit)
    assert_equal(got_ids, want_ids, f"aggregate ids n={n} {low}->{out}")
    assert_equal(got_hist, want_hist, f"aggregate votes n={n} {low}->{out}")
    if n and out == (481, 853):
        assert (got_ids >= 0).any() and got_hist.sum() > 0  # the blobs do cover pixels


def test_upsampling_grid_matches_f_interpolate():
    from sam2vss.vote import upsample_logits

    logits = blob_logits(5, 64, 64, seed=0)
    ours = upsample_logits(logits, (480, 853))
    ref = torch.nn.functional.interpolate(
        logits[None], size=(480, 853), mode="bilinear", align_corners=False
    )[0]
    assert (ours - ref).abs().max() < 1e-4


def test_decide_and_paint_host_equal_torch():
    hist = torch.randint(0, 4, (40, 124), generator=torch.Generator().manual_seed(0))  # many ties
    hist[5] = 0  # an empty masklet
    assert_equal(HOST.decide(hist), TORCH.decide(hist), "decide")
    ids = torch.randint(-1, 40, (23, 31), generator=torch.Generator().manual_seed(1)).int()
    classes, base = TORCH.decide(hist), labels((23, 31), 124, seed=5, void=False)
    assert_equal(HOST.paint(ids, classes, base), TORCH.paint(ids, classes, base), "paint")


@pytest.mark.parametrize("b", [0, 1, 7])
@pytest.mark.parametrize("low", [(1, 1), (16, 16), (64, 48)])
def test_amg_stats_host_equals_torch(b, low):
    logits = blob_logits(b, *low, seed=b)
    if b:
        logits[0] = -5.0  # an empty candidate: stability NaN (0/0) like SAM2, box zeros
    got = HOST.amg_stats(logits, 0.0, 0.9, (480, 853))
    want = TORCH.amg_stats(logits, 0.0, 0.9, (480, 853))
    for name, g_, w_ in zip(("stability", "area", "boxes"), got, want, strict=True):
        assert_equal(g_, w_, f"amg_stats {name} b={b} low={low}")


def test_amg_stability_is_sam2s():
    from sam2.utils.amg import calculate_stability_score

    logits = blob_logits(6, 32, 32, seed=9)
    ours, _, _ = HOST.amg_stats(logits, 0.0, 0.9, (32, 32))
    assert torch.equal(ours, calculate_stability_score(logits, 0.0, 0.9))


NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "kernels").glob("*.cu")))
def test_cuda_sources_compile_for_sm80_and_sm90(source, tmp_path):
    cmd = [
        NVCC, "-fatbin", "-std=c++17", "-fmad=false", "-Werror", "all-warnings", "-Xptxas", "-v",
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
        "-I", str(ROOT / "kernels"), str(ROOT / "kernels" / source), "-o", str(tmp_path / "out.fatbin"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"nvcc failed on {source}:\n{run.stderr[-3000:]}"
    assert (tmp_path / "out.fatbin").stat().st_size > 0
    assert "Used" in run.stderr and "registers" in run.stderr  # the ptxas resource report


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_install_built_the_fatbins():
    import sam2vss._host as host

    fatbins = Path(host.__file__).parent / "fatbin"
    built = sorted(p.stem for p in fatbins.glob("*.fatbin"))
    assert built == sorted(p.stem for p in (ROOT / "kernels").glob("*.cu")), f"fatbins in {fatbins}: {built}"
    assert all((fatbins / f"{op}.ptxas.txt").read_text() for op in built)
