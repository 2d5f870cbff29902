// sam2vss._host: the CPU build of the kernels' per-element logic (kernels/*.cuh), as OpenMP
// loops behind a minimal CPython module. Tensors arrive as raw data pointers of contiguous
// buffers; shapes, dtypes, devices and contiguity are checked once, in sam2vss/kernels.py.
// Every function releases the GIL, so eval's decode threads run these in parallel.
//
// The one decision to know: the band filters specialise the footprint radius at compile time
// (R = 1..7, i.e. k = 3..15) so the row and column passes vectorise across x; other radii take
// the generic per-element path. Both call the same svs:: functions the CUDA kernels call.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "aggregate.cuh"
#include "amg_stats.cuh"
#include "boundary.cuh"
#include "confusion.cuh"
#include "consistency.cuh"
#include "vote.cuh"

using svs::i32;
using svs::i64;
using svs::u8;

namespace {

// Per-calling-thread scratch, reused across calls: a fresh 480x853 buffer costs more in page
// faults than the pass that fills it.
struct Scratch {
  std::vector<u8> gmin, gmax, pmin, pmax;
  void reserve(size_t n) {
    if (gmin.size() < n) {
      gmin.resize(n);
      gmax.resize(n);
      pmin.resize(n);
      pmax.resize(n);
    }
  }
};
thread_local Scratch scratch;

// Row pass for one row: generic edges, fixed-width interior (vectorisable when R is a constant).
template <int R>
inline void rows_pass(const u8* row, i32 W, u8* rmin, u8* rmax, i32 r_dyn) {
  const i32 r = R > 0 ? R : r_dyn;
  if (R == 0 || W <= 2 * r) {
    for (i32 x = 0; x < W; ++x) svs::row_minmax(row, W, x, r, rmin + x, rmax + x);
    return;
  }
  for (i32 x = 0; x < r; ++x) svs::row_minmax(row, W, x, r, rmin + x, rmax + x);
  for (i32 x = r; x < W - r; ++x) {
    u8 mn = row[x - R], mx = row[x - R];
    for (i32 d = 1; d <= 2 * R; ++d) {
      mn = svs::min8(mn, row[x - R + d]);
      mx = svs::max8(mx, row[x - R + d]);
    }
    rmin[x] = mn;
    rmax[x] = mx;
  }
  for (i32 x = W - r; x < W; ++x) svs::row_minmax(row, W, x, r, rmin + x, rmax + x);
}

// Column pass for row y: band[x] for every x (same semantics as svs::band_from_rows).
template <int R>
inline void band_row(const u8* rmin, const u8* rmax, i32 H, i32 W, i32 y, i32 r_dyn, bool pad, u8* band) {
  const i32 r = R > 0 ? R : r_dyn;
  if (R == 0 || y < r || y >= H - r) {
    for (i32 x = 0; x < W; ++x) band[x] = svs::band_from_rows(rmin, rmax, H, W, y, x, r, pad);
    return;
  }
  const u8* lo_min = rmin + (i64)(y - R) * W;
  const u8* lo_max = rmax + (i64)(y - R) * W;
  for (i32 x = 0; x < W; ++x) {
    u8 mn = lo_min[x], mx = lo_max[x];
    for (i32 d = 1; d <= 2 * R; ++d) {
      mn = svs::min8(mn, lo_min[(i64)d * W + x]);
      mx = svs::max8(mx, lo_max[(i64)d * W + x]);
    }
    band[x] = mn != mx;
  }
  if (pad) {
    for (i32 x = 0; x < r && x < W; ++x) band[x] = 1;
    for (i32 x = W - r > 0 ? W - r : 0; x < W; ++x) band[x] = 1;
  }
}

// Confusion counts of one row, one add per run of one (g, p) pair: label maps are long runs.
// Run ends are found 8 pixels at a time (a zero XOR of shifted 8-byte loads means no run ends
// there): 0.33 ms per 480x853 frame for a per-pixel histogram, 0.25 ms for a bytewise run
// scan, less again with the 8-byte skip.
void add_pair_runs(const u8* g, const u8* p, i32 W, i32 C, i64* hist) {
  i32 start = 0, x = 0;
  auto close_run = [&](i32 end) {  // the run [start, end) ends at end
    const i32 bin = svs::confusion_bin(g[start], p[start], C);
    if (bin >= 0) hist[bin] += end - start;
    start = end;
  };
  for (; x + 9 <= W; x += 8) {
    uint64_t g0, g1, p0, p1;
    std::memcpy(&g0, g + x, 8);
    std::memcpy(&g1, g + x + 1, 8);
    std::memcpy(&p0, p + x, 8);
    std::memcpy(&p1, p + x + 1, 8);
    if (((g0 ^ g1) | (p0 ^ p1)) == 0) continue;
    for (i32 j = x; j < x + 8; ++j)
      if (g[j] != g[j + 1] || p[j] != p[j + 1]) close_run(j + 1);
  }
  for (; x + 1 < W; ++x)
    if (g[x] != g[x + 1] || p[x] != p[x + 1]) close_run(x + 1);
  if (W > 0) close_run(W);
}

// Band co-occurrence counts of one row. Only 5-20% of pixels lie in a band (7.5% on the
// synthetic 480x853 set): skip 8 pixels at a time where neither band is set, and merge runs of
// one bin among the rest (0.23 -> 0.1 ms per frame on one core).
void add_band_runs(const u8* g, const u8* p, const u8* band_g, const u8* band_p, i32 W, i32 C, bool void_drop,
                   i64* hist) {
  i32 last = -1;
  i64 count = 0;
  auto add = [&](i32 x) {
    const i32 bin = svs::boundary_bin(g[x], p[x], band_g[x], band_p[x], C, void_drop);
    if (bin == last) {
      ++count;
      return;
    }
    if (last >= 0) hist[last] += count;
    last = bin;
    count = 1;
  };
  i32 x = 0;
  for (; x + 8 <= W; x += 8) {
    uint64_t a, b;
    std::memcpy(&a, band_g + x, 8);
    std::memcpy(&b, band_p + x, 8);
    if ((a | b) == 0) continue;
    for (i32 j = x; j < x + 8; ++j)
      if (band_g[j] | band_p[j]) add(j);
  }
  for (; x < W; ++x)
    if (band_g[x] | band_p[x]) add(x);
  if (last >= 0) hist[last] += count;
}

int threads_or_one(int threads) { return threads > 0 ? threads : 1; }

template <int R>
void frame_counts_impl(const u8* g, const u8* p, i32 H, i32 W, i32 C, i32 r, bool pad, bool void_drop,
                       i64* conf, i64* bconf, int threads) {
  const size_t n = (size_t)H * W;
  scratch.reserve(n);
  u8 *gmin = scratch.gmin.data(), *gmax = scratch.gmax.data();
  u8 *pmin = scratch.pmin.data(), *pmax = scratch.pmax.data();
  const i64 conf_bins = (i64)C * C, bconf_bins = (i64)(C + 1) * (C + 1);
#pragma omp parallel num_threads(threads_or_one(threads))
  {
#pragma omp for schedule(static)
    for (i32 y = 0; y < H; ++y) {
      rows_pass<R>(g + (i64)y * W, W, gmin + (i64)y * W, gmax + (i64)y * W, r);
      rows_pass<R>(p + (i64)y * W, W, pmin + (i64)y * W, pmax + (i64)y * W, r);
    }
    std::vector<i64> my_conf(conf_bins, 0), my_bconf(bconf_bins, 0);
    std::vector<u8> band_g(W), band_p(W);
#pragma omp for schedule(static)
    for (i32 y = 0; y < H; ++y) {
      const u8* gy = g + (i64)y * W;
      const u8* py = p + (i64)y * W;
      band_row<R>(gmin, gmax, H, W, y, r, pad, band_g.data());
      band_row<R>(pmin, pmax, H, W, y, r, pad, band_p.data());
      add_pair_runs(gy, py, W, C, my_conf.data());
      add_band_runs(gy, py, band_g.data(), band_p.data(), W, C, void_drop, my_bconf.data());
    }
#pragma omp critical
    {
      for (i64 i = 0; i < conf_bins; ++i) conf[i] += my_conf[i];
      for (i64 i = 0; i < bconf_bins; ++i) bconf[i] += my_bconf[i];
    }
  }
}

template <int R>
void band_impl(const u8* lab, i32 H, i32 W, i32 r, bool pad, u8* out, int threads) {
  const size_t n = (size_t)H * W;
  scratch.reserve(n);
  u8 *rmin = scratch.gmin.data(), *rmax = scratch.gmax.data();
#pragma omp parallel num_threads(threads_or_one(threads))
  {
#pragma omp for schedule(static)
    for (i32 y = 0; y < H; ++y) rows_pass<R>(lab + (i64)y * W, W, rmin + (i64)y * W, rmax + (i64)y * W, r);
#pragma omp for schedule(static)
    for (i32 y = 0; y < H; ++y) band_row<R>(rmin, rmax, H, W, y, r, pad, out + (i64)y * W);
  }
}

#define SVS_RADIUS_DISPATCH(fn, r, ...)  \
  switch (r) {                           \
    case 1: fn<1>(__VA_ARGS__); break;   \
    case 2: fn<2>(__VA_ARGS__); break;   \
    case 3: fn<3>(__VA_ARGS__); break;   \
    case 4: fn<4>(__VA_ARGS__); break;   \
    case 5: fn<5>(__VA_ARGS__); break;   \
    case 6: fn<6>(__VA_ARGS__); break;   \
    case 7: fn<7>(__VA_ARGS__); break;   \
    default: fn<0>(__VA_ARGS__); break;  \
  }

// Run a range function over n items split into one contiguous chunk per thread. The loops
// live in plain functions with __restrict__ pointers: inside an OpenMP region gcc loses the
// restrict qualifiers of captured pointers and stops vectorising.
template <typename F>
void parallel_chunks(i64 n, int threads, F&& f) {
  const int t = threads_or_one(threads);
  if (t == 1) {
    f(0, n, 0);
    return;
  }
#pragma omp parallel for num_threads(t) schedule(static)
  for (int c = 0; c < t; ++c) f(n * c / t, n * (c + 1) / t, c);
}

void vc_runs(const u8* __restrict__ g, const u8* __restrict__ p, u8* __restrict__ prev_g, u8* __restrict__ prev_p,
             u8* __restrict__ run_g, u8* __restrict__ run_p, i64 begin, i64 end, bool first, u8 cap) {
  for (i64 i = begin; i < end; ++i) {
    run_g[i] = first ? (u8)1 : svs::run_step(run_g[i], g[i], prev_g[i], cap);
    run_p[i] = first ? (u8)1 : svs::run_step(run_p[i], p[i], prev_p[i], cap);
    prev_g[i] = g[i];
    prev_p[i] = p[i];
  }
}

void vc_count(const u8* __restrict__ run_g, const u8* __restrict__ run_p, i64 begin, i64 end, u8 n, i64* both,
              i64* gt) {
  uint32_t b = 0, c = 0;  // fewer than 2^31 pixels (checked in kernels.py)
  for (i64 i = begin; i < end; ++i) {
    const uint32_t gc = run_g[i] >= n;
    c += gc;
    b += gc & (uint32_t)(run_p[i] >= n);
  }
  *both = b;
  *gt = c;
}

// Advance both runs (byte selects), then one counting pass per n; both passes vectorise.
void vc_step_impl(const u8* g, const u8* p, u8* prev_g, u8* prev_p, u8* run_g, u8* run_p, i64 n, bool first,
                  u8 cap, const i64* ns, int num_ns, i64* out, int threads) {
  parallel_chunks(n, threads, [&](i64 b, i64 e, int) { vc_runs(g, p, prev_g, prev_p, run_g, run_p, b, e, first, cap); });
  const int t = threads_or_one(threads);
  for (int k = 0; k < num_ns; ++k) {
    std::vector<i64> both(t, 0), gt(t, 0);
    parallel_chunks(n, threads, [&](i64 b, i64 e, int c) { vc_count(run_g, run_p, b, e, (u8)ns[k], &both[c], &gt[c]); });
    for (int c = 0; c < t; ++c) {
      out[2 * k] += both[c];
      out[2 * k + 1] += gt[c];
    }
  }
}

// Aggregate one frame: per output pixel the winning masklet and its votes (aggregate.cuh), with
// the column sampling grid computed once per call and one private histogram per thread.
void aggregate_impl(const float* logits, i32 n, i32 h, i32 w, const i32* rank, const u8* labels, i32 H, i32 W,
                    i32 C, bool by_logit, i32* ids, i64* hist, int threads) {
  std::vector<svs::Lerp> lx(W);
  for (i32 x = 0; x < W; ++x) lx[x] = svs::lerp_coord(x, w, W);
  const int t = threads_or_one(threads);
  std::vector<std::vector<i64>> mine(t, std::vector<i64>((size_t)n * C, 0));
  parallel_chunks(H, threads, [&](i64 b, i64 e, int c) {
    for (i64 y = b; y < e; ++y) {
      const svs::Lerp ly = svs::lerp_coord((i32)y, h, H);
      for (i32 x = 0; x < W; ++x) {
        const i64 i = y * W + x;
        ids[i] = svs::aggregate_pixel(logits, n, h, w, ly, lx[x], rank, by_logit, labels[i], C, nullptr,
                                      mine[c].data());
      }
    }
  });
  for (int c = 0; c < t; ++c)
    for (size_t i = 0; i < mine[c].size(); ++i) hist[i] += mine[c][i];
}

template <typename T>
T* ptr(unsigned long long address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// ---------------------------------------------------------------------------- Python bindings

PyObject* py_frame_counts(PyObject*, PyObject* args) {
  unsigned long long g, p, conf, bconf;
  int H, W, C, k, pad, void_drop, threads;
  if (!PyArg_ParseTuple(args, "KKiiiippKKi", &g, &p, &H, &W, &C, &k, &pad, &void_drop, &conf, &bconf, &threads))
    return nullptr;
  const i32 r = k / 2;
  Py_BEGIN_ALLOW_THREADS;
  SVS_RADIUS_DISPATCH(frame_counts_impl, r, ptr<const u8>(g), ptr<const u8>(p), H, W, C, r, pad != 0,
                      void_drop != 0, ptr<i64>(conf), ptr<i64>(bconf), threads);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_confusion(PyObject*, PyObject* args) {
  unsigned long long g, p, hist;
  long long n;
  int C, threads;
  if (!PyArg_ParseTuple(args, "KKLiKi", &g, &p, &n, &C, &hist, &threads)) return nullptr;
  const u8* gp = ptr<const u8>(g);
  const u8* pp = ptr<const u8>(p);
  i64* out = ptr<i64>(hist);
  Py_BEGIN_ALLOW_THREADS;
  const int t = threads_or_one(threads);
  std::vector<std::vector<i64>> mine(t, std::vector<i64>((size_t)C * C, 0));
  parallel_chunks(n, threads, [&](i64 b, i64 e, int c) {
    for (i64 i = b; i < e; i += 4096) add_pair_runs(gp + i, pp + i, (i32)(e - i < 4096 ? e - i : 4096), C, mine[c].data());
  });
  for (int c = 0; c < t; ++c)
    for (size_t i = 0; i < mine[c].size(); ++i) out[i] += mine[c][i];
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_band(PyObject*, PyObject* args) {
  unsigned long long lab, out;
  int H, W, k, pad, threads;
  if (!PyArg_ParseTuple(args, "KiiipKi", &lab, &H, &W, &k, &pad, &out, &threads)) return nullptr;
  const i32 r = k / 2;
  Py_BEGIN_ALLOW_THREADS;
  SVS_RADIUS_DISPATCH(band_impl, r, ptr<const u8>(lab), H, W, r, pad != 0, ptr<u8>(out), threads);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_vc_step(PyObject*, PyObject* args) {
  unsigned long long g, p, prev_g, prev_p, run_g, run_p, ns_ptr, counts;
  long long n;
  int first, cap, num_ns, threads;
  if (!PyArg_ParseTuple(args, "KKKKKKLpiKiKi", &g, &p, &prev_g, &prev_p, &run_g, &run_p, &n, &first, &cap,
                        &ns_ptr, &num_ns, &counts, &threads))
    return nullptr;
  Py_BEGIN_ALLOW_THREADS;
  vc_step_impl(ptr<const u8>(g), ptr<const u8>(p), ptr<u8>(prev_g), ptr<u8>(prev_p), ptr<u8>(run_g), ptr<u8>(run_p),
               n, first != 0, (u8)cap, ptr<const i64>(ns_ptr), num_ns, ptr<i64>(counts), threads);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_aggregate(PyObject*, PyObject* args) {
  unsigned long long logits, rank, labels, ids, hist;
  int n, h, w, H, W, C, by_logit, threads;
  if (!PyArg_ParseTuple(args, "KiiiKKiiipKKi", &logits, &n, &h, &w, &rank, &labels, &H, &W, &C, &by_logit, &ids,
                        &hist, &threads))
    return nullptr;
  Py_BEGIN_ALLOW_THREADS;
  aggregate_impl(ptr<const float>(logits), n, h, w, ptr<const i32>(rank), ptr<const u8>(labels), H, W, C,
                 by_logit != 0, ptr<i32>(ids), ptr<i64>(hist), threads);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_decide(PyObject*, PyObject* args) {
  unsigned long long hist, classes;
  int n, C;
  if (!PyArg_ParseTuple(args, "KiiK", &hist, &n, &C, &classes)) return nullptr;
  const i64* hp = ptr<const i64>(hist);
  u8* out = ptr<u8>(classes);
  for (i32 k = 0; k < n; ++k) out[k] = svs::argmax_class(hp + (i64)k * C, C);
  Py_RETURN_NONE;
}

PyObject* py_paint(PyObject*, PyObject* args) {
  unsigned long long ids, classes, labels, out;
  long long n;
  int threads;
  if (!PyArg_ParseTuple(args, "KKKLKi", &ids, &classes, &labels, &n, &out, &threads)) return nullptr;
  const i32* ip = ptr<const i32>(ids);
  const u8 *cp = ptr<const u8>(classes), *lp = ptr<const u8>(labels);
  u8* op = ptr<u8>(out);
  Py_BEGIN_ALLOW_THREADS;
  parallel_chunks(n, threads, [&](i64 b, i64 e, int) {
    for (i64 i = b; i < e; ++i) op[i] = svs::paint_pixel(ip[i], cp, lp[i]);
  });
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_amg_stats(PyObject*, PyObject* args) {
  unsigned long long logits, stability, area, boxes;
  int b, h, w, H, W, threads;
  float thr, offset;
  if (!PyArg_ParseTuple(args, "KiiiffiiKKKi", &logits, &b, &h, &w, &thr, &offset, &H, &W, &stability, &area, &boxes,
                        &threads))
    return nullptr;
  const float* lp = ptr<const float>(logits);
  float* sp = ptr<float>(stability);
  i64* ap = ptr<i64>(area);
  i32* bp = ptr<i32>(boxes);
  Py_BEGIN_ALLOW_THREADS;
  parallel_chunks(b, threads, [&](i64 first, i64 last, int) {
    for (i64 k = first; k < last; ++k) {
      svs::AmgCounts c = {0, 0, 0, w, h, -1, -1};
      const float* m = lp + k * h * w;
      for (i32 y = 0; y < h; ++y)
        for (i32 x = 0; x < w; ++x) svs::amg_accumulate(&c, m[(i64)y * w + x], y, x, thr, offset);
      sp[k] = (float)c.inter / (float)c.uni;
      ap[k] = c.area;
      svs::amg_box(&c, h, w, H, W, bp + 4 * k);
    }
  });
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"frame_counts", py_frame_counts, METH_VARARGS,
     "frame_counts(g, p, H, W, C, k, pad_border, void_drop, conf, bconf, threads): += a frame's IoU "
     "confusion (C*C) and band co-occurrence ((C+1)^2) counts"},
    {"confusion", py_confusion, METH_VARARGS, "confusion(g, p, n, C, hist, threads): += C*C confusion counts"},
    {"band", py_band, METH_VARARGS, "band(lab, H, W, k, pad_border, out, threads): uint8 band map"},
    {"vc_step", py_vc_step, METH_VARARGS,
     "vc_step(g, p, prev_g, prev_p, run_g, run_p, n, first, cap, ns, num_ns, counts, threads): advance "
     "the VC run lengths one frame; counts[2k] += |both >= ns[k]|, counts[2k+1] += |gt >= ns[k]|"},
    {"aggregate", py_aggregate, METH_VARARGS,
     "aggregate(logits, n, h, w, rank, labels, H, W, C, by_logit, ids, hist, threads): per-pixel masklet ids "
     "at H x W from (n, h, w) logits (bilinear fused) and += each masklet's votes"},
    {"decide", py_decide, METH_VARARGS, "decide(hist, n, C, classes): majority class per masklet, ties lowest"},
    {"paint", py_paint, METH_VARARGS, "paint(ids, classes, labels, n, out, threads): class[id] or the label"},
    {"amg_stats", py_amg_stats, METH_VARARGS,
     "amg_stats(logits, B, h, w, thr, offset, H, W, stability, area, boxes, threads): AMG filter statistics"},
    {"openmp", py_openmp, METH_NOARGS, "whether this build uses OpenMP"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_host", "sam2vss host kernels (see engine/host_ops.cpp)", -1,
                      methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__host(void) { return PyModule_Create(&module); }
