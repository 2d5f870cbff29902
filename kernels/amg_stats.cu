// amg_stats: one block per candidate mask reduces its low-resolution logits to the stability
// score, area and output-resolution box. Torch twin: sam2vss.detect.amg_stats.
// Bytes: reads B*h*w*4 once (768 candidates of a 16x16 grid at 256x256 = 201 MB in fp32), writes
// 28 B per candidate; SAM2's generator instead upsamples every candidate to the frame first.
#include "amg_stats.cuh"

extern "C" __global__ void svs_amg_stats(const float* __restrict__ logits, svs::i32 h, svs::i32 w, float thr,
                                         float offset, svs::i32 H, svs::i32 W, float* __restrict__ stability,
                                         svs::i64* __restrict__ area, svs::i32* __restrict__ boxes) {
  __shared__ svs::i64 s_inter, s_uni, s_area;
  __shared__ int s_x0, s_y0, s_x1, s_y1;
  if (threadIdx.x == 0) {
    s_inter = s_uni = s_area = 0;
    s_x0 = w;
    s_y0 = h;
    s_x1 = -1;
    s_y1 = -1;
  }
  __syncthreads();
  const float* m = logits + (svs::i64)blockIdx.x * h * w;
  svs::AmgCounts c = {0, 0, 0, w, h, -1, -1};
  for (svs::i64 i = threadIdx.x; i < (svs::i64)h * w; i += blockDim.x)
    svs::amg_accumulate(&c, m[i], (svs::i32)(i / w), (svs::i32)(i % w), thr, offset);
  atomicAdd((unsigned long long*)&s_inter, (unsigned long long)c.inter);
  atomicAdd((unsigned long long*)&s_uni, (unsigned long long)c.uni);
  atomicAdd((unsigned long long*)&s_area, (unsigned long long)c.area);
  atomicMin(&s_x0, c.x0);
  atomicMin(&s_y0, c.y0);
  atomicMax(&s_x1, c.x1);
  atomicMax(&s_y1, c.y1);
  __syncthreads();
  if (threadIdx.x == 0) {
    const svs::AmgCounts total = {s_inter, s_uni, s_area, s_x0, s_y0, s_x1, s_y1};
    stability[blockIdx.x] = (float)total.inter / (float)total.uni;
    area[blockIdx.x] = total.area;
    svs::amg_box(&total, h, w, H, W, boxes + 4 * blockIdx.x);
  }
}
