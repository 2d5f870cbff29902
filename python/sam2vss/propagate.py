"""Propagate all masklets of a window in one batched forward per frame.

SAM2's current SAM2VideoPredictor loops over objects in Python and runs each one as a batch of 1
(PERF.md 1.2); the legacy predictor batched them. Batching is exact here because every masklet
is prompted with a mask on the window's first frame: each object's memory bank, pointers and
outputs are the same tensors as in the per-object loop, stacked along the batch dimension. This
module drives SAM2Base's own blocks (forward_image, track_step, _encode_new_memory) with the
official predictor's per-object semantics, state typed and bounded by the window:
- frame 0: the mask prompt (resized with antialias, >= 0.5) through track_step without the
  memory encoder, then the memory encoder on the upsampled prediction with is_mask_from_pts
  (what propagate_in_video_preflight does);
- frames 1..T-1: track_step with the memory encoder; memory features stored in bf16 and the
  memory position encoding cached once, as the predictor does;
- outputs: pred_masks (low resolution) after SAM2's own hole filling call (a no-op with a
  warning when its CUDA extension is not built, as in the reference).
The oracle is the official per-object predictor (reference.py); tests/test_propagate.py holds
this module to it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MethodType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2vss.stages import Stages

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def preprocess(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """One RGB uint8 frame -> (3, S, S) float32 normalised, exactly as SAM2's video loader does
    it (PIL resize to S x S, /255 in float64, then mean/std in float32)."""
    img = np.array(Image.fromarray(frame).resize((image_size, image_size))) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def resize_frames(frames: torch.Tensor, image_size: int, workers: int = 4) -> torch.Tensor:
    """(T, 3, H, W) uint8 host frames -> (T, 3, S, S) uint8: SAM2's loader resize (Pillow's
    default bicubic to S x S), frames in parallel (Pillow releases the GIL while resampling).
    With `normalize_images` it equals `preprocess` bit for bit; it runs on the decode thread."""
    rgb = frames.permute(0, 2, 3, 1).cpu().numpy()

    def one(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((image_size, image_size)))

    if len(rgb) > 1 and workers > 1:
        pool = _resize_pool(workers)
        out = list(pool.map(one, rgb))
    else:
        out = [one(f) for f in rgb]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@functools.cache
def _resize_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=min(workers, os.cpu_count() or 1), thread_name_prefix="sam2vss-resize"
    )


_NORMALIZE: dict[str, torch.Tensor] = {}


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """(T, 3, S, S) uint8 -> float32 model input on the images' device, bit-exact with
    `preprocess`: a table of the 3 x 256 values SAM2's loader computes (/255 in float64, then
    mean/std in float32), built once with the same operations on the host, gathered per pixel."""
    key = str(images.device)
    if key not in _NORMALIZE:
        x = torch.from_numpy(np.arange(256) / 255.0).float()[None]  # float64 -> float32, as SAM2
        mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None]
        std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None]
        _NORMALIZE[key] = ((x - mean) / std).reshape(-1).to(images.device)
    offset = torch.arange(0, 3 * 256, 256, device=images.device)[None, :, None, None]
    return torch.take(_NORMALIZE[key], images.long() + offset)


def _bf16_layer_norm(self, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in the weights' dtype: CUDA's kernel accumulates its statistics in fp32 and
    writes bf16, which is what autocast's fp32 LayerNorm gave the next linear after its cast."""
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x.to(self.weight.dtype), self.normalized_shape, self.weight, self.bias, self.eps)


def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """The bf16 model of the fast presets on CUDA: weights, memory bank and position encodings
    in bf16, LayerNorms writing bf16 (autocast still runs, without casting weights or the
    LayerNorms' outputs back and forth); mask logits stay fp32 (SAM2 casts them). Complex RoPE
    tables are plain attributes, untouched. Measured on the emulated device (5 masklets at image
    size 256, a full memory): 762 launches per tracking step with fp32 weights under autocast,
    581 with bf16 weights, 508 with the LayerNorms in bf16 too."""
    model.to(torch.bfloat16)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
            m.forward = MethodType(_bf16_layer_norm, m)
    return model


def to_model_input(frames: torch.Tensor, image_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames -> (T, 3, S, S) normalised model input, on the frames' device: the
    device twin of `preprocess`, one resize per axis and one affine normalisation.

    Pillow's default resize is bicubic (a = -0.5) with its support widened by the scale, which
    torch's bicubic antialias reproduces. Pillow runs it as two 1-D passes with the image rounded
    to uint8 in between, the shorter-intermediate order first (horizontal when H <= W, as Pillow
    13 does); doing the same leaves at most one uint8 level of difference, on < 0.1% of values
    (measured on noise, 1x1 to 1080x1920; tests/test_sources.py bounds it). One fused 2-D resize
    differs by up to 17 levels when upsampling, where bicubic overshoot is clipped in between."""
    x = frames.float()
    h, w = x.shape[-2:]
    s = image_size
    for size in ((h, s), (s, s)) if h <= w else ((s, w), (s, s)):
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0, 255).round_()
    scale, shift = _affine(x.device)
    return (x * scale - shift).to(dtype)


_AFFINE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation as x * scale - shift, (3, 1, 1) each, uploaded once per device."""
    key = str(device)
    if key not in _AFFINE:
        scale = torch.tensor([1 / (255 * sd) for sd in IMG_STD])[:, None, None]
        shift = torch.tensor([m / sd for m, sd in zip(IMG_MEAN, IMG_STD, strict=True)])[:, None, None]
        _AFFINE[key] = (scale.to(device), shift.to(device))
    return _AFFINE[key]


@dataclass
class TrackState:
    """Per-window tracking state: SAM2's output dict for all N masklets at once (batch N)."""

    num_frames: int
    cond: dict[int, dict] = field(default_factory=dict)  # frame -> compact outputs, (N, ...)
    non_cond: dict[int, dict] = field(default_factory=dict)
    maskmem_pos_enc: list[torch.Tensor] | None = None  # one object's slice, expanded on use

    def output_dict(self) -> dict:
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.non_cond}


class ObjectChunks(torch.nn.Module):
    """SAM2's memory attention run on a few masklets at a time, about `tokens` image tokens per
    call (masklets x tokens per frame). Masklets are independent in it (batch rows), so the output
    is the same; on a CPU a chunk's activations stay in cache. Measured on 2 cores, 25 masklets at
    image size 256 (256 tokens each), a tracking step with a full memory: 1380 ms a frame in one
    call, 1150 in chunks of 1024 tokens (4 masklets), 1210 in chunks of 512, 1230 of 2048."""

    def __init__(self, attention: torch.nn.Module, tokens: int):
        super().__init__()
        self.attention, self.tokens = attention, tokens

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0):
        # sequence first: memory (L, N, C); curr and curr_pos are one-level lists of (HW, N, C)
        n, size = memory.shape[1], max(1, self.tokens // curr[0].shape[0])
        if n <= size:
            return self.attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        parts = [
            self.attention(
                [x[:, i : i + size] for x in curr],
                memory[:, i : i + size],
                [x[:, i : i + size] for x in curr_pos],
                memory_pos[:, i : i + size],
                num_obj_ptr_tokens,
            )
            for i in range(0, n, size)
        ]
        return torch.cat(parts, dim=1)


def default_chunk_tokens(device: torch.device, image_size: int = 1024, budget_mib: int = 4096) -> int:
    """Image tokens per memory-attention call. On a CPU: 1024 (cache-sized chunks). On a GPU:
    as many masklets as fit `budget_mib` of activations [est.]: per masklet about 70 MB at 1024
    (4096 image tokens: queries and MLP ~38 MB in bf16; 28,736 memory keys projected to 256
    wide, keys and values ~29 MB), so ~60 masklets a call at 1024 and all of a typical keyframe;
    a keyframe with 100+ masklets runs in a few calls instead of running out of memory."""
    if device.type == "cpu":
        return 1024
    tokens = (image_size // 16) ** 2
    per_masklet = tokens * (256 * 2 * 12 + 2048 * 2) + 7 * tokens * 256 * 2 * 2
    return max(1, (budget_mib << 20) // per_masklet) * tokens


class BatchedTracker:
    """Tracks N masklets prompted on frame 0 through a window, one forward per frame.

    The image encoder runs on `encode_batch` frames at a time (each frame exactly once); its
    outputs are expanded, not copied, to the N masklets. `chunk_tokens`: image tokens per memory
    attention call (ObjectChunks; None: all masklets at once)."""

    def __init__(
        self,
        predictor: torch.nn.Module,
        encode_batch: int = 8,
        memory_frames: int | None = None,
        chunk_tokens: int | None = None,
    ):
        self.model = predictor  # a SAM2VideoPredictor (a SAM2Base): its blocks and settings
        self.encode_batch = encode_batch
        # None: keep the whole window (the model reads its last 6 frames and 16 object pointers
        # from it, as the official predictor does); k: keep the last k frames only.
        self.memory_frames = memory_frames
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1 or None, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens

    def encode_frame(self, image: torch.Tensor) -> dict:
        """Backbone output of one (3, S, S) frame (the keyframe, which detection shares)."""
        out = self.model.forward_image(image[None].to(self._device()))
        return {key: out[key] for key in ("backbone_fpn", "vision_pos_enc")}

    def encode(self, images: torch.Tensor, start: int = 0) -> Iterator[dict]:
        """Backbone outputs of frames start.. of (T, 3, S, S), `encode_batch` frames per call."""
        for i in range(start, images.shape[0], self.encode_batch):
            out = self.model.forward_image(images[i : i + self.encode_batch].to(self._device()))
            for k in range(out["backbone_fpn"][0].shape[0]):
                yield {key: [f[k : k + 1] for f in out[key]] for key in ("backbone_fpn", "vision_pos_enc")}

    def _features(self, backbone_out: dict, n: int):
        expanded = {key: [f.expand(n, -1, -1, -1) for f in fs] for key, fs in backbone_out.items()}
        _, vision_feats, vision_pos, feat_sizes = self.model._prepare_backbone_features(expanded)
        return vision_feats, vision_pos, feat_sizes

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _compact(self, state: TrackState, out: dict, maskmem, pos_enc) -> dict:
        if pos_enc is not None and state.maskmem_pos_enc is None:
            state.maskmem_pos_enc = [x[0:1].clone() for x in pos_enc]
        n = out["pred_masks"].shape[0]
        return {
            "maskmem_features": None if maskmem is None else maskmem.to(torch.bfloat16),
            "maskmem_pos_enc": None
            if pos_enc is None
            else [x.expand(n, -1, -1, -1) for x in state.maskmem_pos_enc],
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def track(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        stages: Stages | None = None,
        keyframe: dict | None = None,
    ) -> Iterator[torch.Tensor]:
        """images: (T, 3, S, S) preprocessed frames; masks: (N, H, W) bool prompts on frame 0;
        keyframe: frame 0's backbone output when already computed (encode_frame).
        Yields (N, 1, S/4, S/4) low-resolution mask logits for frames 0..T-1; `stages` gets
        the encoder's and the tracking steps' time."""
        stages = stages or Stages()
        state = TrackState(num_frames=images.shape[0])
        encoded = self.encode(images, start=0 if keyframe is None else 1)
        for t in range(state.num_frames):
            with stages.time("encode"):
                backbone = keyframe if t == 0 and keyframe is not None else next(encoded)
                feats, pos, sizes = self._features(backbone, masks.shape[0])
            with stages.time("propagate"):
                pred = (
                    self._prompt(state, feats, pos, sizes, masks)
                    if t == 0
                    else self._step(state, t, feats, pos, sizes)
                )
            yield pred

    def _track_step(self, state: TrackState, t: int, feats, pos, sizes, prompt: torch.Tensor | None) -> dict:
        # The prompted frame runs without the memory encoder (it runs in _prompt, as the
        # predictor's preflight does); every later frame runs it inside track_step.
        with self._chunked_attention():
            return self.model.track_step(
                frame_idx=t,
                is_init_cond_frame=prompt is not None,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=prompt,
                output_dict=state.output_dict(),
                num_frames=state.num_frames,
                track_in_reverse=False,
                run_mem_encoder=prompt is None,
                prev_sam_mask_logits=None,
            )

    @contextmanager
    def _chunked_attention(self) -> Iterator[None]:
        """The model's memory attention wrapped in ObjectChunks for one step, the model itself
        left as it was (it may be shared with the reference or with detection)."""
        attention = self.model.memory_attention
        if self.chunk_tokens is None:
            yield
            return
        self.model.memory_attention = ObjectChunks(attention, self.chunk_tokens)
        try:
            yield
        finally:
            self.model.memory_attention = attention

    def _prompt(self, state: TrackState, feats, pos, sizes, masks: torch.Tensor) -> torch.Tensor:
        """Frame 0: the mask prompts, then the memory encoder with is_mask_from_pts."""
        model, size = self.model, self.model.image_size
        prompt = masks[:, None].float().to(self._device())
        if prompt.shape[-2:] != (size, size):
            prompt = F.interpolate(
                prompt, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
            prompt = (prompt >= 0.5).float()
        out = self._track_step(state, 0, feats, pos, sizes, prompt)
        high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
        maskmem, pos_enc = model._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        state.cond[0] = self._compact(state, out, maskmem, pos_enc)
        return out["pred_masks"]

    def _step(self, state: TrackState, t: int, feats, pos, sizes) -> torch.Tensor:
        """Frames 1..T-1: memory attention over the window's memory, decoder, memory encoder."""
        from sam2.utils.misc import fill_holes_in_mask_scores

        out = self._track_step(state, t, feats, pos, sizes, None)
        pred = out["pred_masks"]
        if self.model.fill_hole_area > 0:
            pred = fill_holes_in_mask_scores(pred, self.model.fill_hole_area)
        out["pred_masks"] = pred
        state.non_cond[t] = self._compact(state, out, out["maskmem_features"], out["maskmem_pos_enc"])
        if self.memory_frames is not None:  # frame t+1 reads t-k+1..t; frame 0 (the prompt) stays
            state.non_cond.pop(t - self.memory_frames, None)
        return pred
