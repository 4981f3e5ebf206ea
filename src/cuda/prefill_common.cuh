// Shared by the prefill kernels: which keys a block of query rows visits
// (the staircase of lca-spec.md section 4 at tile granularity), the per-row
// visibility test, async copies and fragment packing.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda::detail {

// m(n) of section 2 (0 for the full policy, whose window is "infinite").
__device__ __forceinline__ int64_t groups_seen(int64_t n, int64_t w, int64_t g) { return n <= w ? 0 : (n - w) / g; }

// What query t sees (lca-spec.md section 4, mtla-spec.md section 3): condensed
// rows [0, condensed(t)) and raw rows [raw_lo(t), t]. LCA: m(t+1) and g m(t+1)
// (the full policy: 0 and 0); MTLA (s > 0): floor(t/s) complete rows and its
// own running row, the raw rows being one running row per position.
struct Visibility {
  int64_t w, g, s;
  __device__ int64_t condensed(int64_t t) const { return s > 0 ? t / s : groups_seen(t + 1, w, g); }
  __device__ int64_t raw_lo(int64_t t) const { return s > 0 ? t : g * groups_seen(t + 1, w, g); }
};
__host__ __device__ inline Visibility visibility_of(const PrefillArgs& a) { return {a.params.window, a.params.group, a.mtla_down_rate}; }

// The keys a block of query positions [t_lo, t_hi] visits, in tiles of BN:
// representative tiles [0, m_hi) first, then raw tiles from raw_lo (rounded
// down to BN so that inner tiles need no mask) to t_hi. A tile that no row
// of the block sees is never visited.
template <int BN>
struct TileKeys {
  int64_t t_lo, t_hi, m_lo, m_hi, raw_lo_max, raw_base;
  int rep_tiles, tiles;

  __device__ TileKeys(int64_t lo, int64_t hi, const Visibility& v) : t_lo(lo), t_hi(hi) {
    m_lo = v.condensed(t_lo);
    m_hi = v.condensed(t_hi);
    const int64_t raw_lo = v.raw_lo(t_lo);
    raw_lo_max = v.raw_lo(t_hi);
    raw_base = raw_lo - raw_lo % BN;
    rep_tiles = static_cast<int>((m_hi + BN - 1) / BN);
    tiles = rep_tiles + static_cast<int>((t_hi - raw_base) / BN + 1);
  }
  __device__ bool is_rep(int i) const { return i < rep_tiles; }
  // First key of tile i: a representative index or a raw position.
  __device__ int64_t base(int i) const { return is_rep(i) ? int64_t(i) * BN : raw_base + int64_t(i - rep_tiles) * BN; }
  // Every row of the block sees every key of tile i: no mask needed.
  __device__ bool full(int i) const {
    const int64_t b = base(i);
    return is_rep(i) ? b + BN <= m_lo : (b >= raw_lo_max && b + BN - 1 <= t_lo);
  }
};

// What one query row sees: representatives [0, m), raw positions [lo, t].
struct RowView {
  int64_t t, m, lo;
  __device__ RowView(int64_t pos, const Visibility& v) : t(pos), m(v.condensed(pos)), lo(v.raw_lo(pos)) {}
};

// The keys a row sees in the tile of BN keys from `base` (a representative
// index or a raw position, as `rep` says), as offsets [first, last] into the
// tile: edge tiles mask with two 32-bit compares per score, the int64
// positions subtracted once per row.
template <int BN>
__device__ __forceinline__ void tile_key_limits(const RowView& r, bool rep, int64_t base, int& first, int& last) {
  const int64_t lo = rep ? 0 : r.lo - base, hi = (rep ? r.m - 1 : r.t) - base;
  first = static_cast<int>(max(lo, int64_t(-1)));
  last = static_cast<int>(min(hi, int64_t(BN)));
}

// 2^x in one MUFU.EX2 (denormal results flush to 0, which a probability
// beside the row's maximum can afford; exp2f adds range checks around it).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// One online-softmax step for a thread's two rows (r and r + 8 of an m16
// fragment): reduce the tile maxima over the 4 threads sharing a row, raise the
// running maxima, and return the shift to subtract before exp2 (`safe`: 0 for a
// row that has seen no key yet, so exp2 gives 0 rather than NaN) and the
// factor by which the running sums (rescaled here) and outputs must shrink.
__device__ __forceinline__ void online_softmax_step(float (&tile_max)[2], float (&row_max)[2], float (&row_sum)[2],
                                                    float (&safe)[2], float (&corr)[2]) {
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    tile_max[ri] = fmaxf(tile_max[ri], __shfl_xor_sync(0xffffffffu, tile_max[ri], 1));
    tile_max[ri] = fmaxf(tile_max[ri], __shfl_xor_sync(0xffffffffu, tile_max[ri], 2));
    const float new_max = fmaxf(row_max[ri], tile_max[ri]);
    safe[ri] = new_max == -INFINITY ? 0.f : new_max;
    corr[ri] = exp2f(row_max[ri] - safe[ri]);
    row_max[ri] = new_max;
    row_sum[ri] *= corr[ri];
  }
}

// Sum of a row's partial sums over the 4 threads that hold it.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// 16-byte async copy; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Launchers of the two kernel generations (prefill_sm80.cu, prefill_sm90.cu).
bool prefill_sm80_supports(int64_t d_qk, int64_t d_v);
void prefill_sm80(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream);
bool prefill_sm90_supports(int64_t d_qk, int64_t d_v);
void prefill_sm90(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream);

}  // namespace lca::cuda::detail
