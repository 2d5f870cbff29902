// aggregate: per output pixel, upsample N masklet logits bilinearly (fused: never materialised),
// pick the paint winner and vote for every covering masklet.
// Torch twin: vote.upsample_logits + vote.aggregate (or aggregate_logits) + vote.vote_histogram.
// Bytes: logits N*h*w*4 (25 masklets at 256x256 = 6.5 MB, L2-resident), labels 1 B and ids 4 B
// per output pixel, one 8 B atomic per covered pixel and masklet; the torch twin writes and
// re-reads an N*H*W float tensor (41 MB at 25 x 480x853) instead.
#include "aggregate.cuh"

extern "C" __global__ void svs_aggregate(const float* __restrict__ logits, svs::i32 n, svs::i32 h, svs::i32 w,
                                         const svs::i32* __restrict__ rank, const svs::u8* __restrict__ labels,
                                         svs::i32 H, svs::i32 W, svs::i32 C, bool by_logit,
                                         svs::i32* __restrict__ ids, svs::u64* __restrict__ hist) {
  const svs::i64 total = (svs::i64)H * W;
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < total;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::i32 y = (svs::i32)(i / W), x = (svs::i32)(i % W);
    const svs::Lerp ly = svs::lerp_coord(y, h, H), lx = svs::lerp_coord(x, w, W);
    ids[i] = svs::aggregate_pixel(logits, n, h, w, ly, lx, rank, by_logit, labels[i], C, hist, nullptr);
  }
}
