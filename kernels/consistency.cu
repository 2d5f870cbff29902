// consistency: advance the VC run lengths by one frame and count, for each active window
// length n, |run_gt >= n| (GT-constant pixels) and |run_gt >= n and run_pred >= n|.
// Torch twin: sam2vss.metrics.VideoMetrics._update_vc.
// Bytes: reads 4 B and writes 4 B per pixel (cur and prev label, two runs); counts are reduced
// in shared memory, two 8 B atomics per block and n.
#include "consistency.cuh"

#define SVS_VC_MAX_N 8

extern "C" __global__ void svs_vc_step(const svs::u8* __restrict__ g, const svs::u8* __restrict__ p,
                                       svs::u8* __restrict__ prev_g, svs::u8* __restrict__ prev_p,
                                       svs::u8* __restrict__ run_g, svs::u8* __restrict__ run_p,
                                       svs::i64 n, bool first, svs::u8 cap, const svs::i32* __restrict__ ns,
                                       svs::i32 num_ns, svs::u64* __restrict__ counts) {
  __shared__ unsigned int s_counts[2 * SVS_VC_MAX_N];
  if (threadIdx.x < 2 * SVS_VC_MAX_N) s_counts[threadIdx.x] = 0;
  __syncthreads();
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < n;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::u8 rg = first ? (svs::u8)1 : svs::run_step(run_g[i], g[i], prev_g[i], cap);
    const svs::u8 rp = first ? (svs::u8)1 : svs::run_step(run_p[i], p[i], prev_p[i], cap);
    run_g[i] = rg;
    run_p[i] = rp;
    prev_g[i] = g[i];
    prev_p[i] = p[i];
    for (svs::i32 k = 0; k < num_ns && k < SVS_VC_MAX_N; ++k) {
      if (rg >= ns[k]) {
        atomicAdd(&s_counts[2 * k + 1], 1u);
        if (rp >= ns[k]) atomicAdd(&s_counts[2 * k], 1u);
      }
    }
  }
  __syncthreads();
  if (threadIdx.x < 2 * num_ns && threadIdx.x < 2 * SVS_VC_MAX_N)
    atomicAdd(counts + threadIdx.x, (svs::u64)s_counts[threadIdx.x]);
}
