"""What the emulated CUDA device (emulate.py) puts in place of the machine: torch.cuda and
torch.accelerator (device count, current device per thread, capability 9.0, streams, events,
synchronize, memory statistics), threads that run under the emulator's modes, nvJPEG and NVDEC
(frames decoded on the CPU, born on cuda:N, one launch per frame) and CuPy at the launch
(`cuda_kernels` keeps its real Python and DLPack device rule; each launch counts one and computes
the kernel's torch twin into its output buffers, uncounted). Only emulate.py uses this module.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import torch


@contextlib.contextmanager
def _patched(obj, **attrs) -> Iterator[None]:
    old = {k: obj.__dict__.get(k, getattr(obj, k, None)) for k in attrs}
    missing = [k for k in attrs if not hasattr(obj, k)]
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if k in missing:
                delattr(obj, k)
            else:
                setattr(obj, k, v)


class _Stream:
    """torch.cuda.Stream: work is done when enqueued (the CPU computes synchronously)."""

    _next = 1
    emu: object  # the emulate.EmulatedCuda, set on the per-emulator subclass

    def __init__(self, device=None, priority: int = 0, **_):
        self.device = self.emu.device("cuda" if device is None else device)
        self.cuda_stream = _Stream._next
        _Stream._next += 1

    def wait_stream(self, other) -> None:
        pass  # device-side ordering: no host sync

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        event = event or torch.cuda.Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        self.emu.sync("stream.synchronize()")

    def query(self) -> bool:
        return True

    def is_capturing(self) -> bool:
        return False  # no CUDA graph capture is emulated

    def __eq__(self, other) -> bool:
        return isinstance(other, _Stream) and other.cuda_stream == self.cuda_stream

    def __hash__(self) -> int:
        return self.cuda_stream


class _Event:
    emu: object  # the emulate.EmulatedCuda, set on the per-emulator subclass

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.recorded = False

    def record(self, stream=None) -> None:
        self.recorded = True

    def wait(self, stream=None) -> None:
        pass  # a device-side wait

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        self.emu.sync("event.synchronize()")

    def elapsed_time(self, other) -> float:
        return 0.0


@contextlib.contextmanager
def patched_torch_cuda(emu) -> Iterator[None]:
    cuda = torch.cuda
    streams: dict[int, list[_Stream]] = {}
    stream_class = type("Stream", (_Stream,), {"emu": emu})
    event_class = type("Event", (_Event,), {"emu": emu})

    def current_stream(device=None):
        index = emu.device("cuda" if device is None else device).index
        return streams.setdefault(index, [stream_class(index)])[-1]

    @contextlib.contextmanager
    def stream(s):
        if s is None:
            yield
            return
        streams.setdefault(s.device.index, [current_stream(s.device)]).append(s)
        try:
            yield
        finally:
            streams[s.device.index].pop()

    def set_device(device) -> None:
        emu.current = emu.device(
            device if not isinstance(device, int) else torch.device("cuda", device)
        ).index

    @contextlib.contextmanager
    def device_context(device):
        old = emu.current
        if device is not None and (not isinstance(device, int) or device >= 0):
            set_device(device)
        try:
            yield
        finally:
            emu.current = old

    def props(device=None):
        index = emu.device("cuda" if device is None else device).index
        return SimpleNamespace(
            name=f"Emulated CUDA device {index} (CPU)", major=9, minor=0, total_memory=80 * 2**30,
            multi_processor_count=132,
        )  # fmt: skip

    def synchronize(device=None) -> None:
        emu.sync("torch.cuda.synchronize()")

    accelerator = torch.accelerator
    with (
        _patched(
            accelerator,
            is_available=lambda: True,
            device_count=lambda: emu.devices,
            current_accelerator=lambda check_available=False: torch.device("cuda"),
            current_device_index=lambda: emu.current,
            set_device_index=lambda device: set_device(device),
            current_stream=lambda device=None: current_stream(device),
            synchronize=lambda device=None: emu.sync("torch.accelerator.synchronize()"),
        ),
        _patched(
            cuda,
            is_available=lambda: True,
            device_count=lambda: emu.devices,
            current_device=lambda: emu.current,
            set_device=set_device,
            device=device_context,
            is_initialized=lambda: True,
            _lazy_init=lambda: None,
            init=lambda: None,
            is_bf16_supported=lambda *a, **k: True,
            get_device_capability=lambda device=None: (props(device).major, props(device).minor),
            get_device_name=lambda device=None: props(device).name,
            get_device_properties=props,
            synchronize=synchronize,
            current_stream=current_stream,
            default_stream=lambda device=None: streams.setdefault(
                emu.device("cuda" if device is None else device).index, [stream_class(device)]
            )[0],
            stream=stream,
            Stream=stream_class,
            Event=event_class,
            empty_cache=lambda: None,
            memory_allocated=lambda device=None: emu.allocated,
            max_memory_allocated=lambda device=None: emu.peak,
            reset_peak_memory_stats=lambda device=None: setattr(emu, "peak", emu.allocated),
        ),
    ):
        yield


@contextlib.contextmanager
def patched_threads(emu) -> Iterator[None]:
    """Threads started inside the emulator (the decode prefetcher, the PNG writers, eval's
    decode pool) run under its modes too; their counts are kept apart from the compute thread's."""
    run = threading.Thread.run

    def patched_run(self):
        with emu.modes():
            run(self)

    with _patched(threading.Thread, run=patched_run):
        yield


@contextlib.contextmanager
def patched_libraries(emu) -> Iterator[None]:
    from sam2vss import cuda_kernels, sources

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _patched(cuda_kernels, available=lambda: True, _launch=_launcher(emu), _ptr=_exporter(emu))
        )
        if emu.nvjpeg:
            decode_jpeg, decode_image = sources.image_decoders()

            def emulated_decode_jpeg(data, mode=None, device="cpu", **kw):
                if torch.device(device).type != "cuda":
                    return decode_jpeg(data, mode=mode, device="cpu", **kw)
                images = decode_jpeg(data, mode=mode, device="cpu", **kw)
                emu.transfer("h2d", sum(d.numel() for d in data), blocking=False)  # compressed bytes
                emu.count("launches", len(images))  # nvJPEG: at least one per image
                return [emu.adopt(im, device) for im in images]

            stack.enter_context(
                _patched(sources, image_decoders=lambda: (emulated_decode_jpeg, decode_image))
            )
        if emu.nvdec and sources.available("torchcodec"):
            stack.enter_context(_patched(sources, _video_decoder=_nvdec(emu, sources._video_decoder)))
        yield


def _nvdec(emu, make):
    """torchcodec built with NVDEC: frames decoded on the CPU, born on the requested device."""

    class Frames:
        def __init__(self, data):
            self.data = data

    class Decoder:
        def __init__(self, path, device="cpu", **kwargs):
            self.device = torch.device(device)
            self.inner = make(path, device="cpu", **kwargs)
            self.metadata = self.inner.metadata

        def get_frames_in_range(self, start, stop):
            frames = self.inner.get_frames_in_range(start, stop).data
            if self.device.type != "cuda":
                return Frames(frames)
            emu.count("launches", frames.shape[0])
            return Frames(emu.adopt(frames, self.device))

    return Decoder


def _exporter(emu):
    """cupy.from_dlpack as torch enforces it: a CUDA tensor on the current device, contiguous
    (a strided view would be read as contiguous by the kernels)."""

    def export(t):
        if not emu.is_emulated(t):
            raise emu.Error(f"a host tensor {tuple(t.shape)} was passed to a CUDA kernel [{emu.site()}]")
        if t.device.index != emu.current:
            raise BufferError(
                "Can't export tensors on a different CUDA device index. Expected:"
                f" {emu.current}. Current tensor device: {t.device.index}. [{emu.site()}]"
            )
        if not t.is_contiguous():
            raise emu.Error(f"non-contiguous tensor {tuple(t.shape)} passed to a CUDA kernel")
        return t

    return export


def _launcher(emu):
    """cuda_kernels._launch: one counted launch, computed by the kernel's torch twin."""

    def launch(op: str, name: str, n: int, *args, blocks: int | None = None) -> None:
        devices = {a.device for a in args if emu.is_emulated(a)}
        if len(devices) > 1:
            raise emu.Error(f"{name}: arguments on several devices {sorted(map(str, devices))}")
        emu.count("launches")
        emu.count(f"kernel {name}")
        plain = [a.elem if emu.is_emulated(a) else a for a in args]
        with emu.uncounted():
            _KERNELS[name](emu, *plain)

    return launch


# ---------------------------------------------------------------------------- kernel twins
# Each CUDA kernel of kernels/*.cu by name, computed by the op's torch twin into the kernel's
# output buffers (CPU data; arguments in the kernel's order, as cuda_kernels passes them).
def _metric_cfg(c, r=2, pad=False, void_drop=True):
    from sam2vss.config import MetricConfig

    return MetricConfig(
        num_classes=int(c), boundary_kernel=2 * int(r) + 1, pad_border=bool(pad),
        void_mode="drop" if void_drop else "keep",
    )  # fmt: skip


def _k_confusion(emu, g, p, n, c, conf):
    from sam2vss.metrics import Workspace, frame_counts

    conf += frame_counts(g, p, _metric_cfg(c), Workspace())[0]


def _k_band_rows(emu, lab, h, w, r, rmin, rmax):
    emu._band_src[rmin.data_ptr()] = lab  # svs_band / svs_band_counts read it through rmin


def _k_band(emu, rmin, rmax, h, w, r, pad, out):
    from sam2vss.metrics import label_band

    out.copy_(label_band(emu._band_src.pop(rmin.data_ptr()), 2 * int(r) + 1, bool(pad)).to(torch.uint8))


def _k_band_counts(emu, g, p, gmin, gmax, pmin, pmax, h, w, c, r, pad, void_drop, bconf):
    from sam2vss.metrics import Workspace, frame_counts

    emu._band_src.pop(gmin.data_ptr(), None)
    emu._band_src.pop(pmin.data_ptr(), None)
    bconf += frame_counts(g, p, _metric_cfg(c, r, pad, void_drop), Workspace())[1]


def _k_vc_step(emu, g, p, prev_g, prev_p, run_g, run_p, n, first, cap, ns_t, len_ns, counts):
    from sam2vss.metrics import VCState, Workspace, vc_step

    ns = ns_t[: int(len_ns)].tolist()
    state = VCState(run_g, run_p, prev_g, prev_p)
    counts[: 2 * len(ns)] = vc_step(g, p, state, bool(first), int(cap), ns, Workspace())


def _k_aggregate(emu, logits, n, h, w, rank, labels, big_h, big_w, c, by_logit, ids, hist):
    from sam2vss.kernels import KernelOps

    got_ids, got_hist = KernelOps("torch").aggregate(logits, rank, labels, int(c), bool(by_logit))
    ids.copy_(got_ids)
    hist += got_hist


def _k_decide(emu, hist, n, c, classes):
    from sam2vss.vote import decide

    classes.copy_(decide(hist))


def _k_paint(emu, ids, classes, labels, n, out):
    from sam2vss.vote import paint

    out.copy_(paint(ids, classes, labels))


def _k_amg_stats(emu, logits, h, w, thr, offset, big_h, big_w, stability, area, boxes):
    from sam2vss.detect import amg_stats

    for dst, src in zip(
        (stability, area, boxes),
        amg_stats(logits, float(thr), float(offset), (int(big_h), int(big_w))),
        strict=True,
    ):
        dst.copy_(src)


_KERNELS = {
    "svs_confusion": _k_confusion,
    "svs_band_rows": _k_band_rows,
    "svs_band": _k_band,
    "svs_band_counts": _k_band_counts,
    "svs_vc_step": _k_vc_step,
    "svs_aggregate": _k_aggregate,
    "svs_decide": _k_decide,
    "svs_paint": _k_paint,
    "svs_amg_stats": _k_amg_stats,
}
