// boundary: band maps and the mBIoU band co-occurrence histogram of GT / prediction pairs.
// Torch twins: sam2vss.metrics.label_band and frame_counts (second bincount).
// Two launches: svs_band_rows (row min/max, reads 1 B and writes 2 B per pixel per map) then
// svs_band_counts (column min/max from L1/L2, one 8 B atomic per band pixel; about 10-20% of a
// VSPW frame's pixels are in a band with k = 5). A 480x853 pair moves about 4 MB in all.
#include "boundary.cuh"

extern "C" __global__ void svs_band_rows(const svs::u8* __restrict__ lab, svs::i32 H, svs::i32 W,
                                         svs::i32 r, svs::u8* __restrict__ rmin,
                                         svs::u8* __restrict__ rmax) {
  const svs::i64 n = (svs::i64)H * W;
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < n;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::i32 y = (svs::i32)(i / W), x = (svs::i32)(i % W);
    svs::row_minmax(lab + (svs::i64)y * W, W, x, r, rmin + i, rmax + i);
  }
}

extern "C" __global__ void svs_band(const svs::u8* __restrict__ rmin, const svs::u8* __restrict__ rmax,
                                    svs::i32 H, svs::i32 W, svs::i32 r, bool pad_border,
                                    svs::u8* __restrict__ band) {
  const svs::i64 n = (svs::i64)H * W;
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < n;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::i32 y = (svs::i32)(i / W), x = (svs::i32)(i % W);
    band[i] = svs::band_from_rows(rmin, rmax, H, W, y, x, r, pad_border);
  }
}

extern "C" __global__ void svs_band_counts(const svs::u8* __restrict__ g, const svs::u8* __restrict__ p,
                                           const svs::u8* __restrict__ gmin, const svs::u8* __restrict__ gmax,
                                           const svs::u8* __restrict__ pmin, const svs::u8* __restrict__ pmax,
                                           svs::i32 H, svs::i32 W, svs::i32 C, svs::i32 r, bool pad_border,
                                           bool void_drop, svs::u64* __restrict__ hist) {
  const svs::i64 n = (svs::i64)H * W;
  for (svs::i64 i = blockIdx.x * (svs::i64)blockDim.x + threadIdx.x; i < n;
       i += (svs::i64)gridDim.x * blockDim.x) {
    const svs::i32 y = (svs::i32)(i / W), x = (svs::i32)(i % W);
    const bool bg = svs::band_from_rows(gmin, gmax, H, W, y, x, r, pad_border);
    const bool bp = svs::band_from_rows(pmin, pmax, H, W, y, x, r, pad_border);
    const svs::i32 bin = svs::boundary_bin(g[i], p[i], bg, bp, C, void_drop);
    if (bin >= 0) atomicAdd(hist + bin, 1ULL);
  }
}
