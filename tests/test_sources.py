"""Video sources: every installed backend returns the same frames, in the same order, with the
same count, for the same file (pairwise on generated CFR, VFR, B-frame, odd-height and 1-frame
videos); errors name the file; prefetching keeps order and hands errors over; the device
preprocessing stays within one uint8 level of SAM2's own loader."""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from sam2vss import sources
from sam2vss.config import VIDEO_BACKENDS
from sam2vss.data import DataError
from sam2vss.propagate import preprocess, to_model_input
from sam2vss.sources import BACKENDS, Prefetcher, available, choose_decoder, open_source, to_rgb


@pytest.fixture(params=VIDEO_BACKENDS)
def backend(request):
    """Each video backend; one that is not installed is skipped with a reason that -ra prints
    (make install puts all three in .venv, torchcodec needing Debian's ffmpeg)."""
    if not available(request.param):
        pytest.skip(f"{request.param} is not installed here")
    return request.param


def _frame(t: int, h: int, w: int) -> np.ndarray:
    """A textured frame that moves with t (so a frame off by one is visibly different)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 3 + t * 9) % 256
    g = (y * 5 + t * 17) % 256
    b = ((x + y) // 8 * 40 + t * 31) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def _encode(path, n: int, h: int = 64, w: int = 96, bframes: int = 0, vfr: bool = False) -> None:
    """H.264 with PyAV; odd sizes use 4:4:4 (4:2:0 needs even sizes)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p" if h % 2 or w % 2 else "yuv420p"
        s.options = {"bf": str(bframes), "g": "6", "crf": "18"}
        if vfr:
            s.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for t in range(n):
            f = av.VideoFrame.from_ndarray(_frame(t, h, w), format="rgb24")
            if vfr:  # irregular gaps: 40, 20, 60, 40, 20, 60 ... ms
                f.pts, f.time_base = pts, Fraction(1, 1000)
                pts += (40, 20, 60)[t % 3]
            c.mux(s.encode(f))
        c.mux(s.encode())


VIDEOS = {
    "cfr": dict(n=20),
    "bframes": dict(n=23, bframes=3),
    "vfr": dict(n=17, vfr=True, bframes=2),
    "odd_size": dict(n=9, h=67, w=91),
    "one_frame": dict(n=1),
}


@pytest.fixture(scope="module", params=list(VIDEOS))
def video(request, tmp_path_factory):
    kind = request.param
    path = tmp_path_factory.mktemp("videos") / f"{kind}.mp4"
    _encode(path, **VIDEOS[kind])
    return path, VIDEOS[kind]["n"]


@pytest.fixture(scope="module")
def pyav_frames(video):
    path, _ = video
    import av

    with av.open(str(path)) as c:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])).permute(
            0, 3, 1, 2
        )


def test_backend_returns_the_decoded_frames_exactly(video, pyav_frames, backend):
    path, n = video
    with open_source(path, backend) as src:
        assert len(src) == n == pyav_frames.shape[0]
        assert (src.info.height, src.info.width) == tuple(pyav_frames.shape[2:])
        windows = list(src.windows(4))
        assert [w.shape[0] for w in windows] == [min(4, n - s) for s in range(0, n, 4)]
        got = torch.cat(windows)
        assert got.dtype == torch.uint8 and got.shape == pyav_frames.shape
        assert torch.equal(got, pyav_frames), f"{backend}: frames differ from PyAV's decode"


def test_random_access_matches_sequential(video, pyav_frames, backend):
    path, n = video
    with open_source(path, backend) as src:
        for i in sorted({n - 1, n // 2, 0, min(3, n - 1)}, reverse=True):  # backwards: forces seeks
            assert torch.equal(src.frame(i), pyav_frames[i]), f"{backend}: frame {i} differs"
        with pytest.raises(IndexError, match="has"):
            src.frame(n)


def test_frame_folder_matches_pillow(tmp_path):
    for t in range(5):
        Image.fromarray(_frame(t, 61, 83)).save(tmp_path / f"{t:05d}.jpg", quality=90)
    Image.fromarray(_frame(9, 61, 83)).save(tmp_path / "00005.png")
    with open_source(tmp_path) as src:
        assert src.backend == "frames" and len(src) == 6 and src.info.fps is None
        got = torch.cat(list(src.windows(4)))
    for t, path in enumerate(sorted(tmp_path.iterdir())):
        with Image.open(path) as im:
            assert np.array_equal(to_rgb(got[t : t + 1])[0], np.asarray(im.convert("RGB"))), path.name


def test_one_frame_folder(tmp_path):
    Image.fromarray(_frame(0, 8, 8)).save(tmp_path / "a.jpg")
    with open_source(tmp_path) as src:
        assert len(src) == 1 and next(iter(src.windows(32))).shape == (1, 3, 8, 8)


def test_corrupt_video_names_the_file(tmp_path, backend):
    good = tmp_path / "good.mp4"
    _encode(good, 12)
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    for path in (bad, junk):
        with pytest.raises(DataError, match=path.name), open_source(path, backend) as src:
            torch.cat(list(src.windows(4)))


def test_zero_frame_video_is_an_error(tmp_path, backend):
    import av

    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = 64, 64
    with pytest.raises(DataError, match=r"empty\.mp4"):
        open_source(path, backend)


def test_corrupt_jpeg_names_the_frame(tmp_path):
    for t in range(3):
        Image.fromarray(_frame(t, 32, 32)).save(tmp_path / f"{t}.jpg")
    (tmp_path / "1.jpg").write_bytes((tmp_path / "1.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match=r"1\.jpg"), open_source(tmp_path) as src:
        list(src.windows(3))


def test_decoder_choice_errors(tmp_path):
    assert choose_decoder(tmp_path) == "frames"
    with pytest.raises(DataError, match="--decoder frames"):
        choose_decoder(tmp_path, "pyav")
    with pytest.raises(ValueError, match="expected one of"):
        choose_decoder(tmp_path, "ffmpeg")
    with pytest.raises(DataError, match="no such"):
        open_source(tmp_path / "missing.mp4", "pyav")
    assert set(BACKENDS) == {"torchcodec", "decord", "pyav", "frames"}


def test_missing_backend_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "available", lambda b: b != "decord")
    with pytest.raises(DataError, match="not installed"):
        choose_decoder(tmp_path / "x.mp4", "decord")


def test_prefetch_keeps_order_and_runs_ahead():
    started = []

    def produce():
        for i in range(6):
            started.append(i)
            yield torch.full((2,), i)

    pre = Prefetcher(produce(), depth=2)
    first = next(pre)
    deadline = threading.Event()
    for _ in range(100):  # the worker fills the queue while the consumer holds item 0
        if len(started) >= 3:
            break
        deadline.wait(0.01)
    assert len(started) >= 3
    assert [int(first[0]), *[int(x[0]) for x in pre]] == list(range(6))
    pre.close()


def test_prefetch_hands_over_errors_and_closes_early():
    def produce():
        yield torch.zeros(1)
        raise DataError("video.mp4: broken")

    pre = Prefetcher(produce())
    next(pre)
    with pytest.raises(DataError, match=r"video\.mp4"):
        next(pre)
    early = Prefetcher(iter([torch.zeros(1)] * 50), depth=1)
    next(early)
    early.close()  # a producer blocked on the full queue must not hang close()
    assert not early._thread.is_alive()


# One uint8 level at the smallest std (0.224), plus float rounding: Pillow rounds its resize to
# uint8 levels; the device path rounds too and differs by at most one level, on few values.
PREPROCESS_TOL = 1.0 / (255 * 0.224) * (1 + 1e-4)
PREPROCESS_MAX_SHARE = 0.005


@pytest.mark.parametrize("hw", [(481, 853), (64, 96), (300, 200), (200, 300), (256, 256), (1, 1), (1, 500)])
def test_device_preprocessing_matches_sam2_loader(hw):
    rng = np.random.default_rng(hw[0])
    frames = rng.integers(0, 256, size=(2, *hw, 3), dtype=np.uint8)
    ours = to_model_input(torch.from_numpy(frames).permute(0, 3, 1, 2), 256)
    for t in range(2):
        theirs = preprocess(frames[t], 256)
        diff = (ours[t] - theirs).abs()
        err, share = diff.max().item(), (diff > 1e-5).float().mean().item()
        assert err <= PREPROCESS_TOL, f"frame {t} at {hw}: {err} > {PREPROCESS_TOL}"
        assert share <= PREPROCESS_MAX_SHARE, f"frame {t} at {hw}: {share:.2%} of values differ"
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 256, 256)
    assert (
        to_model_input(torch.from_numpy(frames).permute(0, 3, 1, 2), 256, torch.bfloat16).dtype
        == torch.bfloat16
    )


def test_sam2_loader_is_what_preprocess_reproduces(tmp_path):
    """The twin itself: SAM2's own JPEG loader gives the same tensor as `preprocess`."""
    from sam2.utils.misc import _load_img_as_tensor

    frame = _frame(3, 77, 131)
    Image.fromarray(frame).save(tmp_path / "f.png")
    theirs, _, _ = _load_img_as_tensor(str(tmp_path / "f.png"), 256)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.equal(preprocess(frame, 256), (theirs.float() - mean) / std)


def test_frames_arrive_on_the_sources_device(tmp_path):
    """A source returns windows on its device (here the CPU; on CUDA via pinned memory)."""
    _encode(tmp_path / "v.mp4", 5)
    with open_source(tmp_path / "v.mp4", "pyav", device="cpu") as src:
        assert src.device == torch.device("cpu")
        assert all(w.device == src.device for w in src.windows(2))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["pyav", "frames"])
def test_cpu_decoders_feed_the_gpu(tmp_path, backend):
    _encode(tmp_path / "v.mp4", 5)
    for t in range(5):
        Image.fromarray(_frame(t, 64, 96)).save(tmp_path / f"{t}.jpg")
    path = tmp_path / "v.mp4" if backend == "pyav" else tmp_path
    with open_source(path, backend) as cpu, open_source(path, backend, device="cuda") as gpu:
        for a, b in zip(cpu.windows(2), gpu.windows(2), strict=True):
            assert b.is_cuda and torch.equal(a, b.cpu())
