// aggregate: stacked low-resolution masklet logits -> per-pixel masklet id at the output
// resolution, with the bilinear upsampling fused, plus each masklet's vote histogram over its
// full (upsampled, logit > 0) mask. Torch twin: sam2vss.vote.upsample_logits + aggregate /
// aggregate_logits + vote_histogram.
//
// The upsampling is F.interpolate(mode="bilinear", align_corners=False)'s sampling grid with a
// fixed evaluation order (horizontal, then vertical), written out in vote.upsample_logits too, so
// the host build and the torch twin agree bit for bit (compiled without FMA contraction). It
// differs from F.interpolate itself by float rounding only (~1e-5 on unit-scale logits).
#pragma once
#include "common.cuh"

namespace svs {

struct Lerp {
  i32 i0, i1;
  float l0, l1;
};

// Source cell and weights of output coordinate `dst` (align_corners=False, clamped at 0).
SVS_HD Lerp lerp_coord(i32 dst, i32 in_size, i32 out_size) {
  const float scale = (float)in_size / (float)out_size;
  float src = scale * ((float)dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  Lerp c;
  c.i0 = (i32)src;
  c.i1 = c.i0 + (c.i0 < in_size - 1 ? 1 : 0);
  c.l1 = src - (float)c.i0;
  c.l0 = 1.0f - c.l1;
  return c;
}

SVS_HD float bilinear(const float* m, i32 w, Lerp y, Lerp x) {
  const float t0 = x.l0 * m[(i64)y.i0 * w + x.i0] + x.l1 * m[(i64)y.i0 * w + x.i1];
  const float t1 = x.l0 * m[(i64)y.i1 * w + x.i0] + x.l1 * m[(i64)y.i1 * w + x.i1];
  return y.l0 * t0 + y.l1 * t1;
}

// One output pixel: the winning masklet (-1 for none) and, if `hist`, one vote per covering
// masklet for `label`. by_logit: highest upsampled logit wins (ties: lowest index); otherwise
// the covering masklet with the highest paint rank wins (painted last).
SVS_HD i32 aggregate_pixel(const float* logits, i32 n, i32 h, i32 w, Lerp y, Lerp x, const i32* rank,
                           bool by_logit, u8 label, i32 C, u64* hist_atomic, i64* hist_plain) {
  i32 best = -1;
  float best_logit = 0.0f;
  i32 best_rank = -1;
  for (i32 k = 0; k < n; ++k) {
    const float v = bilinear(logits + (i64)k * h * w, w, y, x);
    if (!(v > 0.0f)) continue;
    if (label < C) {
#if defined(__CUDA_ARCH__)
      if (hist_atomic) atomicAdd(hist_atomic + (i64)k * C + label, 1ULL);
#endif
      if (hist_plain) hist_plain[(i64)k * C + label] += 1;
    }
    if (by_logit ? (best < 0 || v > best_logit) : rank[k] > best_rank) {
      best = k;
      best_logit = v;
      best_rank = by_logit ? 0 : rank[k];
    }
  }
  return best;
}

}  // namespace svs
