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

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


@dataclass
class TrackState:
    """Per-window tracking state: SAM2's output dict for all N masklets at once (batch N)."""

    num_frames: int
    cond: dict[int, dict] = field(default_factory=dict)  # frame -> compact outputs, (N, ...)
    non_cond: dict[int, dict] = field(default_factory=dict)
    maskmem_pos_enc: list[torch.Tensor] | None = None  # one object's slice, expanded on use

    def output_dict(self) -> dict:
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.non_cond}


class BatchedTracker:
    """Tracks N masklets prompted on frame 0 through a window, one forward per frame."""

    def __init__(self, predictor: torch.nn.Module):
        self.model = predictor  # a SAM2VideoPredictor (a SAM2Base): its blocks and settings

    def _features(self, image: torch.Tensor, n: int):
        backbone_out = self.model.forward_image(image[None].to(self._device()))
        expanded = {
            "backbone_fpn": [f.expand(n, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(n, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
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

    def track(self, images: list[torch.Tensor], masks: torch.Tensor) -> Iterator[torch.Tensor]:
        """images: T preprocessed frames (3, S, S); masks: (N, H, W) bool prompts on frame 0.
        Yields (N, 1, S/4, S/4) low-resolution mask logits for frames 0..T-1."""
        from sam2.utils.misc import fill_holes_in_mask_scores

        model, n, size = self.model, masks.shape[0], self.model.image_size
        state = TrackState(num_frames=len(images))
        device = self._device()

        def step(t: int, feats, pos, sizes, prompt: torch.Tensor | None) -> dict:
            # The prompted frame runs without the memory encoder (it runs below, as the
            # predictor's preflight does); every later frame runs it inside track_step.
            return model.track_step(
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

        for t, image in enumerate(images):
            feats, pos, sizes = self._features(image, n)
            if t == 0:
                prompt = masks[:, None].float().to(device)
                if prompt.shape[-2:] != (size, size):
                    prompt = F.interpolate(
                        prompt, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                    )
                    prompt = (prompt >= 0.5).float()
                out = step(t, feats, pos, sizes, prompt)
                high_res = F.interpolate(
                    out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False
                )
                maskmem, pos_enc = model._encode_new_memory(
                    current_vision_feats=feats,
                    feat_sizes=sizes,
                    pred_masks_high_res=high_res,
                    object_score_logits=out["object_score_logits"],
                    is_mask_from_pts=True,
                )
                state.cond[0] = self._compact(state, out, maskmem, pos_enc)
                pred = out["pred_masks"]
            else:
                out = step(t, feats, pos, sizes, None)
                pred = out["pred_masks"]
                if model.fill_hole_area > 0:
                    pred = fill_holes_in_mask_scores(pred, model.fill_hole_area)
                out["pred_masks"] = pred
                state.non_cond[t] = self._compact(state, out, out["maskmem_features"], out["maskmem_pos_enc"])
            yield pred
