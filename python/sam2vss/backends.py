"""Model backends of the fast engine, selected once per refiner: `eager`, `inductor`
(torch.compile) and `tensorrt` (torch-tensorrt ahead of time; CUDA only).

The decision a reader must know: TensorRT needs static shapes and real tensors. SAM2's memory
attention rotates queries and keys with complex numbers (view_as_complex, polar); `use_real_rope`
swaps every RoPE attention's forward for a real-valued one (cos/sin tables, the same pairs of
channels), equal to SAM2's to float rounding (tests/test_backends.py). The image encoder runs at
static batch buckets (1 for the keyframe, `encode_batch` for the rest, padded), so it exports
with fixed shapes; `export_check` runs torch.export on the CPU for both parts and compares the
exported programs against eager SAM2. TensorRT engines are cached outside the package
(SAM2VSS_CACHE, default ~/.cache/sam2vss), keyed by the model configuration, the bucket, the
library versions and the GPU architecture. The memory attention's inputs grow with the window's
memory, so under `tensorrt` it runs compiled by inductor with dynamic shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from types import MethodType

import torch
import torch.nn.functional as F

from sam2vss import envs
from sam2vss.config import MODEL_BACKENDS as BACKENDS

log = logging.getLogger(__name__)

ENCODER_KEYS = ("vision_features", "vision_pos_enc", "backbone_fpn")


# ---------------------------------------------------------------------------- real-valued RoPE
def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., L, D) by angles with cos/sin (L, D/2): SAM2's
    complex product (a + ib)(cos + i sin), written in reals, computed in float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xf[..., 0], xf[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).type_as(x)


def _rope_tables(module: torch.nn.Module, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (n, D/2) for a square feature map of n positions, cached per size and device."""
    cache = module.__dict__.setdefault("_sam2vss_rope", {})
    key = (n, str(device))
    if key not in cache:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"RoPE attention expects a square feature map, got {n} positions")
        freqs = module.compute_cis(end_x=side, end_y=side)  # complex, built once outside any graph
        cache[key] = (freqs.real.float().contiguous().to(device), freqs.imag.float().contiguous().to(device))
    return cache[key]


def _real_rope_forward(self, q, k, v, num_k_exclude_rope: int = 0):
    """RoPEAttention.forward with real arithmetic (same projections, rotation and attention)."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    cos, sin = _rope_tables(self, q.shape[-2], q.device)
    num_k_rope = k.shape[-2] - num_k_exclude_rope
    q = rotate_pairs(q, cos, sin)
    if num_k_rope > 0:
        repeat = num_k_rope // q.shape[-2] if self.rope_k_repeat else 1
        rotated = rotate_pairs(k[:, :, :num_k_rope], cos.repeat(repeat, 1), sin.repeat(repeat, 1))
        k = torch.cat([rotated, k[:, :, num_k_rope:]], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
    return self.out_proj(self._recombine_heads(out))


def fit_rope_tables(model: torch.nn.Module) -> None:
    """SAM2's complex RoPE tables built for the model's own stride-16 feature map on its device,
    once at construction: SAM2 builds them for 1024 and, at any other size, rebuilds and copies
    them to the device on the first call (8 blocking copies inside the first tracked window)."""
    side = model.image_size // 16
    device = next(model.parameters()).device
    for m in model.modules():
        if type(m).__name__ == "RoPEAttention":
            m.freqs_cis = m.compute_cis(end_x=side, end_y=side).to(device)


def use_real_rope(model: torch.nn.Module, positions: int | None = None) -> int:
    """Give every RoPE attention of `model` the real-valued forward; returns how many. With
    `positions`, also build their cos/sin tables for that many positions now, outside any graph."""
    n = 0
    for m in model.modules():
        if type(m).__name__ == "RoPEAttention":
            m.forward = MethodType(_real_rope_forward, m)
            if positions is not None:
                _rope_tables(m, positions, next(model.parameters()).device)
            n += 1
    return n


# ---------------------------------------------------------------------------- static encoder
class EncoderOutputs(torch.nn.Module):
    """The image encoder with its dict output flattened to a tuple (what export and TensorRT
    take): vision_features, then the vision_pos_enc levels, then the backbone_fpn levels."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(x)
        return (out["vision_features"], *out["vision_pos_enc"], *out["backbone_fpn"])


def outputs_to_dict(flat: tuple[torch.Tensor, ...]) -> dict:
    levels = (len(flat) - 1) // 2
    return {
        "vision_features": flat[0],
        "vision_pos_enc": list(flat[1 : 1 + levels]),
        "backbone_fpn": list(flat[1 + levels :]),
    }


class BucketedEncoder(torch.nn.Module):
    """Runs a batch through the smallest bucket that holds it, padding with copies of the last
    frame and slicing the outputs back: static shapes for compiled encoders."""

    def __init__(self, compiled: dict[int, torch.nn.Module]):
        super().__init__()
        self.compiled = compiled  # bucket size -> module (tuple outputs)

    def forward(self, x: torch.Tensor) -> dict:
        b = x.shape[0]
        bucket = min((s for s in self.compiled if s >= b), default=None)
        if bucket is None:
            raise ValueError(f"encoder batch {b} exceeds the largest bucket {max(self.compiled)}")
        if bucket > b:
            x = torch.cat([x, x[-1:].expand(bucket - b, *x.shape[1:])])
        flat = self.compiled[bucket](x)
        return outputs_to_dict(tuple(t[:b] for t in flat))


# ---------------------------------------------------------------------------- export check
def complex_nodes(exported) -> list[str]:
    bad = []
    for node in exported.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, list | tuple) else [val]
        if any(isinstance(t, torch.Tensor) and t.is_complex() for t in vals) or "complex" in str(node.target):
            bad.append(str(node.target))
    return bad


def export_encoder(model: torch.nn.Module, batch: int):
    """torch.export of the image encoder at a static (batch, 3, S, S) input."""
    param = next(model.image_encoder.parameters())  # a bf16 model exports with bf16 inputs
    x = torch.randn(batch, 3, model.image_size, model.image_size, device=param.device, dtype=param.dtype)
    return torch.export.export(EncoderOutputs(model.image_encoder).eval(), (x,)), x


def export_check(
    model: torch.nn.Module, masklets: int = 3, memory_frames: int = 2, ptr_tokens: int = 4
) -> dict:
    """Export the encoder (static batch) and the memory attention (real RoPE, static memory) on
    the model's device and compare each exported program with eager SAM2 (complex RoPE).
    Returns the maximum absolute differences and the complex nodes found (must be none)."""
    report = {}
    with torch.inference_mode(False), torch.no_grad():
        ep, x = export_encoder(model, 2)
        eager = EncoderOutputs(model.image_encoder)(x)
        got = ep.module()(x)
        report["encoder_max_abs"] = max(float((a - b).abs().max()) for a, b in zip(got, eager, strict=True))
        report["encoder_complex_nodes"] = complex_nodes(ep)

        attn = model.memory_attention
        side = model.image_size // 16
        c, mem_c = attn.d_model, model.mem_dim
        dev = next(model.parameters()).device
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(dev)

        n_mem = memory_frames * side * side + ptr_tokens
        args = (rnd(side * side, masklets, c), rnd(n_mem, masklets, mem_c))
        kwargs = {"curr_pos": rnd(side * side, masklets, c), "memory_pos": rnd(n_mem, masklets, mem_c)}
        official = attn(*args, **kwargs, num_obj_ptr_tokens=ptr_tokens)
        saved = {
            m: m.__dict__.pop("forward", None) for m in attn.modules() if type(m).__name__ == "RoPEAttention"
        }
        try:
            use_real_rope(attn)

            class _Fixed(torch.nn.Module):  # the pointer count is a static property of the bucket
                def __init__(self):
                    super().__init__()
                    self.attn = attn

                def forward(self, curr, memory, curr_pos, memory_pos):
                    return self.attn(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=ptr_tokens)

            fixed = _Fixed().eval()
            fixed(
                *args, kwargs["curr_pos"], kwargs["memory_pos"]
            )  # fills the cos/sin tables: graph constants
            ep = torch.export.export(fixed, (*args, kwargs["curr_pos"], kwargs["memory_pos"]))
            got = ep.module()(*args, kwargs["curr_pos"], kwargs["memory_pos"])
        finally:
            for m, fwd in saved.items():  # restore SAM2's own forward
                m.__dict__.pop("forward", None)
                if fwd is not None:
                    m.forward = fwd
        report["memory_attention_max_abs"] = float((got - official).abs().max())
        report["memory_attention_complex_nodes"] = complex_nodes(ep)
    return report


# ---------------------------------------------------------------------------- selection
def cache_dir() -> Path:
    return Path(envs.SAM2VSS_CACHE or Path.home() / ".cache" / "sam2vss")


def engine_key(model: torch.nn.Module, model_cfg, bucket: int, versions: dict | None = None) -> str:
    """What a TensorRT engine depends on, read off the model actually exported (the faster
    presets export a smaller tracker than the configured model): model and weights at the
    exported image size, input dtype and shape, bucket, library versions and GPU architecture."""
    from dataclasses import replace

    from sam2vss.model import ModelConfig, model_identity

    size = model.image_size
    dtype = next(model.image_encoder.parameters()).dtype
    parts = {
        "model": model_identity(replace(model_cfg or ModelConfig(), image_size=size)),
        "input": f"{bucket}x3x{size}x{size} {dtype}",
        **(versions if versions is not None else _tensorrt_versions()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _tensorrt_versions() -> dict:
    import torch_tensorrt

    sm = "{}{}".format(*torch.cuda.get_device_capability())
    return {"torch": torch.__version__, "torch_tensorrt": torch_tensorrt.__version__, "sm": sm}


def _tensorrt_encoder(model: torch.nn.Module, model_cfg, buckets: tuple[int, ...]) -> BucketedEncoder:
    import torch_tensorrt

    compiled = {}
    for b in buckets:
        path = cache_dir() / f"encoder_{engine_key(model, model_cfg, b)}.pt2"  # torch.export's suffix
        if path.is_file():
            compiled[b] = torch.export.load(str(path)).module()
            log.info("TensorRT encoder (batch %d) loaded from %s", b, path)
            continue
        ep, x = export_encoder(model, b)
        trt = torch_tensorrt.dynamo.compile(
            ep, inputs=[x], enabled_precisions={torch.bfloat16, torch.float32}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.pt2")
        torch_tensorrt.save(trt, str(tmp), inputs=[x])
        tmp.rename(path)
        compiled[b] = trt
        log.info("TensorRT encoder (batch %d) built and cached at %s", b, path)
    return BucketedEncoder(compiled)


def apply_backend(model: torch.nn.Module, backend: str, model_cfg=None, encode_batch: int = 8) -> None:
    """Compile `model`'s hot parts in place for `backend` (once, at refiner construction)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "eager":
        return
    device = next(model.parameters()).device
    if backend == "tensorrt":
        if device.type != "cuda":
            raise RuntimeError("--backend tensorrt needs a CUDA GPU; use eager or inductor on this machine")
        try:
            import torch_tensorrt  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "--backend tensorrt needs torch-tensorrt: pip install torch-tensorrt==2.14.*"
            ) from e
    # Real tensors compile everywhere; complex RoPE breaks TensorRT and graphs. The tables of the
    # model's own stride-16 feature map are built here, not while a graph is traced.
    use_real_rope(model, (model.image_size // 16) ** 2)
    if backend == "tensorrt":
        model.image_encoder = _tensorrt_encoder(model, model_cfg, (1, encode_batch))  # forward_image as is
    else:
        model.image_encoder = torch.compile(model.image_encoder, dynamic=False)
    model.memory_attention = torch.compile(model.memory_attention, dynamic=True)
    log.info("model backend: %s (%s)", backend, device)
