// Nearest-neighbour kernels on the CPU: kNN, three_nn and Chamfer-L2 (forward + backward).
//
// The reference cloud is copied to SoA buffers (B,3,N). Work is split over batch x queries with
// detail::parallel_dynamic (respects torch.get_num_threads). For every query a distance row is
// computed in one vectorised loop, then
//   k == 1: a vectorised min reduction + chunked first-index scan (ties -> lowest index);
//   k  > 1: a vectorised threshold search (group minima + counting) that leaves ~1.25k
//           candidates, which are compacted in index order and placed by rank (see select_k).
// Both give exactly the first k entries of a stable ascending sort of the row, i.e. the reference.
// Large clouds with small k (use_grid) first bin each reference cloud into a uniform grid and run
// the same selection on the points of a few cells only (see RefGrid); same results.
// Distances are (dx*dx + dy*dy) + dz*dz without FMA contraction, bit-identical to the reference.
#pragma GCC optimize("fp-contract=off")

#include "cpu/cpu_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif
#include <limits>
#include <vector>

namespace clora3d {
namespace {

constexpr int64_t kChunk = 32;

// buf[j] = |q - r_j|^2 ; returns min_j buf[j]
template <typename T>
CLORA3D_INLINE T distance_row(T qx, T qy, T qz, const T* rx, const T* ry, const T* rz, int64_t n, T* buf) {
  T mn = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : mn)
  for (int64_t j = 0; j < n; ++j) {
    const T dx = rx[j] - qx, dy = ry[j] - qy, dz = rz[j] - qz;
    const T d = (dx * dx + dy * dy) + dz * dz;
    buf[j] = d;
    mn = d < mn ? d : mn;
  }
  return mn;
}

template <typename T>
CLORA3D_INLINE int64_t first_equal(const T* d, int64_t n, T v) {
  int64_t j = 0;
  for (; j + kChunk <= n; j += kChunk) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t t = 0; t < kChunk; ++t) hit |= (d[j + t] == v);
    if (hit) break;
  }
  for (; j < n; ++j)
    if (d[j] == v) return j;
  return 0;
}

// Groups used for the first threshold of select_k: at least k, a multiple of 16.
inline int64_t group_count(int64_t k) { return std::max<int64_t>(16, (k + 15) / 16 * 16); }

// Number of elements of d[0..n) that are <= t (vectorised).
template <typename T>
CLORA3D_INLINE int64_t count_le(const T* d, int64_t n, T t) {
  // 32-bit lane counters (twice the lanes of int64), summed per block so they cannot overflow
  int64_t total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += (int64_t(1) << 30)) {
    const int64_t j1 = std::min<int64_t>(n, j0 + (int64_t(1) << 30));
    int32_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t j = j0; j < j1; ++j) c += (d[j] <= t) ? 1 : 0;
    total += c;
  }
  return total;
}

inline int ctz32(uint32_t x) {
#if defined(_MSC_VER) && !defined(__clang__)
  unsigned long r;
  _BitScanForward(&r, x);
  return static_cast<int>(r);
#else
  return __builtin_ctz(x);
#endif
}

// Copies the values <= t of d[0..n) and their indices, in index order, to (cd, ci); returns the
// count. 32-wide chunks build a bit mask (vectorised compare), then only the set bits are visited.
template <typename T>
CLORA3D_INLINE int64_t compact_le(const T* d, int64_t n, T t, T* cd, int64_t* ci) {
  int64_t w = 0, j = 0;
  for (; j + 32 <= n; j += 32) {
    uint32_t mask = 0;
#pragma omp simd reduction(| : mask)
    for (int u = 0; u < 32; ++u) mask |= static_cast<uint32_t>(d[j + u] <= t) << u;
    while (mask) {
      const int u = ctz32(mask);
      cd[w] = d[j + u];
      ci[w] = j + u;
      ++w;
      mask &= mask - 1;
    }
  }
  for (; j < n; ++j) {
    cd[w] = d[j];
    ci[w] = j;
    w += (d[j] <= t) ? 1 : 0;
  }
  return w;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(CLORA3D_NO_MULTIVERSION)
#define CLORA3D_HAVE_AVX512_COMPACT 1
// AVX-512 version of compact_le for float rows, branch-free: compare -> mask -> compress values and
// indices into registers -> store 16 lanes at the write position -> advance by popcount.
// cd and ci need 16 slots of slack past n.
__attribute__((target("avx512f,popcnt"))) int64_t compact_le_avx512(const float* d, int64_t n, float t, float* cd,
                                                                    int64_t* ci) {
  const __m512 tv = _mm512_set1_ps(t);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t w = 0, j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_loadu_ps(d + j);
    const __mmask16 m = _mm512_cmp_ps_mask(v, tv, _CMP_LE_OQ);
    _mm512_storeu_ps(cd + w, _mm512_maskz_compress_ps(m, v));
    const __m512i ix = _mm512_maskz_compress_epi32(m, iv);
    _mm512_storeu_si512(reinterpret_cast<void*>(ci + w), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(ix)));
    _mm512_storeu_si512(reinterpret_cast<void*>(ci + w + 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(ix, 1)));
    w += __builtin_popcount(static_cast<unsigned>(m));
    iv = _mm512_add_epi32(iv, step);
  }
  for (; j < n; ++j) {
    cd[w] = d[j];
    ci[w] = j;
    w += (d[j] <= t) ? 1 : 0;
  }
  return w;
}

inline bool cpu_has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

template <typename T>
CLORA3D_INLINE int64_t compact_candidates(const T* d, int64_t n, T t, T* cd, int64_t* ci) {
#ifdef CLORA3D_HAVE_AVX512_COMPACT
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx512f()) return compact_le_avx512(d, n, t, cd, ci);
  }
#endif
  return compact_le(d, n, t, cd, ci);
}

// Writes the k smallest of the c candidates (cd, ci) (given in ascending index order) to (od, oi)
// in ascending (dist, idx) order: the rank of candidate i is the number of candidates before it in
// that order, accumulated for all i at once with a vectorised, branch-free loop (O(c^2), c ~ k).
// ByIndex: candidates are not in index order (grid path); equal distances are ordered by ci.
template <typename T, bool ByIndex = false>
CLORA3D_INLINE void rank_place(const T* cd, const int64_t* ci, int64_t c, int64_t k, T* od, int64_t* oi) {
  int32_t rank[256];  // c <= 256 (see select_k)
  const int32_t cc = static_cast<int32_t>(c);
  for (int32_t i = 0; i < cc; ++i) rank[i] = 0;
  for (int32_t j = 0; j < cc; ++j) {
    const T dj = cd[j];
    if constexpr (ByIndex) {
      const int64_t ij = ci[j];
#pragma omp simd
      for (int32_t i = 0; i < cc; ++i) rank[i] += ((dj < cd[i]) | ((dj == cd[i]) & (ij < ci[i]))) ? 1 : 0;
    } else {
#pragma omp simd
      for (int32_t i = 0; i < cc; ++i) rank[i] += ((dj < cd[i]) | ((dj == cd[i]) & (j < i))) ? 1 : 0;
    }
  }
  for (int32_t i = 0; i < cc; ++i) {
    if (rank[i] < k) {
      od[rank[i]] = cd[i];
      oi[rank[i]] = ci[i];
    }
  }
}

// k smallest of buf[0..n) (k <= n) in ascending (dist, idx) order -- exactly the first k entries
// of a stable ascending sort of the row.
//  1. t = an upper bound of the k-th smallest value: the largest of G >= k disjoint group minima
//     (vectorised over strided groups), then tightened by bisection with vectorised counts until
//     at most ~2k values are <= t;
//  2. the values <= t (a superset of the answer, ties included) are compacted in index order and
//     stable-sorted; the first k are the result.
// No data-dependent branches per element, unlike a heap fed in index order.
// remap (grid path): buf[j] belongs to reference point remap[j]; the output indices are remapped and
// ties are broken by the remapped index, so the result is the same as for the full row.
template <typename T>
CLORA3D_INLINE void select_k(const T* buf, int64_t n, int64_t k, T lo, T* gm, T* cd, int64_t* ci, T* od, int64_t* oi,
                             const int64_t* remap = nullptr) {
  const int64_t G = group_count(k);  // G >= k strided groups, a multiple of 16 (vector width)
  T t;
  int64_t c;
  if (n >= 4 * G) {
    for (int64_t g = 0; g < G; ++g) gm[g] = std::numeric_limits<T>::infinity();
    for (int64_t j0 = 0; j0 + G <= n; j0 += G) {
#pragma omp simd
      for (int64_t g = 0; g < G; ++g) gm[g] = buf[j0 + g] < gm[g] ? buf[j0 + g] : gm[g];
    }
    // the largest of G >= k disjoint group minima bounds the k-th smallest value from above
    t = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : t)
    for (int64_t g = 0; g < G; ++g) t = gm[g] > t ? gm[g] : t;
    c = count_le(buf, n, t);
  } else {
    t = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : t)
    for (int64_t j = 0; j < n; ++j) t = buf[j] > t ? buf[j] : t;
    c = n;
  }
  const int64_t cap = k + std::max<int64_t>(8, k / 4);
  // Bracket [lo, t] with count(t) >= k; alternate regula falsi on the counts (converges in a step
  // or two on smooth clouds) with bisection (guarantees progress).
  int64_t c_lo = 0;
  const double target = static_cast<double>(k) + 0.5 * static_cast<double>(cap - k);
  for (int it = 0; it < 64 && c > cap; ++it) {
    T mid;
    if ((it & 1) == 0 && c > c_lo) {
      const double frac = (target - static_cast<double>(c_lo)) / static_cast<double>(c - c_lo);
      mid = lo + static_cast<T>(static_cast<double>(t - lo) * frac);
    } else {
      mid = lo + (t - lo) / T(2);
    }
    if (!(mid > lo && mid < t)) mid = lo + (t - lo) / T(2);
    if (!(mid > lo && mid < t)) break;  // float resolution reached (many equal values)
    const int64_t cm = count_le(buf, n, mid);
    if (cm >= k) {
      t = mid;
      c = cm;
    } else {
      lo = mid;
      c_lo = cm;
    }
  }
  const int64_t w = compact_candidates(buf, n, t, cd, ci);
  if (remap != nullptr) {
    for (int64_t a = 0; a < w; ++a) ci[a] = remap[ci[a]];
    if (w <= 256) {
      rank_place<T, true>(cd, ci, w, k, od, oi);
      return;
    }
  } else if (w <= 256) {
    rank_place(cd, ci, w, k, od, oi);
    return;
  }
  // degenerate rows (many equal distances): O(w log w) sort by (distance, index)
  std::vector<int64_t> order(static_cast<size_t>(w));
  for (int64_t a = 0; a < w; ++a) order[a] = a;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return cd[x] < cd[y] || (cd[x] == cd[y] && ci[x] < ci[y]); });
  for (int64_t r = 0; r < k; ++r) {
    od[r] = cd[order[r]];
    oi[r] = ci[order[r]];
  }
}

// Queries q[m0..m1) (AoS, xyz) against one SoA reference cloud.
template <typename T>
CLORA3D_INLINE void knn_rows_impl(const T* q, int64_t m0, int64_t m1, const T* rx, const T* ry, const T* rz, int64_t n,
                                  int64_t k, T* buf, T* hd, T* cd, int64_t* ci, T* od, int64_t* oi) {
  for (int64_t m = m0; m < m1; ++m) {
    const T mn = distance_row(q[3 * m], q[3 * m + 1], q[3 * m + 2], rx, ry, rz, n, buf);
    if (k == 1) {
      od[m] = mn;
      oi[m] = first_equal(buf, n, mn);
    } else {
      select_k(buf, n, k, mn, hd, cd, ci, od + m * k, oi + m * k);
    }
  }
}

CLORA3D_MULTIVERSION
void knn_rows_f32(const float* q, int64_t m0, int64_t m1, const float* rx, const float* ry, const float* rz, int64_t n,
                  int64_t k, float* buf, float* hd, float* cd, int64_t* ci, float* od, int64_t* oi) {
  knn_rows_impl<float>(q, m0, m1, rx, ry, rz, n, k, buf, hd, cd, ci, od, oi);
}

CLORA3D_MULTIVERSION
void knn_rows_f64(const double* q, int64_t m0, int64_t m1, const double* rx, const double* ry, const double* rz,
                  int64_t n, int64_t k, double* buf, double* hd, double* cd, int64_t* ci, double* od, int64_t* oi) {
  knn_rows_impl<double>(q, m0, m1, rx, ry, rz, n, k, buf, hd, cd, ci, od, oi);
}

inline void knn_rows(const float* q, int64_t m0, int64_t m1, const float* rx, const float* ry, const float* rz,
                     int64_t n, int64_t k, float* buf, float* hd, float* cd, int64_t* ci, float* od, int64_t* oi) {
  knn_rows_f32(q, m0, m1, rx, ry, rz, n, k, buf, hd, cd, ci, od, oi);
}
inline void knn_rows(const double* q, int64_t m0, int64_t m1, const double* rx, const double* ry, const double* rz,
                     int64_t n, int64_t k, double* buf, double* hd, double* cd, int64_t* ci, double* od, int64_t* oi) {
  knn_rows_f64(q, m0, m1, rx, ry, rz, n, k, buf, hd, cd, ci, od, oi);
}

// ---------------------------------------------------------------------------------------------
// Grid path (large N, small k): a uniform grid of cubic cells over one reference cloud, points
// counting-sorted by cell (x fastest, so a row of cells is one contiguous span; inside a cell in
// index order). Per query:
//   1. grow a cube of cells around the query's cell until it holds >= k points and run the exact
//      selection (select_k) on them with their original indices (ties broken by index);
//      D = their k-th distance bounds the true k-th distance from above;
//   2. every point with distance <= D (ties included) lies in the cells of the axis box
//      q +- sqrt(D) (relative + absolute safety margin; cell_of is monotone). If those cells are
//      inside the cube, step 1 is already the exact answer; otherwise the box's points are gathered
//      and selected again -- the same answer as the full row either way.
// Too many candidates (> N/2: dense clusters, huge ranges) -> that query uses the brute-force row;
// degenerate clouds (zero or relatively tiny extent) do not get a grid at all.
template <typename T>
struct RefGrid {
  bool ok = false;
  int64_t gx = 1, gy = 1, gz = 1;
  double ox = 0, oy = 0, oz = 0, h = 1, ih = 1;
  std::vector<int32_t> start;  // gx*gy*gz + 1
  std::vector<T> x, y, z;      // points in cell order
  std::vector<int64_t> id;     // original index
};

// monotone in v (clamped, truncated; same function for points and query boxes)
CLORA3D_INLINE int64_t cell_of(double v, double o, double ih, int64_t g) {
  double c = (v - o) * ih;
  c = c > 0.0 ? c : 0.0;
  const double top = static_cast<double>(g - 1);
  c = c < top ? c : top;
  return static_cast<int64_t>(c);
}

// ~5 points per cell for a volume-filling cloud (fewer occupied cells, more points each, for
// surface scans); measured best of 2..16 on jittered spheres at N = 2048 and 8192, k = 32.
constexpr double kGridPointsPerCell = 5.0;

template <typename T>
void build_grid(const T* rx, const T* ry, const T* rz, int64_t n, RefGrid<T>& g) {
  g.ok = false;
  double mn[3], mx[3];
  const T* p[3] = {rx, ry, rz};
  for (int a = 0; a < 3; ++a) {
    T lo = p[a][0], hi = p[a][0];
    const T* pa = p[a];
#pragma omp simd reduction(min : lo) reduction(max : hi)
    for (int64_t j = 1; j < n; ++j) {
      lo = pa[j] < lo ? pa[j] : lo;
      hi = pa[j] > hi ? pa[j] : hi;
    }
    mn[a] = static_cast<double>(lo);
    mx[a] = static_cast<double>(hi);
  }
  double e[3], emax = 0, amax = 0;
  for (int a = 0; a < 3; ++a) {
    e[a] = mx[a] - mn[a];
    emax = std::max(emax, e[a]);
    amax = std::max({amax, std::fabs(mn[a]), std::fabs(mx[a])});
  }
  if (!(emax > 1e-20) || !(emax > 1e-9 * amax) || !std::isfinite(emax)) return;  // degenerate: brute force
  const double cells = std::max(1.0, static_cast<double>(n) / kGridPointsPerCell);
  double vol = 1.0;
  for (int a = 0; a < 3; ++a) vol *= std::max(e[a], emax / 64.0);
  double h = std::cbrt(vol / cells);
  const double max_cells = 4.0 * static_cast<double>(n) + 64.0;
  int64_t G[3];
  for (int it = 0; it < 64; ++it) {
    double tot = 1.0;
    for (int a = 0; a < 3; ++a) {
      G[a] = static_cast<int64_t>(std::min(1024.0, std::max(1.0, std::ceil(e[a] / h))));
      tot *= static_cast<double>(G[a]);
    }
    if (tot <= max_cells) break;
    h *= 1.25;
  }
  g.gx = G[0];
  g.gy = G[1];
  g.gz = G[2];
  g.ox = mn[0];
  g.oy = mn[1];
  g.oz = mn[2];
  g.h = h;
  g.ih = 1.0 / h;
  const int64_t nc = g.gx * g.gy * g.gz;
  g.start.assign(static_cast<size_t>(nc + 1), 0);
  std::vector<int32_t> cell(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = (cell_of(static_cast<double>(rz[j]), g.oz, g.ih, g.gz) * g.gy +
                       cell_of(static_cast<double>(ry[j]), g.oy, g.ih, g.gy)) *
                          g.gx +
                      cell_of(static_cast<double>(rx[j]), g.ox, g.ih, g.gx);
    cell[j] = static_cast<int32_t>(c);
    ++g.start[c + 1];
  }
  for (int64_t c = 0; c < nc; ++c) g.start[c + 1] += g.start[c];
  std::vector<int32_t> pos(g.start.begin(), g.start.end() - 1);
  g.x.resize(n);
  g.y.resize(n);
  g.z.resize(n);
  g.id.resize(n);
  for (int64_t j = 0; j < n; ++j) {  // stable: index order inside a cell
    const int32_t w = pos[cell[j]]++;
    g.x[w] = rx[j];
    g.y[w] = ry[j];
    g.z[w] = rz[j];
    g.id[w] = j;
  }
  g.ok = true;
}

struct CellBox {
  int64_t x0, x1, y0, y1, z0, z1;
};

template <typename T>
CLORA3D_INLINE int64_t box_count(const RefGrid<T>& g, const CellBox& b) {
  int64_t c = 0;
  for (int64_t cz = b.z0; cz <= b.z1; ++cz)
    for (int64_t cy = b.y0; cy <= b.y1; ++cy) {
      const int64_t row = (cz * g.gy + cy) * g.gx;
      c += g.start[row + b.x1 + 1] - g.start[row + b.x0];
    }
  return c;
}

// distances of the box's points to q -> (buf, ids); returns the count, *mn = their minimum
template <typename T>
CLORA3D_INLINE int64_t box_gather(const RefGrid<T>& g, const CellBox& b, T qx, T qy, T qz, T* buf, int64_t* ids,
                                  T* mn) {
  int64_t w = 0;
  T m = std::numeric_limits<T>::infinity();
  for (int64_t cz = b.z0; cz <= b.z1; ++cz)
    for (int64_t cy = b.y0; cy <= b.y1; ++cy) {
      const int64_t row = (cz * g.gy + cy) * g.gx;
      const int64_t s0 = g.start[row + b.x0], s1 = g.start[row + b.x1 + 1];
      if (s1 <= s0) continue;
      const T r = distance_row(qx, qy, qz, g.x.data() + s0, g.y.data() + s0, g.z.data() + s0, s1 - s0, buf + w);
      if (ids != nullptr) std::copy(g.id.data() + s0, g.id.data() + s1, ids + w);
      m = r < m ? r : m;
      w += s1 - s0;
    }
  *mn = m;
  return w;
}

// Queries q[m0..m1) through the grid; rows that would gather > n/2 candidates use the full row.
template <typename T>
CLORA3D_INLINE void knn_grid_rows_impl(const T* q, int64_t m0, int64_t m1, const RefGrid<T>& g, const T* rx,
                                       const T* ry, const T* rz, int64_t n, int64_t k, T* buf, int64_t* ids, T* hd,
                                       T* cd, int64_t* ci, T* od, int64_t* oi) {
  const int64_t cap = n / 2;
  for (int64_t m = m0; m < m1; ++m) {
    const T qx = q[3 * m], qy = q[3 * m + 1], qz = q[3 * m + 2];
    const double dx = static_cast<double>(qx), dy = static_cast<double>(qy), dz = static_cast<double>(qz);
    const int64_t cx = cell_of(dx, g.ox, g.ih, g.gx), cy = cell_of(dy, g.oy, g.ih, g.gy),
                  cz = cell_of(dz, g.oz, g.ih, g.gz);
    bool brute = false;
    CellBox b{};
    int64_t cnt = 0;
    for (int64_t r = 0;; ++r) {
      b = CellBox{std::max<int64_t>(0, cx - r), std::min<int64_t>(g.gx - 1, cx + r),
                  std::max<int64_t>(0, cy - r), std::min<int64_t>(g.gy - 1, cy + r),
                  std::max<int64_t>(0, cz - r), std::min<int64_t>(g.gz - 1, cz + r)};
      cnt = box_count(g, b);
      if (cnt >= k) break;
      if (b.x0 == 0 && b.y0 == 0 && b.z0 == 0 && b.x1 == g.gx - 1 && b.y1 == g.gy - 1 && b.z1 == g.gz - 1) break;
    }
    if (cnt > cap || cnt < k) brute = true;
    if (!brute) {
      // exact k smallest of the cube's points (original indices, ties by index)
      T mn;
      const int64_t w = box_gather(g, b, qx, qy, qz, buf, ids, &mn);
      T* rd = od + m * k;
      int64_t* ri = oi + m * k;
      select_k(buf, w, k, mn, hd, cd, ci, rd, ri, ids);
      // every point with distance <= D = their k-th distance lies in the cells of the box q +- sqrt(D)
      // (relative + absolute margins cover rounding; cell_of is monotone). Box inside the cube ->
      // the answer is exact; otherwise gather the box (a superset of the answer) and select again.
      const double D = static_cast<double>(rd[k - 1]);
      if (!std::isfinite(D)) {
        brute = true;
      } else {
        const double rr = std::sqrt(D) * (1.0 + 1e-5) + 1e-6 * g.h + 1e-30;
        CellBox bb{};
        auto lo_hi = [&](double v, double o, int64_t G, int64_t& c0, int64_t& c1) {
          const double mgn = rr + 1e-12 * (std::fabs(v) + std::fabs(o) + 1.0);
          c0 = cell_of(v - mgn, o, g.ih, G);
          c1 = cell_of(v + mgn, o, g.ih, G);
        };
        lo_hi(dx, g.ox, g.gx, bb.x0, bb.x1);
        lo_hi(dy, g.oy, g.gy, bb.y0, bb.y1);
        lo_hi(dz, g.oz, g.gz, bb.z0, bb.z1);
        const bool inside =
            bb.x0 >= b.x0 && bb.x1 <= b.x1 && bb.y0 >= b.y0 && bb.y1 <= b.y1 && bb.z0 >= b.z0 && bb.z1 <= b.z1;
        if (!inside) {
          cnt = box_count(g, bb);
          if (cnt > cap || cnt < k) {
            brute = true;
          } else {
            const int64_t w2 = box_gather(g, bb, qx, qy, qz, buf, ids, &mn);
            select_k(buf, w2, k, mn, hd, cd, ci, rd, ri, ids);
          }
        }
      }
    }
    if (brute) {
      const T mn = distance_row(qx, qy, qz, rx, ry, rz, n, buf);
      select_k(buf, n, k, mn, hd, cd, ci, od + m * k, oi + m * k);
    }
  }
}

CLORA3D_MULTIVERSION
void knn_grid_rows_f32(const float* q, int64_t m0, int64_t m1, const RefGrid<float>& g, const float* rx,
                       const float* ry, const float* rz, int64_t n, int64_t k, float* buf, int64_t* ids, float* hd,
                       float* cd, int64_t* ci, float* od, int64_t* oi) {
  knn_grid_rows_impl<float>(q, m0, m1, g, rx, ry, rz, n, k, buf, ids, hd, cd, ci, od, oi);
}

CLORA3D_MULTIVERSION
void knn_grid_rows_f64(const double* q, int64_t m0, int64_t m1, const RefGrid<double>& g, const double* rx,
                       const double* ry, const double* rz, int64_t n, int64_t k, double* buf, int64_t* ids, double* hd,
                       double* cd, int64_t* ci, double* od, int64_t* oi) {
  knn_grid_rows_impl<double>(q, m0, m1, g, rx, ry, rz, n, k, buf, ids, hd, cd, ci, od, oi);
}

inline void knn_grid_rows(const float* q, int64_t m0, int64_t m1, const RefGrid<float>& g, const float* rx,
                          const float* ry, const float* rz, int64_t n, int64_t k, float* buf, int64_t* ids, float* hd,
                          float* cd, int64_t* ci, float* od, int64_t* oi) {
  knn_grid_rows_f32(q, m0, m1, g, rx, ry, rz, n, k, buf, ids, hd, cd, ci, od, oi);
}
inline void knn_grid_rows(const double* q, int64_t m0, int64_t m1, const RefGrid<double>& g, const double* rx,
                          const double* ry, const double* rz, int64_t n, int64_t k, double* buf, int64_t* ids,
                          double* hd, double* cd, int64_t* ci, double* od, int64_t* oi) {
  knn_grid_rows_f64(q, m0, m1, g, rx, ry, rz, n, k, buf, ids, hd, cd, ci, od, oi);
}

// The grid pays for large clouds and k small relative to N (and enough queries per cloud to
// amortise building it).
inline bool use_grid(int64_t N, int64_t M, int64_t k) {
  return k >= 2 && N >= 1536 && k * 16 <= N && M >= 16 && N < (int64_t(1) << 30);
}

// dist (B,M,k), idx (B,M,k) for contiguous query (B,M,3) and SoA ref (B,3,N).
template <typename T>
void knn_batched(const at::Tensor& query, const at::Tensor& ref_soa, int64_t k, at::Tensor& dist, at::Tensor& idx) {
  const int64_t B = query.size(0), M = query.size(1), N = ref_soa.size(2);
  const T* q = query.data_ptr<T>();
  const T* r = ref_soa.data_ptr<T>();
  T* od = dist.data_ptr<T>();
  int64_t* oi = idx.data_ptr<int64_t>();
  // blocks of ~16k distance evaluations: cheap to claim, fine enough to balance two busy cores
  if (use_grid(N, M, k)) {
    std::vector<RefGrid<T>> grids(static_cast<size_t>(B));
    detail::parallel_dynamic(
        B, 1,
        [&]() {
          return [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
              const T* rb = r + b * 3 * N;
              build_grid(rb, rb + N, rb + 2 * N, N, grids[b]);
            }
          };
        },
        8.0 * static_cast<double>(N));
    const int64_t gblock = std::max<int64_t>(1, 16384 / std::max<int64_t>(16 * k, 1));
    detail::parallel_dynamic(
        B * M, gblock,
        [&]() {
          return [&, buf = std::vector<T>(static_cast<size_t>(N)), ids = std::vector<int64_t>(static_cast<size_t>(N)),
                  gm = std::vector<T>(static_cast<size_t>(group_count(k))),
                  cd = std::vector<T>(static_cast<size_t>(N + 16)),
                  ci = std::vector<int64_t>(static_cast<size_t>(N + 16))](int64_t t0, int64_t t1) mutable {
            int64_t t = t0;
            while (t < t1) {
              const int64_t b = t / M, m0 = t % M;
              const int64_t m1 = std::min<int64_t>(M, m0 + (t1 - t));
              const T* rb = r + b * 3 * N;
              if (grids[b].ok) {
                knn_grid_rows(q + b * M * 3, m0, m1, grids[b], rb, rb + N, rb + 2 * N, N, k, buf.data(), ids.data(),
                              gm.data(), cd.data(), ci.data(), od + b * M * k, oi + b * M * k);
              } else {
                knn_rows(q + b * M * 3, m0, m1, rb, rb + N, rb + 2 * N, N, k, buf.data(), gm.data(), cd.data(),
                         ci.data(), od + b * M * k, oi + b * M * k);
              }
              t += m1 - m0;
            }
          };
        },
        64.0 * static_cast<double>(k));
    return;
  }
  const int64_t block = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
  detail::parallel_dynamic(
      B * M, block,
      [&]() {
        // cd / ci: 16 slots of slack for the vector compaction (see compact_le_avx512)
        return
            [&, buf = std::vector<T>(static_cast<size_t>(N)), gm = std::vector<T>(static_cast<size_t>(group_count(k))),
             cd = std::vector<T>(static_cast<size_t>(N + 16)),
             ci = std::vector<int64_t>(static_cast<size_t>(N + 16))](int64_t t0, int64_t t1) mutable {
              int64_t t = t0;
              while (t < t1) {
                const int64_t b = t / M, m0 = t % M;
                const int64_t m1 = std::min<int64_t>(M, m0 + (t1 - t));
                const T* rb = r + b * 3 * N;
                knn_rows(q + b * M * 3, m0, m1, rb, rb + N, rb + 2 * N, N, k, buf.data(), gm.data(), cd.data(),
                         ci.data(), od + b * M * k, oi + b * M * k);
                t += m1 - m0;
              }
            };
      },
      static_cast<double>(N) * (k == 1 ? 1.0 : 4.0));
}

std::tuple<at::Tensor, at::Tensor> knn_impl(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  const int64_t B = query.size(0), M = query.size(1);
  auto dist = at::empty({B, M, k}, query.options());
  auto idx = at::empty({B, M, k}, query.options().dtype(at::kLong));
  if (B == 0 || M == 0 || k == 0) return {dist, idx};
  const at::Tensor q = query.contiguous();
  const at::Tensor r = detail::to_soa(ref);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "knn_cpu", [&] { knn_batched<scalar_t>(q, r, k, dist, idx); });
  return {dist, idx};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  return knn_impl(query, ref, k);
}

std::tuple<at::Tensor, at::Tensor> three_nn_cpu(const at::Tensor& unknown, const at::Tensor& known) {
  return knn_impl(unknown, known, 3);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cpu(const at::Tensor& a,
                                                                               const at::Tensor& b) {
  auto ra = knn_impl(a, b, 1);
  auto rb = knn_impl(b, a, 1);
  return {std::get<0>(ra).squeeze(2), std::get<1>(ra).squeeze(2), std::get<0>(rb).squeeze(2),
          std::get<1>(rb).squeeze(2)};
}

std::tuple<at::Tensor, at::Tensor> chamfer_backward_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                                        const at::Tensor& idx_a_in, const at::Tensor& idx_b_in,
                                                        const at::Tensor& gda_in, const at::Tensor& gdb_in) {
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor ia = idx_a_in.contiguous(), ib = idx_b_in.contiguous();
  const at::Tensor gda = gda_in.contiguous(), gdb = gdb_in.contiguous();
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1);
  auto grad_a = at::empty_like(a);  // zeroed per cloud by its task (no torch parallel fill)
  auto grad_b = at::empty_like(b);
  if (B == 0) return {grad_a, grad_b};
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_backward_cpu", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const int64_t* pia = ia.data_ptr<int64_t>();
    const int64_t* pib = ib.data_ptr<int64_t>();
    const scalar_t* pga = gda.data_ptr<scalar_t>();
    const scalar_t* pgb = gdb.data_ptr<scalar_t>();
    scalar_t* ga = grad_a.data_ptr<scalar_t>();
    scalar_t* gb = grad_b.data_ptr<scalar_t>();
    // one cloud per task: the scatter into the other cloud stays race-free
    detail::parallel_dynamic(
        B, 1,
        [&]() {
          return [&](int64_t b0, int64_t b1) {
            for (int64_t bb = b0; bb < b1; ++bb) {
              const scalar_t* A = pa + bb * N * 3;
              const scalar_t* Bp = pb + bb * M * 3;
              scalar_t* GA = ga + bb * N * 3;
              scalar_t* GB = gb + bb * M * 3;
              std::fill(GA, GA + N * 3, scalar_t(0));
              std::fill(GB, GB + M * 3, scalar_t(0));
              for (int64_t i = 0; i < N; ++i) {
                const int64_t j = pia[bb * N + i];
                const scalar_t g = scalar_t(2) * pga[bb * N + i];
                for (int c = 0; c < 3; ++c) {
                  const scalar_t v = g * (A[3 * i + c] - Bp[3 * j + c]);
                  GA[3 * i + c] += v;
                  GB[3 * j + c] -= v;
                }
              }
              for (int64_t j = 0; j < M; ++j) {
                const int64_t i = pib[bb * M + j];
                const scalar_t g = scalar_t(2) * pgb[bb * M + j];
                for (int c = 0; c < 3; ++c) {
                  const scalar_t v = g * (Bp[3 * j + c] - A[3 * i + c]);
                  GB[3 * j + c] += v;
                  GA[3 * i + c] -= v;
                }
              }
            }
          };
        },
        4.0 * static_cast<double>(N + M));
  });
  return {grad_a, grad_b};
}

}  // namespace clora3d
