// amg_stats: what the automatic mask generator filters on, from low-resolution mask logits in one
// read: the stability score (IoU of the masks thresholded at thr+offset and thr-offset, SAM2's
// calculate_stability_score), the area (pixels > thr) and the box of those pixels mapped to the
// output resolution. Torch twin: sam2vss.detect.amg_stats.
#pragma once
#include "common.cuh"

namespace svs {

struct AmgCounts {
  i64 inter, uni, area;
  i32 x0, y0, x1, y1;  // low-resolution box of pixels > thr; x0 > x1 when empty
};

SVS_HD void amg_accumulate(AmgCounts* s, float v, i32 y, i32 x, float thr, float offset) {
  s->inter += v > thr + offset;
  s->uni += v > thr - offset;
  if (v > thr) {
    s->area += 1;
    s->x0 = x < s->x0 ? x : s->x0;
    s->y0 = y < s->y0 ? y : s->y0;
    s->x1 = x > s->x1 ? x : s->x1;
    s->y1 = y > s->y1 ? y : s->y1;
  }
}

// Box [x0, y0, x1, y1] (inclusive) at the output resolution: the output pixels whose cells the
// low-resolution box covers; all zero for an empty mask (as SAM2's batched_mask_to_box).
SVS_HD void amg_box(const AmgCounts* s, i32 h, i32 w, i32 H, i32 W, i32* box) {
  if (s->area == 0) {
    box[0] = box[1] = box[2] = box[3] = 0;
    return;
  }
  box[0] = (i32)(((i64)s->x0 * W) / w);
  box[1] = (i32)(((i64)s->y0 * H) / h);
  box[2] = (i32)((((i64)s->x1 + 1) * W + w - 1) / w) - 1;
  box[3] = (i32)((((i64)s->y1 + 1) * H + h - 1) / h) - 1;
}

}  // namespace svs
