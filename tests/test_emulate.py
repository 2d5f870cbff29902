"""The emulated CUDA device itself: planted mismatches raise as CUDA would, planted syncs,
launches and copies are counted, autocast and the SDPA choice are CUDA's, and the emulated
CuPy kernels compute their twins with one launch each."""

from __future__ import annotations

import threading

import pytest
import torch

from sam2vss.emulate import EmulatedCuda, EmulatedDeviceError


@pytest.fixture
def emu():
    with EmulatedCuda(devices=2) as e:
        yield e


def test_tensors_report_an_indexed_cuda_device_and_compute_on_the_cpu(emu):
    assert torch.cuda.is_available() and torch.cuda.device_count() == 2
    a = torch.arange(4.0, device="cuda")
    b = torch.ones(4).to("cuda:0")
    assert a.device == torch.device("cuda", 0) and torch.equal((a + b).elem, torch.arange(1.0, 5.0))
    torch.cuda.set_device(1)
    assert torch.zeros(1, device="cuda").device == torch.device("cuda", 1)
    with pytest.raises(EmulatedDeviceError, match="invalid device ordinal"):
        torch.zeros(1, device="cuda:2")


@pytest.mark.parametrize(
    "planted",
    [
        lambda d: d + torch.ones(4),  # device meets host
        lambda d: d + torch.ones(4, device="cuda:1"),  # two devices
        lambda d: torch.cat([d, torch.ones(4)]),
        lambda d: torch.ones(4)[d.long()],  # device indices into a host tensor
        lambda d: torch.where(d > 0, d, torch.zeros(4)),
        lambda d: d.pin_memory(),  # only host tensors can be pinned
    ],
    ids=["add_host", "add_other_device", "cat_host", "host_indexed_by_device", "where_host", "pin_device"],
)
def test_planted_mismatches_raise(emu, planted):
    d = torch.arange(4.0, device="cuda:0")
    with pytest.raises(EmulatedDeviceError, match=r"device|pinned|indices"):
        planted(d)
    assert len(emu.mismatches) == 1 and "test_emulate.py" in emu.mismatches[0]


def test_non_strict_mode_records_mismatches_and_goes_on():
    with EmulatedCuda(strict=False) as emu:
        d = torch.arange(4.0, device="cuda")
        out = d + torch.ones(4)
        assert torch.equal(out.elem, torch.arange(1.0, 5.0)) and len(emu.mismatches) == 1
        assert "test_emulate.py" in emu.mismatches[0]  # names the call site


def test_allowed_mixes_do_not_raise(emu):
    d = torch.arange(4.0, device="cuda")
    assert torch.equal((d * torch.tensor(2.0)).elem, torch.arange(0.0, 8.0, 2.0))  # a CPU scalar
    assert torch.equal(d[torch.tensor([0, 2])].elem, torch.tensor([0.0, 2.0]))  # host indices are copied
    assert emu.counts["syncs"] == 1 and "h2d" in emu.syncs[0].reason


@pytest.mark.parametrize(
    ("planted", "reason"),
    [
        (lambda d, h: d.sum().item(), "item"),
        (lambda d, h: bool(d.sum() > 0), "item"),
        (lambda d, h: d.nonzero(), "nonzero"),
        (lambda d, h: d[d > 1], "boolean mask"),
        (lambda d, h: torch.bincount(d.long()), "bincount"),
        (lambda d, h: torch.unique(d), "unique"),
        (lambda d, h: d.cpu(), "d2h"),
        (lambda d, h: d.tolist(), "d2h"),
        (lambda d, h: h.to("cuda"), "h2d"),
        (lambda d, h: torch.tensor([1, 2], device="cuda"), "h2d"),
        (lambda d, h: torch.cuda.synchronize(), "synchronize"),
        (lambda d, h: torch.cuda.Event().synchronize(), "event"),
    ],
    ids=[
        "item", "bool", "nonzero", "bool_mask", "bincount", "unique", "cpu", "tolist", "h2d_blocking",
        "tensor_on_device", "synchronize", "event_wait",
    ],
)  # fmt: skip
def test_planted_syncs_are_counted_with_their_site(emu, planted, reason):
    d = torch.arange(4.0, device="cuda")
    h = torch.ones(4)
    emu.reset()
    planted(d, h)
    assert emu.counts["syncs"] == 1, emu.syncs
    assert reason in emu.syncs[0].reason and "test_emulate.py" in emu.syncs[0].site


def test_asynchronous_work_is_not_a_sync(emu):
    d = torch.arange(4.0, device="cuda")
    emu.reset()
    pinned = torch.ones(4).pin_memory()
    assert pinned.is_pinned() and not torch.ones(4).is_pinned()
    up = pinned.to("cuda", non_blocking=True)  # pinned, non-blocking H2D
    back = torch.empty(4, pin_memory=True)
    back.copy_(d, non_blocking=True)  # D2H into pinned memory
    d[d > 1] = 0.0  # a scalar through a mask: a masked fill
    torch.ones(4).to("cuda", non_blocking=True)  # pageable but non-blocking: counted apart
    assert torch.equal(up.elem, torch.ones(4)) and torch.equal(back, torch.arange(4.0))
    assert emu.counts["syncs"] == 0, emu.syncs
    assert emu.counts["h2d_bytes"] == 32 and emu.counts["d2h_bytes"] == 16
    assert emu.counts["pageable_h2d"] == 1


def test_syncs_on_other_threads_are_kept_apart(emu):
    d = torch.arange(4.0, device="cuda")
    emu.reset()
    worker = threading.Thread(target=lambda: (torch.cuda.Event().synchronize(), d.sum().item()))
    worker.start()
    worker.join()
    assert emu.counts["syncs"] == 0 and emu.counts["syncs (other threads)"] == 2


def test_launches_and_metadata(emu):
    d = torch.arange(12.0, device="cuda")
    emu.reset()
    d.view(3, 4).t()[1:]  # views: no launch
    torch.empty(5, device="cuda")  # a bare allocation
    d.to(torch.float32)  # a no-op conversion dispatches nothing
    assert emu.counts["launches"] == 0 and emu.counts["metadata"] == 4
    d.add_(1)
    d + 1
    d.to(torch.bfloat16)
    torch.zeros(3, device="cuda")
    assert emu.counts["launches"] == 4
    assert d.add_(1) is d  # in-place ops return the same tensor


def test_cuda_autocast_and_sdpa_backend(emu):
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        lin = torch.nn.Linear(8, 8).to("cuda")
        x = torch.randn(2, 8, device="cuda")
        assert lin(x).dtype == torch.bfloat16  # autocast's CUDA policy
        q = torch.randn(1, 1, 16, 32, device="cuda")
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with torch.inference_mode():
        q = torch.randn(1, 1, 16, 32, device="cuda")
        torch.nn.functional.scaled_dot_product_attention(q, q, q)  # fp32
    assert emu.sdpa == {"flash": 1, "efficient": 1}
    assert isinstance(lin.weight, torch.nn.Parameter) or type(lin.weight).__name__ == "EmulatedTensor"


def test_device_context_and_properties(emu):
    with torch.cuda.device(1):
        assert torch.cuda.current_device() == 1
        assert torch.zeros(1, device="cuda").device.index == 1
    assert torch.cuda.current_device() == 0
    assert torch.cuda.get_device_capability() == (9, 0)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream() == s
    assert torch.cuda.current_stream() != s


def test_emulated_cupy_counts_one_launch_per_kernel_and_equals_the_twin(emu):
    from sam2vss import cuda_kernels
    from sam2vss.kernels import KernelOps

    ops, twin = KernelOps("cupy"), KernelOps("torch")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 16, 16, generator=g)
    labels = torch.randint(0, 5, (37, 53), dtype=torch.uint8, generator=g)
    rank = torch.tensor([2, 0, 1], dtype=torch.int32)
    want_ids, want_hist = twin.aggregate(logits, rank, labels, 5, False)
    emu.reset()
    ids, hist = ops.aggregate(logits.to("cuda"), rank.to("cuda"), labels.to("cuda"), 5, False)
    assert emu.counts["kernel svs_aggregate"] == 1
    assert torch.equal(ids.elem, want_ids) and torch.equal(hist.elem, want_hist)
    classes = ops.decide(hist)
    painted = ops.paint(ids, classes, labels.to("cuda"))
    assert torch.equal(painted.elem, twin.paint(want_ids, twin.decide(want_hist), labels))
    assert cuda_kernels.available()
    with torch.cuda.device(1), pytest.raises(BufferError, match="different CUDA device index"):
        cuda_kernels.decide(hist)  # DLPack refuses a tensor of another device than the current one
    with torch.cuda.device(1):
        assert ops.decide(hist).device.index == 0  # KernelOps launches on the tensors' device
        assert torch.cuda.current_device() == 1
