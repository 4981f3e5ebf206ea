// Device helpers of the decode kernels: what a step's sequence sees and where
// its rows live in the paged cache.
#pragma once

#include "common.cuh"
#include "decode.hpp"

namespace lca::cuda::detail {

// The rows query t of a sequence attends: m representatives, then the raw
// positions [g m, t]; E = m + t + 1 - g m rows in all (m = 0 for full
// attention). MTLA: the complete rows and t's own running row, t/s + 1 rows of
// the representative segment, no raw rows.
struct DecodeRows {
  int64_t m, first_raw, count;
  // The row of the list that this step's append kernel computes: MTLA's open
  // row, or the representative of a group that closes at t; -1 if none. (The
  // append also stores raw row t, the list's last, but the attention takes that
  // one from the step's input rows.)
  int64_t appended;
  __device__ DecodeRows(const PagedView& v, int64_t t) {
    const int64_t n = t + 1;
    if (v.mtla_s > 0) {
      m = t / v.mtla_s + 1;
      first_raw = n;
      appended = m - 1;
    } else {
      m = (v.full || n <= v.window) ? 0 : (n - v.window) / v.group;
      first_raw = v.group * m;
      appended = m > 0 && (n - v.window) % v.group == 0 ? m - 1 : -1;
    }
    count = m + n - first_raw;
  }
};

__device__ __forceinline__ int64_t table_row(const PagedView& v, int32_t seq) { return v.table_base + seq; }

// Positions and row indices fit in 32 bits (max_context < 2^30 is checked on
// the host): 32-bit division is a few instructions, 64-bit division a long
// emulated sequence, and these run once per row.

// Row r of the attended list [representatives ; raw rows] of table row tr.
template <class T>
__device__ __forceinline__ T* paged_row(const PagedView& v, int64_t tr, const DecodeRows& rows, int64_t r) {
  const int32_t B = static_cast<int32_t>(v.block_rows);
  int32_t block, offset;
  if (r < rows.m) {
    const int32_t i = static_cast<int32_t>(r);
    block = v.rep_table[tr * v.rep_stride + i / B];
    offset = i % B;
  } else {
    const int32_t pos = static_cast<int32_t>(rows.first_raw + (r - rows.m));
    block = v.raw_table[tr * v.raw_stride + pos / B];
    offset = pos % B;
  }
  return static_cast<T*>(v.pool) + (static_cast<int64_t>(block) * B + offset) * v.row_elems;
}

// The raw row of position pos, and the slot of representative j.
template <class T>
__device__ __forceinline__ T* raw_row(const PagedView& v, int64_t tr, int64_t pos) {
  const int32_t B = static_cast<int32_t>(v.block_rows), p = static_cast<int32_t>(pos);
  const int32_t block = v.raw_table[tr * v.raw_stride + p / B];
  return static_cast<T*>(v.pool) + (static_cast<int64_t>(block) * B + p % B) * v.row_elems;
}
template <class T>
__device__ __forceinline__ T* rep_row(const PagedView& v, int64_t tr, int64_t j) {
  const int32_t B = static_cast<int32_t>(v.block_rows), i = static_cast<int32_t>(j);
  const int32_t block = v.rep_table[tr * v.rep_stride + i / B];
  return static_cast<T*>(v.pool) + (static_cast<int64_t>(block) * B + i % B) * v.row_elems;
}

}  // namespace lca::cuda::detail
