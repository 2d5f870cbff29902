// boundary: the class-agnostic inner boundary band of a label map (METRICS.md 8.3) and the
// per-pixel bin of the GT-band x prediction-band co-occurrence that mBIoU is computed from.
// Torch twins: sam2vss.metrics.label_band and the second bincount of frame_counts.
//
// x is in the band iff some in-image pixel of its k x k footprint has another label, i.e.
// max != min over the footprint (min <= L(x) <= max). Max and min are separable: a row pass
// (row_minmax) then a column pass over its results (band_from_rows). With pad_border the
// out-of-image neighbours count as another label, so pixels within r = k/2 of the edge are in.
#pragma once
#include "common.cuh"

namespace svs {

// Row pass: min and max of row[x-r .. x+r], clipped to the image.
SVS_HD void row_minmax(const u8* row, i32 W, i32 x, i32 r, u8* out_min, u8* out_max) {
  const i32 lo = clampi(x - r, 0, W - 1), hi = clampi(x + r, 0, W - 1);
  u8 mn = row[lo], mx = row[lo];
  for (i32 i = lo + 1; i <= hi; ++i) {
    mn = min8(mn, row[i]);
    mx = max8(mx, row[i]);
  }
  *out_min = mn;
  *out_max = mx;
}

// Column pass over the row-pass results (H x W each) at (y, x): is the pixel in the band?
SVS_HD bool band_from_rows(const u8* rmin, const u8* rmax, i32 H, i32 W, i32 y, i32 x, i32 r,
                           bool pad_border) {
  if (pad_border && (y < r || y >= H - r || x < r || x >= W - r)) return true;
  const i32 lo = clampi(y - r, 0, H - 1), hi = clampi(y + r, 0, H - 1);
  u8 mn = rmin[(i64)lo * W + x], mx = rmax[(i64)lo * W + x];
  for (i32 yy = lo + 1; yy <= hi; ++yy) {
    mn = min8(mn, rmin[(i64)yy * W + x]);
    mx = max8(mx, rmax[(i64)yy * W + x]);
  }
  return mn != mx;
}

// Bin (a * (C+1) + b) of the band co-occurrence, a = GT class if the pixel is in the GT band
// (valid GT only) else C, b = predicted class if in the prediction band else C; -1 when
// neither (the (C, C) bin is never read). void_drop: prediction-band pixels on GT void do
// not count (METRICS.md 8.3 void_mode="drop").
SVS_HD i32 boundary_bin(u8 g, u8 p, bool band_g, bool band_p, i32 C, bool void_drop) {
  const bool valid = g < C;
  const bool in_g = band_g && valid;
  const bool in_p = band_p && (valid || !void_drop) && p < C;
  if (!in_g && !in_p) return -1;
  return (in_g ? (i32)g : C) * (C + 1) + (in_p ? (i32)p : C);
}

}  // namespace svs
