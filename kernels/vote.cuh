// vote: the majority class of each masklet from its histogram (ties: lowest class id), and the
// paint R = class[id] where a masklet won the pixel, the base label elsewhere (Eq. 1).
// Torch twins: sam2vss.vote.decide and sam2vss.vote.paint. Scope masklet sums a window's
// histograms before deciding; scope frame decides per frame (the caller chooses).
#pragma once
#include "common.cuh"

namespace svs {

SVS_HD u8 argmax_class(const i64* row, i32 C) {
  i32 best = 0;
  for (i32 c = 1; c < C; ++c)
    if (row[c] > row[best]) best = c;
  return (u8)best;
}

SVS_HD u8 paint_pixel(i32 id, const u8* classes, u8 label) { return id >= 0 ? classes[id] : label; }

}  // namespace svs
