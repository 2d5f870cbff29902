// confusion: accumulate a C x C confusion matrix over the valid pixels of a batch of frames.
// Torch twin: torch.bincount(g * C + p) in sam2vss.metrics.frame_counts.
// Bytes: reads 2 B per pixel (g, p), one 8 B atomic per valid pixel into a 124*124*8 = 123 KB
// matrix that stays in L2; a 480x853 frame reads 0.8 MB.
#include "confusion.cuh"

extern "C" __global__ void svs_confusion(const svs::u8* __restrict__ g, const svs::u8* __restrict__ p,
                                         svs::i64 n, svs::i32 C, svs::u64* __restrict__ hist) {
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < n;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::i32 bin = svs::confusion_bin(g[i], p[i], C);
    if (bin >= 0) atomicAdd(hist + bin, 1ULL);
  }
}
