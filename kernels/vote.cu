// vote: decide each masklet's class (one thread per masklet, C reads), then paint a frame.
// Torch twins: sam2vss.vote.decide, sam2vss.vote.paint.
// Bytes: paint reads 4 B (id) + 1 B (label) and writes 1 B per pixel; decide reads N*C*8 B.
#include "vote.cuh"

extern "C" __global__ void svs_decide(const svs::i64* __restrict__ hist, svs::i32 n, svs::i32 C,
                                      svs::u8* __restrict__ classes) {
  const svs::i32 k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < n) classes[k] = svs::argmax_class(hist + (svs::i64)k * C, C);
}

extern "C" __global__ void svs_paint(const svs::i32* __restrict__ ids, const svs::u8* __restrict__ classes,
                                     const svs::u8* __restrict__ labels, svs::i64 total, svs::u8* __restrict__ out) {
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < total;
       i += (svs::i64)gridDim.x * blockDim.x)
    out[i] = svs::paint_pixel(ids[i], classes, labels[i]);
}
