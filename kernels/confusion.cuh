// confusion: per-pixel bin of the C x C confusion matrix (rows = GT, cols = prediction).
// Torch twin: sam2vss.metrics.frame_counts (the first bincount). GT values >= C (255 = void,
// and anything else out of range) are ignored, as in mmseg and the VSPW Evaluator.
#pragma once
#include "common.cuh"

namespace svs {

// Bin index g*C + p, or -1 when the pixel does not count (invalid GT, or a prediction >= C,
// which callers reject at the file boundary; the guard only keeps writes in bounds).
SVS_HD i32 confusion_bin(u8 g, u8 p, i32 C) { return (g < C && p < C) ? (i32)g * C + p : -1; }

}  // namespace svs
