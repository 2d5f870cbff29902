// consistency: per-pixel run lengths of constant GT and constant prediction (METRICS.md 8.4).
// Torch twin: sam2vss.metrics.VideoMetrics._update_vc.
//
// The window of n frames ending at t is GT-constant at x iff run_gt(x, t) >= n, so one pass
// over a video with one byte of state per pixel and map serves every n at once (the reference
// script re-compares n frames per window: 2(n-1) frame reads per window and n).
#pragma once
#include "common.cuh"

namespace svs {

// Next run length: +1 (saturating at cap) when the label is unchanged, else 1.
SVS_HD u8 run_step(u8 run, u8 cur, u8 prev, u8 cap) {
  return cur == prev ? (run < cap ? (u8)(run + 1) : cap) : (u8)1;
}

}  // namespace svs
