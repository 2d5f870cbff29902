"""An emulated CUDA device: tensors that report `cuda:N` and compute on the CPU, so every CUDA
branch of the engine runs here and in CI, and a GPU bug is caught without a GPU.

`EmulatedCuda(devices=2)` is a context manager. Inside it:
- `torch.cuda` says a GPU is there (`is_available`, `device_count`, `set_device` /
  `current_device`, capability 9.0, streams, events, `synchronize`, memory statistics);
  tensors created on or moved to `cuda[:N]` are `EmulatedTensor`s whose data lives in a CPU
  tensor; `pin_memory` marks host tensors as pinned (what decides whether a copy blocks).
- A dispatch mode sees every aten op and, as CUDA would, raises where a device tensor meets a
  host tensor that is not a 0-dim scalar, or tensors of two devices meet (`strict=False` records
  the mismatch and goes on). It counts, per phase of the engine loop: ops that launch device
  work ("launches"; views, aliases and bare allocations are "metadata" and launch nothing), ops
  that synchronise the host with the device ("syncs": item / local scalar, ops whose output shape
  depends on data (nonzero, boolean-mask indexing, unique, nms, bincount, ...), device-to-host
  copies that are not non-blocking into pinned memory, blocking host-to-device copies,
  `synchronize` and event / stream waits on the compute thread), and the bytes copied each way.
- CUDA's bf16 autocast really runs (the autocast dispatch key fires on these tensors; the CPU
  computes the bf16 kernels), and scaled-dot-product attention records the backend CUDA would
  pick for its inputs (flash for bf16/fp16 at head dim <= 256, memory-efficient for fp32, math
  otherwise).
- nvJPEG and NVDEC are emulated (frames decoded on the CPU are born on `cuda:N`, one launch per
  frame); decord stays what its PyPI wheel is (CPU only), so the engine's fallback runs.
- CuPy is emulated at the launch: `cuda_kernels` keeps its real Python (allocations, argument
  order, the DLPack device-index rule), and each `_launch` counts one launch and computes the
  kernel with its torch twin on the CPU data, uncounted. Counts therefore describe the kernel
  path, not the twins.

The patches of torch.cuda, threads, decoders and CuPy live in emulate_libs.py.

What it cannot see: how many kernels one aten op launches inside (cuBLAS, flash attention),
timing, and CUDA's numerics (the CPU's bf16 kernels stand in for cuBLAS's). Counts taken on a
plain CPU run are not GPU counts: `.cpu()` of a host tensor dispatches nothing.
"""

from __future__ import annotations

import contextlib
import sysconfig
import threading
import traceback
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten

# Ops whose output size depends on the data: CUDA must copy a count back before it can allocate.
_DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten._unique.default,
    aten.repeat_interleave.Tensor,
    aten.argwhere.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.allclose.default,
}
_ALLOCATIONS = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.empty_permuted.default,
}
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
}
_COPY_OPS = {aten.copy_.default, aten._to_copy.default}


class EmulatedDeviceError(RuntimeError):
    """A host/device or cross-device mix that CUDA would reject, or a CUDA-only misuse."""


class EmulatedTensor(torch.Tensor):
    """A tensor that reports a CUDA device and keeps its data in `elem`, a CPU tensor."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=device,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise EmulatedDeviceError(
            f"{func}: an emulated CUDA tensor was used outside EmulatedCuda (or on a thread it did"
            " not start); run the code inside the emulator"
        )

    def __repr__(self) -> str:
        return f"EmulatedTensor({self.elem!r}, device='{self.device}')"


@dataclass
class Sync:
    phase: str
    reason: str
    site: str  # the innermost frame of the project or SAM2 that caused it


@dataclass
class WindowCounts:
    """One refine_window call: counts per phase. Phases: "setup" (before the first frame is
    requested: preprocessing, keyframe, detection, prompts), "0".."T-1" (requesting frame t up to
    requesting frame t+1: its tracking step and its aggregation), "end" (after the last frame)."""

    frames: int
    phases: dict[str, Counter] = field(default_factory=dict)

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.phases.values())

    def hot(self, key: str) -> int:
        """Counted in the frames after the keyframe (the hot loop)."""
        return sum(c[key] for p, c in self.phases.items() if p.isdigit() and int(p) > 0)


_STDLIB = sysconfig.get_paths()["stdlib"]


def _site() -> str:
    """The innermost caller outside torch, the standard library and this module: file:line."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename
        if (
            "/torch/" in f
            or f.endswith(("sam2vss/emulate.py", "sam2vss/emulate_libs.py"))
            or f.startswith(_STDLIB)
        ):
            continue
        for marker in ("site-packages/", "/python/", "/tests/"):
            if marker in f:
                f = ("tests/" if marker == "/tests/" else "") + f.split(marker)[-1]
                break
        return f"{f}:{frame.lineno}"
    return "?"


def _is_emulated(x) -> bool:
    return isinstance(x, EmulatedTensor)


class EmulatedCuda:
    """Context manager: an emulated CUDA machine with `devices` GPUs (see the module docstring).

    `counts` totals every thread; `windows` holds per-window counts of refiners passed to
    `instrument`; `syncs` lists the compute thread's syncs with their call sites."""

    # what emulate_libs.py's patches need of this module, reached through the instance (that
    # module never imports this one)
    Error = EmulatedDeviceError
    is_emulated = staticmethod(_is_emulated)
    site = staticmethod(_site)

    def __init__(self, devices: int = 2, strict: bool = True, nvdec: bool = True, nvjpeg: bool = True):
        if devices < 1:
            raise ValueError(f"EmulatedCuda: devices must be >= 1, got {devices}")
        self.devices, self.strict, self.nvdec, self.nvjpeg = devices, strict, nvdec, nvjpeg
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._pinned: dict[int, weakref.ref] = {}
        self._live: dict[int, list[int]] = {}  # storage ptr -> [bytes, references]
        self._band_src: dict[int, torch.Tensor] = {}  # emulated CuPy: svs_band_rows' input by output
        self.reset()

    # ------------------------------------------------------------------ counting
    def reset(self) -> None:
        """Zero every counter (e.g. after a warm-up)."""
        with self._lock:
            self.counts: Counter = Counter()
            self.syncs: list[Sync] = []
            self.mismatches: list[str] = []
            self.sdpa: Counter = Counter()
            self.transfers: Counter = Counter()  # (h2d | d2h | p2p, call site) -> bytes
            self.windows: list[WindowCounts] = []
            self.phase = "outside"
            self._window: WindowCounts | None = None
            self.allocated = self.peak = sum(b for b, _ in self._live.values())

    def _compute_thread(self) -> bool:
        return threading.get_ident() == self._compute

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            key = key if self._compute_thread() else f"{key} (other threads)"
            self.counts[key] += n
            if self._window is not None and self._compute_thread():
                self._window.phases.setdefault(self.phase, Counter())[key] += n

    def sync(self, reason: str) -> None:
        self.count("syncs")
        if self._compute_thread():
            with self._lock:
                self.syncs.append(Sync(self.phase, reason, _site()))

    def transfer(self, kind: str, nbytes: int, blocking: bool) -> None:
        """kind: h2d | d2h | p2p. A blocking transfer synchronises the host."""
        self.count(f"{kind}_copies")
        self.count(f"{kind}_bytes", nbytes)
        with self._lock:
            self.transfers[(kind, _site())] += nbytes
        if blocking:
            self.sync(f"blocking {kind} copy of {nbytes} B")

    @property
    def current(self) -> int:
        """The calling thread's current device (CUDA's is per host thread; a new thread's is 0)."""
        return getattr(self._tls, "current", 0)

    @current.setter
    def current(self, index: int) -> None:
        self._tls.current = index

    @property
    def paused(self) -> bool:
        return getattr(self._tls, "paused", False)

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Run twins (CPU data) without counting them."""
        old = self.paused
        self._tls.paused = True
        try:
            yield
        finally:
            self._tls.paused = old

    # ------------------------------------------------------------------ device bookkeeping
    def device(self, device) -> torch.device:
        """The indexed emulated device for `device` ("cuda" means the current device)."""
        device = torch.device(device)
        index = self.current if device.index is None else device.index
        if not 0 <= index < self.devices:
            raise EmulatedDeviceError(
                f"CUDA error: invalid device ordinal {index} (the emulated machine has {self.devices})"
            )
        return torch.device("cuda", index)

    def wrap(self, elem: torch.Tensor, device: torch.device) -> EmulatedTensor:
        if elem.is_inference() == torch.is_inference_mode_enabled():
            out = EmulatedTensor(elem, device)
        else:  # a view of a normal tensor made in inference mode is normal (and vice versa)
            with torch.inference_mode(elem.is_inference()):
                out = EmulatedTensor(elem, device)
        key = elem.untyped_storage().data_ptr()
        with self._lock:
            entry = self._live.setdefault(key, [elem.untyped_storage().nbytes(), 0])
            if entry[1] == 0:
                self.allocated += entry[0]
                self.peak = max(self.peak, self.allocated)
            entry[1] += 1
        weakref.finalize(out, self._release, key)
        return out

    def _release(self, key: int) -> None:
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                self.allocated -= entry[0]
                del self._live[key]

    def adopt(self, cpu: torch.Tensor, device) -> EmulatedTensor:
        """A tensor born on the device (a decoder's output): no copy counted."""
        return self.wrap(cpu, self.device(device))

    def pin(self, t: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """A pinned copy of host tensor `t` (`copy=False`: mark `t` itself, a fresh buffer)."""
        pinned = t.clone() if copy and not self.is_pinned(t) else t
        self._pinned[pinned.untyped_storage().data_ptr()] = weakref.ref(pinned)
        return pinned

    def is_pinned(self, t: torch.Tensor) -> bool:
        ref = self._pinned.get(t.untyped_storage().data_ptr())
        return ref is not None and ref() is not None

    # ------------------------------------------------------------------ transfers
    def move(self, x: torch.Tensor, device, dtype=None, non_blocking: bool = False, copy: bool = False):
        """Tensor.to across the bus (or within a device), counted as CUDA would do it."""
        dtype = dtype or x.dtype
        target = torch.device(device) if device is not None else x.device
        if target.type == "cuda":
            target = self.device(target)
        src = x.elem if _is_emulated(x) else x
        nbytes = src.numel() * torch.empty((), dtype=dtype).element_size()
        if _is_emulated(x) and target.type == "cuda":
            if target == x.device:
                if dtype == x.dtype and not copy:
                    return x
                self.count("launches")
                return self.wrap(src.to(dtype=dtype, copy=True), target)
            self.transfer("p2p", nbytes, blocking=False)
            return self.wrap(src.to(dtype=dtype, copy=True), target)
        if _is_emulated(x):  # device to host: non-blocking lands in pinned memory (as torch does)
            out = src.to(dtype=dtype, copy=True)
            self.transfer("d2h", nbytes, blocking=not non_blocking)
            return self.pin(out, copy=False) if non_blocking else out
        if target.type == "cuda":  # host to device: asynchronous only from pinned memory
            pinned = self.is_pinned(x)
            self.transfer("h2d", nbytes, blocking=not non_blocking)
            if non_blocking and not pinned:
                self.count("pageable_h2d")
            return self.wrap(src.to(dtype=dtype, copy=True), target)
        return x.to(device=target, dtype=dtype, non_blocking=non_blocking, copy=copy)

    def index(self, x, idx, value=None, setitem: bool = False):
        """Python indexing (x[idx], x[idx] = value) with CUDA's rules: host index tensors are
        copied to the device (a blocking copy), boolean masks make the output size depend on
        data (a sync; a scalar assigned through a mask is a masked fill), device indices into a
        host tensor, or a host tensor assigned through advanced indices, are errors."""
        items = idx if isinstance(idx, tuple) else (idx,)
        tensors = [i for i in items if isinstance(i, torch.Tensor) and (i.dim() > 0 or _is_emulated(i))]
        lists = [i for i in items if isinstance(i, list)]
        advanced = bool(tensors or lists)
        where = "assignment" if setitem else "indexing"
        if not _is_emulated(x):
            if any(_is_emulated(t) for t in [*tensors, value]):
                self.mismatch(
                    f"{where}: indices should be either on cpu or on the same device as the indexed"
                    " tensor (cpu)"
                )
        else:
            devices = {t.device for t in [*tensors, value] if _is_emulated(t)} - {x.device}
            if devices:
                self.mismatch(f"{where}: tensors on {x.device} and {sorted(map(str, devices))}")
            host = [t for t in tensors if not _is_emulated(t)]
            if host or lists:
                nbytes = sum(t.numel() * t.element_size() for t in host) + 8 * sum(map(len, lists))
                self.transfer("h2d", nbytes, blocking=True)
            scalar_value = value is None or not isinstance(value, torch.Tensor) or value.dim() == 0
            if any(t.dtype in (torch.bool, torch.uint8) for t in tensors) and not (setitem and scalar_value):
                self.sync(f"{where} with a boolean mask (output shape depends on data)")
            if setitem and isinstance(value, torch.Tensor) and not _is_emulated(value) and value.dim() > 0:
                if advanced:
                    self.mismatch(f"{where}: a host tensor assigned to {x.device} through advanced indices")
                else:
                    self.transfer("h2d", value.numel() * value.element_size(), blocking=True)
        un_idx, un_value = tree_map(lambda t: t.elem if _is_emulated(t) else t, (idx, value))
        base = x.elem if _is_emulated(x) else x
        with self.uncounted():
            if setitem:
                base[un_idx] = un_value
                if _is_emulated(x):
                    self.count("launches")
                return None
            out = base[un_idx]
        if not _is_emulated(x):
            return out
        view = out.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
        self.count("metadata" if view else "launches")
        return self.wrap(out, x.device)

    def mismatch(self, message: str) -> None:
        message = f"{message} [{_site()}]"
        self.mismatches.append(message)
        if self.strict:
            raise EmulatedDeviceError(message)

    # ------------------------------------------------------------------ phases
    def instrument(self, refiner) -> None:
        """Record per-window, per-phase counts of `refiner.refine_window` calls: the phase
        advances each time the refiner asks its tracker for the next frame."""
        emu = self
        run = refiner.refine_window

        def refine_window(window, **kwargs):
            counts = WindowCounts(frames=len(window.labels))
            with emu._lock:
                emu._window, emu.phase = counts, "setup"
            try:
                return run(window, **kwargs)
            finally:
                with emu._lock:
                    emu.windows.append(counts)
                    emu._window, emu.phase = None, "outside"

        refiner.refine_window = refine_window
        if refiner.tracker is not None:
            refiner.tracker.track = self._framed(refiner.tracker.track)

    def _framed(self, frames):
        emu = self

        def framed(window, *args, **kwargs):
            it = iter(frames(window, *args, **kwargs))
            # a re-detection's tracker run starts at its frame (window.at(t)): phases stay window frames
            t = 0 if emu._window is None else emu._window.frames - len(window.labels)
            while True:
                emu.phase = str(t)
                try:
                    item = next(it)
                except StopIteration:
                    emu.phase = "end"
                    return
                yield item
                t += 1

        return framed

    # ------------------------------------------------------------------ context
    def __enter__(self) -> EmulatedCuda:
        from sam2vss.emulate_libs import patched_libraries, patched_threads, patched_torch_cuda

        self._compute = threading.get_ident()
        self._patches = contextlib.ExitStack()
        self._patches.enter_context(patched_torch_cuda(self))
        self._patches.enter_context(patched_threads(self))
        self._patches.enter_context(patched_libraries(self))
        self._patches.enter_context(self.modes())
        return self

    def __exit__(self, *exc) -> None:
        self._patches.close()

    @contextlib.contextmanager
    def modes(self) -> Iterator[None]:
        """The function and dispatch modes, on the calling thread."""
        with _FunctionMode(self), _DispatchMode(self):
            yield

    def summary(self) -> dict:
        frames = sum(w.frames for w in self.windows)
        hot_frames = sum(max(w.frames - 1, 0) for w in self.windows)
        n = max(len(self.windows), 1)
        return {
            "windows": len(self.windows),
            "frames": frames,
            "launches_per_frame": sum(w.total("launches") for w in self.windows) / max(frames, 1),
            "syncs_per_frame": sum(w.hot("syncs") for w in self.windows) / max(hot_frames, 1),
            "syncs_per_window": sum(w.total("syncs") for w in self.windows) / n,
            "h2d_bytes_per_frame": (self.counts["h2d_bytes"] + self.counts["h2d_bytes (other threads)"])
            / max(frames, 1),
            "d2h_bytes_per_frame": (self.counts["d2h_bytes"] + self.counts["d2h_bytes (other threads)"])
            / max(frames, 1),
            "mismatches": len(self.mismatches),
            "sdpa_backends": dict(self.sdpa),
            "peak_mib": self.peak / 2**20,
        }


# ---------------------------------------------------------------------------- modes
def _sdpa_backend(q: torch.Tensor, attn_mask) -> str:
    """The backend torch's CUDA SDPA picks on sm80+ for these inputs (no dropout, inference)."""
    d = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and attn_mask is None and d <= 256 and d % 8 == 0:
        return "flash"
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32) and d % 8 == 0:
        return "efficient"
    return "math"


_SCALARS = {
    torch.Tensor.__int__: int,
    torch.Tensor.__float__: float,
    torch.Tensor.__index__: int,
    torch.Tensor.__bool__: bool,
    torch.Tensor.item: lambda v: v,
}


class _FunctionMode(TorchFunctionMode):
    """Entry points that fail in C++ before any dispatch when no driver exists: host-to-device
    `Tensor.to` / `Tensor.cuda` and `torch.tensor` / `torch.as_tensor` with a CUDA device."""

    def __init__(self, emu: EmulatedCuda):
        super().__init__()
        self.emu = emu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        emu = self.emu
        if func is torch.Tensor.to:
            device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            x = args[0]
            if (device is not None and device.type == "cuda") or _is_emulated(x):
                copy = kwargs.get("copy", False)
                return emu.move(x, device, dtype, non_blocking, copy)
        elif func is torch.Tensor.cuda:
            device = args[1] if len(args) > 1 else kwargs.get("device")
            target = emu.device(
                "cuda" if device is None else torch.device("cuda", torch.device(device).index)
            )
            return emu.move(args[0], target, None, kwargs.get("non_blocking", False))
        elif func is torch.Tensor.cpu and _is_emulated(args[0]):
            return emu.move(args[0], "cpu")
        elif func is torch._has_compatible_shallow_copy_type:  # Module.to must not use `.data =`
            if _is_emulated(args[0]) or _is_emulated(args[1]):  # (it would keep the old `elem`)
                return False
        elif func in _SCALARS and _is_emulated(args[0]):  # these bindings guard the device first
            return _SCALARS[func](aten._local_scalar_dense.default(args[0]))
        elif func in (torch.Tensor.nonzero, torch.nonzero) and _is_emulated(args[0]):
            out = aten.nonzero.default(args[0])
            return out.unbind(1) if kwargs.get("as_tuple") or (len(args) > 1 and args[1]) else out
        elif func is torch.Tensor.contiguous and _is_emulated(args[0]):
            fmt = kwargs.get("memory_format", args[1] if len(args) > 1 else torch.contiguous_format)
            return (
                args[0]
                if args[0].is_contiguous(memory_format=fmt)
                else aten.clone.default(args[0], memory_format=fmt)
            )
        elif func is torch.Tensor.copy_ and (_is_emulated(args[0]) or _is_emulated(args[1])):
            return aten.copy_.default(args[0], args[1], kwargs.get("non_blocking", len(args) > 2 and args[2]))
        elif func is torch.Tensor.new_tensor and _is_emulated(args[0]):
            dtype, device = kwargs.get("dtype") or args[0].dtype, kwargs.get("device") or args[0].device
            return emu.move(torch.tensor(args[1], dtype=dtype), device)
        elif func is torch.Tensor.numpy and _is_emulated(args[0]):
            raise TypeError(
                f"can't convert {args[0].device} device type tensor to numpy. Use Tensor.cpu() to copy"
                " the tensor to host memory first."
            )
        elif func is torch.Tensor.__invert__ and _is_emulated(args[0]):
            return aten.bitwise_not.default(args[0])
        elif func is torch.Tensor.__format__ and _is_emulated(args[0]) and args[0].dim() == 0:
            return format(aten._local_scalar_dense.default(args[0]), args[1])
        elif func is torch.Tensor.tolist and _is_emulated(args[0]):
            return emu.move(args[0], "cpu").tolist()
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            flat, _ = tree_flatten(args)
            if any(_is_emulated(t) for t in flat):  # torch's indexing binding guards the device first
                return emu.index(*args, setitem=func is torch.Tensor.__setitem__)
        elif func in (torch.tensor, torch.as_tensor):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda":
                data = args[0]
                host = {k: v for k, v in kwargs.items() if k != "device"}
                if func is torch.as_tensor and _is_emulated(data):
                    return emu.move(data, device, host.get("dtype"))
                return emu.move(func(data, **host), device)  # built on the host, copied blocking
        return func(*args, **kwargs)


class _DispatchMode(TorchDispatchMode):
    def __init__(self, emu: EmulatedCuda):
        super().__init__()
        self.emu = emu

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        emu = self.emu
        kwargs = dict(kwargs or {})
        if emu.paused:
            return func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        dev = [t for t in flat if _is_emulated(t)]
        target = kwargs.get("device")
        target = torch.device(target) if target is not None else None

        # pinned memory and its queries
        if func is aten.is_pinned.default:
            return emu.is_pinned(args[0]) if not dev else False
        if func in (aten._pin_memory.default, aten.pin_memory.default):
            if dev:
                emu.mismatch(
                    f"cannot pin '{args[0].type()}' only dense CPU tensors can be pinned (a tensor"
                    f" already on {args[0].device}; pin host tensors only)"
                )
                return args[0]
            return emu.pin(args[0])
        if kwargs.pop("pin_memory", False):
            if target is not None and target.type == "cuda":
                raise EmulatedDeviceError("only CPU tensors can be allocated in pinned memory")
            kwargs["pin_memory"] = False
            return emu.pin(func(*args, **kwargs), copy=False)
        if "pin_memory" in kwargs:
            kwargs["pin_memory"] = False
        if func is aten.record_stream.default:
            return None

        # transfers
        if func is aten._to_copy.default:
            to = target if target is not None else args[0].device
            if dev or to.type == "cuda":
                return emu.move(args[0], to, kwargs.get("dtype"), kwargs.get("non_blocking", False), True)
        if func is aten.copy_.default:
            return self._copy(*args, **kwargs)

        if not dev and not (target is not None and target.type == "cuda"):
            emu.count("host ops")
            return func(*args, **kwargs)

        device = self._device(func, flat, dev, target)
        sync = self._sync_reason(func, args, dev)
        if sync:
            emu.sync(sync)
        if func is aten._local_scalar_dense.default:
            emu.count("d2h_copies")
            emu.count("d2h_bytes", args[0].element_size())
            return args[0].elem.item()
        if target is not None and target.type == "cuda":
            kwargs["device"] = torch.device("cpu")
        if func is aten.scaled_dot_product_attention.default:
            emu.sdpa[_sdpa_backend(args[0], kwargs.get("attn_mask", args[3] if len(args) > 3 else None))] += 1

        un_args, un_kwargs = tree_map(lambda x: x.elem if _is_emulated(x) else x, (args, kwargs))
        inputs = {x.untyped_storage().data_ptr() for x in tree_flatten((un_args, un_kwargs))[0]
                  if isinstance(x, torch.Tensor)}  # fmt: skip
        out = func(*un_args, **un_kwargs)
        outs = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        aliased = outs and all(x.untyped_storage().data_ptr() in inputs for x in outs)
        if func in _ALLOCATIONS or (aliased and not func._schema.is_mutable):
            emu.count("metadata")
        else:
            emu.count("launches")
            emu.count(f"op {func}")
        # in-place and out= ops return their (wrapped) argument itself; anything else is new
        mine = {id(t.elem): t for t in dev}

        def rewrap(x):
            if not isinstance(x, torch.Tensor):
                return x
            return mine[id(x)] if id(x) in mine else emu.wrap(x, device)

        return tree_map(rewrap, out)

    def _device(self, func, flat, dev, target) -> torch.device:
        """The op's device; raises (strict) where CUDA would reject the mix of devices."""
        devices = {t.device for t in dev}
        if target is not None and target.type == "cuda":
            devices.add(self.emu.device(target))
        if len(devices) > 1:
            names = ", ".join(sorted(map(str, devices)))
            self.emu.mismatch(f"{func}: expected all tensors to be on the same device, but found {names}")
        device = min(devices, key=str)
        host = [t for t in flat if isinstance(t, torch.Tensor) and not _is_emulated(t) and t.dim() > 0]
        if host and dev and func in _INDEX_OPS and _is_emulated(flat[0]):
            indices = {id(i) for i in (flat[1:] if func is aten.index.Tensor else flat[1:-1])}
            host = [t for t in host if id(t) not in indices]  # host indices are copied over (_sync_reason)
        if host and dev:
            self.emu.mismatch(
                f"{func}: expected all tensors to be on the same device, but found at least two"
                f" devices, {device} and cpu (a host tensor of shape {tuple(host[0].shape)})"
            )
        return device

    def _sync_reason(self, func, args, dev) -> str:
        if func is aten._local_scalar_dense.default:
            return "item / local scalar"
        if func in _DATA_DEPENDENT or func.name().startswith("torchvision::nms"):
            return f"{func} (output shape depends on data)"
        if func in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else []
            tensors = [i for i in indices if isinstance(i, torch.Tensor)]
            if any(i.dtype in (torch.bool, torch.uint8) for i in tensors):
                value = args[2] if len(args) > 2 else None
                masked_fill = (
                    func is not aten.index.Tensor
                    and len(tensors) == 1
                    and isinstance(value, torch.Tensor)
                    and value.numel() == 1
                )
                if not masked_fill:
                    return f"{func} with a boolean mask (output shape depends on data)"
            host = [i for i in tensors if not _is_emulated(i) and i.dim() > 0]
            if host:
                nbytes = sum(i.numel() * i.element_size() for i in host)
                self.emu.transfer("h2d", nbytes, blocking=False)  # the sync is returned
                return f"{func} with host index tensors (blocking h2d copy of {nbytes} B)"
        return ""

    def _copy(self, dst, src, non_blocking: bool = False):
        emu = self.emu
        d_dev, s_dev = _is_emulated(dst), _is_emulated(src)
        if not d_dev and not s_dev:
            emu.count("host ops")
            return dst.copy_(src, non_blocking)
        s = src.elem if s_dev else src
        nbytes = dst.numel() * dst.element_size()
        if d_dev and s_dev:
            if dst.device == src.device:
                emu.count("launches")
            else:
                emu.transfer("p2p", nbytes, blocking=False)
        elif d_dev:
            pinned = emu.is_pinned(src)
            emu.transfer("h2d", nbytes, blocking=not (non_blocking and pinned) and src.dim() > 0)
        else:
            emu.transfer("d2h", nbytes, blocking=not (non_blocking and emu.is_pinned(dst)))
        (dst.elem if d_dev else dst).copy_(s)
        return dst
