"""Video sources: one streaming interface over torchcodec, Decord, PyAV and frame folders.

A VideoSource yields a video's frames in presentation order, with an exact count, as windows of
uint8 tensors (T, 3, H, W) on the chosen device (a CPU decoder's frames go through pinned host
memory to a GPU), never the whole video at once; `Prefetcher` runs the next window's decode on a
background thread while the current one computes. The decision a reader must know: every
backend returns the same frames for the same file (tests/test_sources.py compares them pairwise
on generated CFR, VFR and B-frame videos), so the backend is a speed choice, never a results
choice. The JPEG decoders agree too: torchcodec's (and torchvision's) decode_jpeg equals Pillow's
byte for byte on the dev machine.

Backends, best first for `auto`: torchcodec (NVDEC when the device is cuda and torch has CUDA),
decord (CPU context; GPU context only when the installed decord was built with CUDA), pyav (FFmpeg
bundled, works everywhere); `frames` for folders (batched decode_jpeg, nvJPEG on cuda).
GPU decoding is probed once per backend on the first video: if it fails where CPU decoding of
the same file works (decord's PyPI wheel has no CUDA; torchcodec may lack NVDEC), the backend
decodes on the CPU from then on and copies through pinned memory, with one log line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from sam2vss.config import DECODERS, VIDEO_BACKENDS
from sam2vss.data import IMAGE_SUFFIXES, DataError, list_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    num_frames: int
    fps: float | None  # average frames/s from the container (None for a frame folder)
    height: int
    width: int


class VideoSource(Protocol):
    path: Path
    backend: str
    info: SourceInfo
    paths: list[Path] | None  # the frames' image files (frame folders only)

    def __len__(self) -> int: ...
    def window(self, start: int, stop: int) -> torch.Tensor: ...  # (stop-start, 3, H, W) uint8
    def frame(self, index: int) -> torch.Tensor: ...  # (3, H, W) uint8
    def windows(self, size: int) -> Iterator[torch.Tensor]: ...
    def close(self) -> None: ...


class _Source:
    """What every backend shares: bounds checks, sequential windows, context management.
    Backends implement `_open` (-> SourceInfo) and `_decode(start, stop)` on self.decode_device."""

    backend = ""

    def __init__(self, path: Path, device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.paths: list[Path] | None = None
        if not self.path.exists():
            raise DataError(f"{self.path}: no such video file or frame folder")
        self.info = self._open()
        if self.info.num_frames == 0:
            raise DataError(f"{self.path}: the video has no frames; re-export it or drop it from the split")

    def _open(self) -> SourceInfo:
        raise NotImplementedError

    def _unreadable(self, e: Exception) -> DataError:
        return DataError(
            f"{self.path}: cannot open video ({e}); the file is damaged, truncated or not a video"
        )

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.info.num_frames

    def window(self, start: int, stop: int) -> torch.Tensor:
        """Frames start..stop-1 as (T, 3, H, W) uint8 on the decode device."""
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"{self.path}: frames {start}..{stop - 1} requested, the video has {len(self)}")
        try:
            frames = self._decode(start, stop)
        except DataError:
            raise
        except Exception as e:  # decoder libraries raise their own types; name the file
            raise DataError(f"{self.path}: cannot decode frames {start}..{stop - 1} ({e})") from e
        if frames.device.type == "cpu" and self.device.type == "cuda":  # a CPU decoder feeding a GPU
            return frames.pin_memory().to(self.device, non_blocking=True)
        return frames.to(self.device)  # a no-op when decoded on the device

    def frame(self, index: int) -> torch.Tensor:
        return self.window(index, index + 1)[0]

    def windows(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self.window(start, min(start + size, len(self)))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Backends whose GPU decoding failed here (probed on the first video that tried it).
_NO_GPU_DECODE: set[str] = set()


def _gpu_decode(backend: str, path: Path, device: torch.device, open_gpu, open_cpu):
    """open_gpu() when `device` is CUDA and the backend's GPU decoding works here, else
    open_cpu(). A GPU failure on a file the CPU decodes means the GPU path is unavailable (not a
    bad file): logged once, CPU decoding from then on."""
    if device.type != "cuda" or backend in _NO_GPU_DECODE:
        return open_cpu(), False
    try:
        return open_gpu(), True
    except Exception as e:  # decoder libraries raise their own types
        handle = open_cpu()  # raises DataError for a bad file
        _NO_GPU_DECODE.add(backend)
        log.warning(
            "%s cannot decode on %s here (%s: %s); decoding on the CPU and copying through pinned memory",
            backend, device, type(e).__name__, str(e).splitlines()[0] if str(e) else "",
        )  # fmt: skip
        return handle, False


class TorchcodecSource(_Source):
    """torchcodec's VideoDecoder in exact seek mode (a packet scan gives exact indices)."""

    backend = "torchcodec"

    def _open(self) -> SourceInfo:
        def open_on(device: str):
            try:
                dec = _video_decoder(str(self.path), device=device, seek_mode="exact", dimension_order="NCHW")
                if device != "cpu" and (dec.metadata.num_frames or 0):
                    dec.get_frames_in_range(0, 1)  # NVDEC problems surface on the first decode
                return dec
            except (RuntimeError, ValueError) as e:
                if device != "cpu":
                    raise
                raise self._unreadable(e) from e

        # NVDEC decodes straight into the device's memory (the index matters: cuda:1 is not cuda)
        self._dec, _ = _gpu_decode(
            "torchcodec", self.path, self.device, lambda: open_on(str(self.device)), lambda: open_on("cpu")
        )
        m = self._dec.metadata
        return SourceInfo(m.num_frames or 0, m.average_fps, m.height, m.width)

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        return self._dec.get_frames_in_range(start, stop).data


def _video_decoder(path: str, device: str, **kwargs):
    """torchcodec's VideoDecoder (one construction site: the emulated device replaces it)."""
    from torchcodec.decoders import VideoDecoder

    return VideoDecoder(path, device=device, **kwargs)


class DecordSource(_Source):
    backend = "decord"

    def _open(self) -> SourceInfo:
        import decord

        def open_on(ctx):
            try:
                return decord.VideoReader(str(self.path), ctx=ctx)
            except (decord.DECORDError, RuntimeError) as e:
                if ctx is not cpu:
                    raise
                raise self._unreadable(e) from e

        cpu = decord.cpu(0)
        # decord's PyPI wheel has no CUDA: its GPU context fails and the probe falls back
        self._vr, _ = _gpu_decode(
            "decord",
            self.path,
            self.device,
            lambda: open_on(decord.gpu(self.device.index)),
            lambda: open_on(cpu),
        )
        h, w = self._vr[0].shape[:2] if len(self._vr) else (0, 0)
        self._vr.seek(0)
        return SourceInfo(len(self._vr), self._vr.get_avg_fps(), h, w)

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        batch = self._vr.get_batch(list(range(start, stop)))
        return torch.from_numpy(batch.asnumpy()).permute(0, 3, 1, 2)


class PyAVSource(_Source):
    """PyAV (FFmpeg). Frame i is the i-th presentation timestamp of the stream's packets; a window
    seeks to the keyframe before it when it is not the next frame, then decodes forward."""

    backend = "pyav"

    def _open(self) -> SourceInfo:
        import av

        self._av = av
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise DataError(f"{self.path}: the file has no video stream")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads; must be set before the codec opens
            pts = sorted(p.pts for p in self._container.demux(stream) if p.pts is not None and p.size)
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise self._unreadable(e) from e
        self._pts, self._next = pts, None
        self._frames: Iterator | None = None
        rate = float(stream.average_rate) if isinstance(stream.average_rate, Fraction) else None
        return SourceInfo(len(pts), rate, stream.height, stream.width)

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        stream = self._container.streams.video[0]
        if self._next != start:
            self._container.seek(self._pts[start], stream=stream, backward=True, any_frame=False)
            self._frames = iter(self._container.decode(stream))
        out = []
        for frame in self._frames:
            if frame.pts is None or frame.pts < self._pts[start + len(out)]:
                continue  # frames between the keyframe and the window
            out.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(out) == stop - start:
                break
        if len(out) != stop - start:
            raise DataError(f"{self.path}: the stream ended after {start + len(out)} of {len(self)} frames")
        self._next = stop
        return torch.stack(out).permute(0, 3, 1, 2)

    def close(self) -> None:
        self._container.close()


class FrameSource(_Source):
    """A folder of JPEG or PNG frames in sorted name order (VSPW `origin/`); a window's JPEGs are
    decoded in one batched decode_jpeg call (nvJPEG when the device is cuda)."""

    backend = "frames"

    def _open(self) -> SourceInfo:
        if not self.path.is_dir():
            raise DataError(f"{self.path}: the frames decoder needs a folder of JPEG or PNG frames")
        names = list_frames(self.path, IMAGE_SUFFIXES, "frame folder")
        self.paths = [self.path / n for n in names]
        self.names = [p.stem for p in self.paths]
        first = self._decode(0, 1)
        return SourceInfo(len(names), None, first.shape[2], first.shape[3])

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        decode_jpeg, decode_image = image_decoders()
        paths = self.paths[start:stop]
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
        try:
            if all(p.suffix.lower() in (".jpg", ".jpeg") for p in paths):
                images, _ = _gpu_decode(  # nvJPEG on CUDA
                    "nvjpeg", self.path, self.device,
                    lambda: decode_jpeg(data, mode="RGB", device=self.device),
                    lambda: decode_jpeg(data, mode="RGB", device="cpu"),
                )  # fmt: skip
            else:  # PNG frames decode on the CPU; window() copies them through pinned memory
                images = [decode_image(d, mode="RGB") for d in data]
        except RuntimeError as e:
            bad = _first_undecodable(paths)
            raise DataError(f"{bad}: cannot decode image ({e}); the file is damaged or truncated") from e
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) != 1:
            raise DataError(f"{self.path}: frames {start}..{stop - 1} differ in size {sorted(sizes)}")
        return torch.stack(images)


def image_decoders():
    """torchcodec's image decoders (torchvision 0.29 deprecates its own in their favour), else
    torchvision.io's; both batch JPEGs through nvJPEG on cuda and equal Pillow's output exactly."""
    if available("torchcodec"):
        from torchcodec.decoders import decode_image, decode_jpeg
    else:
        from torchvision.io import decode_image, decode_jpeg
    return decode_jpeg, decode_image


def _first_undecodable(paths: list[Path]) -> Path:
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except OSError:
            return p
    return paths[0]


BACKENDS: dict[str, type[_Source]] = {
    "torchcodec": TorchcodecSource,
    "decord": DecordSource,
    "pyav": PyAVSource,
    "frames": FrameSource,
}


@functools.cache  # a failed import (e.g. torchcodec without FFmpeg) is tried once, not per window
def available(backend: str) -> bool:
    """Whether a backend's library imports here (torchcodec also needs FFmpeg's shared libraries)."""
    modules = {"torchcodec": "torchcodec.decoders", "decord": "decord", "pyav": "av", "frames": "torchvision"}
    try:
        __import__(modules[backend])
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def preload(decoders: list[str]) -> None:
    """Import the decoders' libraries now (torchcodec's takes ~1.2 s here), so that the first
    video's decode thread, and its timed span, do not pay for it."""
    for decoder in decoders:
        if decoder == "frames":
            image_decoders()
        else:
            available(decoder)


_logged: set[tuple[str, str]] = set()


def choose_decoder(path: Path, decoder: str = "auto") -> str:
    """The backend for a path: `frames` for folders, else the forced one or the best available."""
    if decoder not in DECODERS:
        raise ValueError(f"--decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    is_dir = Path(path).is_dir()
    if decoder == "auto":
        choice = "frames" if is_dir else next((b for b in VIDEO_BACKENDS if available(b)), None)
        if choice is None:
            raise DataError("no video decoder is installed: pip install torchcodec (with FFmpeg) or av")
        if (str(is_dir), choice) not in _logged:
            _logged.add((str(is_dir), choice))
            log.info("decoder for %s: %s", "frame folders" if is_dir else "video files", choice)
        return choice
    if is_dir != (decoder == "frames"):
        want = "--decoder frames" if is_dir else f"one of {', '.join(VIDEO_BACKENDS)}"
        raise DataError(f"{path}: --decoder {decoder} cannot read this input; use {want} or auto")
    if not available(decoder):
        raise DataError(f"--decoder {decoder}: the library is not installed here; pip install it or use auto")
    return decoder


def open_source(path: Path, decoder: str = "auto", device: str | torch.device = "cpu") -> _Source:
    """Open a video file or frame folder with the chosen backend, decoding on `device` where the
    backend can (torchcodec NVDEC, decord GPU build, nvJPEG), otherwise on the CPU."""
    return BACKENDS[choose_decoder(path, decoder)](path, device)


class Prefetcher:
    """Runs an iterator of windows one step ahead on a background thread.

    The consumer's blocked time is `wait_s` (the engine reports it as the decode-wait stage).
    Sources put their windows on the device themselves (pinned host memory and a non-blocking
    copy for a CPU decoder feeding a GPU). Errors raised by the producer are re-raised at the
    consumer's next()."""

    _DONE = object()

    def __init__(self, items: Iterator, depth: int = 2):
        self.wait_s = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True, name="sam2vss-decode")
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._q.put(item)
        except BaseException as e:  # handed to the consumer
            self._q.put(e)
        self._q.put(self._DONE)

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = self._q.get()
        self.wait_s += time.perf_counter() - t0
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=0.05)


def to_rgb(frames: torch.Tensor) -> list[np.ndarray]:
    """(T, 3, H, W) uint8 -> T (H, W, 3) uint8 numpy frames (what SAM2's mask generator takes)."""
    return [np.ascontiguousarray(f) for f in frames.permute(0, 2, 3, 1).cpu().numpy()]


__all__ = [
    "BACKENDS",
    "DECODERS",
    "Prefetcher",
    "SourceInfo",
    "VideoSource",
    "available",
    "choose_decoder",
    "open_source",
    "to_rgb",
]
