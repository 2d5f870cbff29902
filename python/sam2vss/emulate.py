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
from types import SimpleNamespace

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
        if "/torch/" in f or f.endswith("sam2vss/emulate.py") or f.startswith(_STDLIB):
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
        advances each time the refiner asks its tracker (or the official predictor) for the
        next frame."""
        emu = self
        run = refiner.refine_window

        def refine_window(window):
            counts = WindowCounts(frames=len(window.labels))
            with emu._lock:
                emu._window, emu.phase = counts, "setup"
            try:
                return run(window)
            finally:
                with emu._lock:
                    emu.windows.append(counts)
                    emu._window, emu.phase = None, "outside"

        refiner.refine_window = refine_window
        for owner, name in ((getattr(refiner, "tracker", None), "track"), (refiner, "_propagate")):
            frames = getattr(owner, name, None) if owner is not None else None
            if frames is not None:
                setattr(owner, name, self._framed(frames))

    def _framed(self, frames):
        emu = self

        def framed(*args, **kwargs):
            it = iter(frames(*args, **kwargs))
            t = 0
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
        self._compute = threading.get_ident()
        self._patches = contextlib.ExitStack()
        self._patches.enter_context(_patched_torch_cuda(self))
        self._patches.enter_context(_patched_threads(self))
        self._patches.enter_context(_patched_libraries(self))
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


# ---------------------------------------------------------------------------- patches
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
    emu: EmulatedCuda  # set on the per-emulator subclass

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
    emu: EmulatedCuda  # set on the per-emulator subclass

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
def _patched_torch_cuda(emu: EmulatedCuda) -> Iterator[None]:
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
def _patched_threads(emu: EmulatedCuda) -> Iterator[None]:
    """Threads started inside the emulator (the decode prefetcher, the PNG writers, eval's
    decode pool) run under its modes too; their counts are kept apart from the compute thread's."""
    run = threading.Thread.run

    def patched_run(self):
        with emu.modes():
            run(self)

    with _patched(threading.Thread, run=patched_run):
        yield


@contextlib.contextmanager
def _patched_libraries(emu: EmulatedCuda) -> Iterator[None]:
    from sam2vss import cuda_kernels, sources

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _patched(cuda_kernels, available=lambda: True, _launch=_launcher(emu), _ptr=_exporter(emu))
        )
        if emu.nvjpeg:
            decode_jpeg, decode_image = sources._image_decoders()

            def emulated_decode_jpeg(data, mode=None, device="cpu", **kw):
                if torch.device(device).type != "cuda":
                    return decode_jpeg(data, mode=mode, device="cpu", **kw)
                images = decode_jpeg(data, mode=mode, device="cpu", **kw)
                emu.transfer("h2d", sum(d.numel() for d in data), blocking=False)  # compressed bytes
                emu.count("launches", len(images))  # nvJPEG: at least one per image
                return [emu.adopt(im, device) for im in images]

            stack.enter_context(
                _patched(sources, _image_decoders=lambda: (emulated_decode_jpeg, decode_image))
            )
        if emu.nvdec and sources.available("torchcodec"):
            stack.enter_context(_patched(sources, _video_decoder=_nvdec(emu, sources._video_decoder)))
        yield


def _nvdec(emu: EmulatedCuda, make):
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


def _exporter(emu: EmulatedCuda):
    """cupy.from_dlpack as torch enforces it: a CUDA tensor on the current device, contiguous
    (a strided view would be read as contiguous by the kernels)."""

    def export(t):
        if not _is_emulated(t):
            raise EmulatedDeviceError(
                f"a host tensor {tuple(t.shape)} was passed to a CUDA kernel [{_site()}]"
            )
        if t.device.index != emu.current:
            raise BufferError(
                "Can't export tensors on a different CUDA device index. Expected:"
                f" {emu.current}. Current tensor device: {t.device.index}. [{_site()}]"
            )
        if not t.is_contiguous():
            raise EmulatedDeviceError(f"non-contiguous tensor {tuple(t.shape)} passed to a CUDA kernel")
        return t

    return export


def _launcher(emu: EmulatedCuda):
    """cuda_kernels._launch: one counted launch, computed by the kernel's torch twin."""

    def launch(op: str, name: str, n: int, *args, blocks: int | None = None) -> None:
        devices = {a.device for a in args if _is_emulated(a)}
        if len(devices) > 1:
            raise EmulatedDeviceError(f"{name}: arguments on several devices {sorted(map(str, devices))}")
        emu.count("launches")
        emu.count(f"kernel {name}")
        plain = [a.elem if _is_emulated(a) else a for a in args]
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
