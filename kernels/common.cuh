// sam2vss kernels: shared definitions for the per-element logic (.cuh) that both targets compile.
// The .cu files hold thin __global__ launchers (nvcc / NVRTC via CuPy); engine/host_ops.cpp
// compiles the same headers into OpenMP loops for the CPU. No standard headers here, so NVRTC
// compiles these files without an include path to the CUDA toolkit's C library headers.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SVS_HD __host__ __device__ __forceinline__
#else
#define SVS_HD static inline
#endif

namespace svs {

typedef unsigned char u8;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

SVS_HD i32 clampi(i32 v, i32 lo, i32 hi) { return v < lo ? lo : (v > hi ? hi : v); }
SVS_HD u8 min8(u8 a, u8 b) { return a < b ? a : b; }
SVS_HD u8 max8(u8 a, u8 b) { return a > b ? a : b; }

}  // namespace svs
