// Condensing one group with one thread block (lca-spec.md sections 3 and 5):
// shared by the prefill condense kernels (rows in contiguous arrays) and the
// decode condense kernel (rows in the paged cache). Every thread of the block
// calls these; the caller has summed the summary queries of S_j into `query`
// (shared memory) and synchronised; `scores` is g floats and `anchor_slot` one
// int of shared memory. Warps score the g rows (lanes over the row, one warp
// reduction each), warp 0 takes softmax and argmax, then threads own output
// columns and pool over the group's rows with independent loads in flight.
// Rows are reached through a base pointer and a row stride.
// Fixed reduction order, no atomics: deterministic.
#pragma once

#include "common.cuh"
#include "lca/params.hpp"

namespace lca::cuda::detail {

// (cos, sin) of pos * inv_freq, inv_freq = theta^(-2c/d), in double for long
// positions (as the CPU reference).
__device__ __forceinline__ void rope_angle(int64_t pos, double inv_freq, float& cs, float& sn) {
  double s, co;
  sincos(static_cast<double>(pos) * inv_freq, &s, &co);
  cs = static_cast<float>(co);
  sn = static_cast<float>(s);
}

// 16-byte loads where rows allow them (dims multiples of 8, aligned rows),
// so a warp has several independent loads in flight; scalar loads otherwise.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = to_float(e[k]);
}

// One warp: query . row, where row[x] is a[x] for x < split and b[x - split] after.
template <class T>
__device__ float warp_dot(const float* query, const T* a, const T* b, int split, int n) {
  const int lane = threadIdx.x & 31;
  float acc = 0.f;
  if (n % 8 == 0 && split % 8 == 0 && aligned16(a) && aligned16(b)) {
#pragma unroll 4
    for (int x = lane * 8; x < n; x += 256) {
      float v[8];
      load8(x < split ? a + x : b + (x - split), v);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc += query[x + k] * v[k];
    }
  } else {
#pragma unroll 4
    for (int x = lane; x < n; x += 32) acc += query[x] * to_float(x < split ? a[x] : b[x - split]);
  }
  return warp_sum(acc);
}

// All threads: out[x] = sum_i weights[i] rows[i * stride + x] for x < n, fp32 sums in order of i.
template <class T>
__device__ void block_pool(const float* weights, int g, const T* rows, int64_t stride, int n, T* out) {
  if (n % 8 == 0 && stride % 8 == 0 && aligned16(rows) && aligned16(out)) {
    for (int x = threadIdx.x * 8; x < n; x += blockDim.x * 8) {
      float acc[8] = {};
#pragma unroll 8
      for (int i = 0; i < g; ++i) {
        float v[8];
        load8(rows + i * stride + x, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[k] += weights[i] * v[k];
      }
      uint4 u;
      T* e = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int k = 0; k < 8; ++k) e[k] = from_float<T>(acc[k]);
      *reinterpret_cast<uint4*>(out + x) = u;
    }
  } else {
    for (int x = threadIdx.x; x < n; x += blockDim.x) {
      float acc = 0.f;
#pragma unroll 8
      for (int i = 0; i < g; ++i) acc += weights[i] * to_float(rows[i * stride + x]);
      out[x] = from_float<T>(acc);
    }
  }
}

// Warp 0 turns scores into softmax weights and publishes the argmax (block-wide).
__device__ __forceinline__ int block_softmax_argmax(float* scores, int g, int* anchor_slot) {
  __syncthreads();
  if (threadIdx.x < 32) {
    const int a = warp_softmax_argmax(scores, g);
    if (threadIdx.x == 0) *anchor_slot = a;
  }
  __syncthreads();
  return *anchor_slot;
}

// MLA: scores s_i = norm * query . [c_i ; k^R_i][0 : sw], softmax, argmax;
// writes the pooled latent and the anchor's rope key. Returns the anchor's
// index in the group.
template <class T>
__device__ int condense_group_mla(const float* query, float* scores, int* anchor_slot, int sw, int g, float norm,
                                  const T* latent, int64_t latent_stride, const T* rope, int64_t rope_stride, int dc,
                                  int dr, T* out_latent, T* out_rope) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int i = warp; i < g; i += warps) {
    const float acc = warp_dot(query, latent + i * latent_stride, rope + i * rope_stride, dc, sw);
    if (lane == 0) scores[i] = norm * acc;
  }
  const int anchor = block_softmax_argmax(scores, g, anchor_slot);
  block_pool(scores, g, latent, latent_stride, dc, out_latent);
  for (int x = threadIdx.x; x < dr; x += blockDim.x) out_rope[x] = rope[anchor * rope_stride + x];
  return anchor;
}

// GQA, one kv head: scores against the keys, pooled values, and the key of
// key_mode (pooled: un-rotate each key, pool, rotate to the anchor position,
// each lane owning RoPE pairs (c, c + d/2); anchor: the anchor's own key).
// first_pos is the group's first position. Returns the anchor's index.
template <class T>
__device__ int condense_group_gqa(const float* query, float* scores, int* anchor_slot, int d, int g, float norm,
                                  const T* keys, const T* values, int64_t stride, int64_t first_pos, KeyMode key_mode,
                                  double theta, T* out_k, T* out_v) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32, half = d / 2;
  for (int i = warp; i < g; i += warps) {
    const float acc = warp_dot(query, keys + i * stride, keys, d, d);
    if (lane == 0) scores[i] = norm * acc;
  }
  const int anchor = block_softmax_argmax(scores, g, anchor_slot);
  block_pool(scores, g, values, stride, d, out_v);
  if (key_mode == KeyMode::anchor) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) out_k[c] = keys[anchor * stride + c];
  } else {
    for (int c = threadIdx.x; c < half; c += blockDim.x) {
      float lo = 0.f, hi = 0.f;  // sum_i alpha_i Rot(i)^{-1} k_i, pair (c, c + d/2)
      // Rot(first_pos + i) by composing Rot(first_pos) with Rot(1) in double:
      // two sincos per pair instead of one per key (fp64 was this loop's cost),
      // exact to ~1e-15 before the float rounding.
      const double inv_freq = pow(theta, -2.0 * c / d);
      double s_i, c_i, s_1, c_1;
      sincos(static_cast<double>(first_pos) * inv_freq, &s_i, &c_i);
      sincos(inv_freq, &s_1, &c_1);
      for (int i = 0; i < g; ++i) {
        const float cs = static_cast<float>(c_i), sn = static_cast<float>(s_i);
        const float x = to_float(keys[i * stride + c]), y = to_float(keys[i * stride + c + half]);
        lo += scores[i] * (x * cs + y * sn);  // rotation by -angle
        hi += scores[i] * (y * cs - x * sn);
        const double c_next = c_i * c_1 - s_i * s_1;
        s_i = s_i * c_1 + c_i * s_1;
        c_i = c_next;
      }
      float cs, sn;
      rope_angle(first_pos + anchor, inv_freq, cs, sn);
      out_k[c] = from_float<T>(lo * cs - hi * sn);
      out_k[c + half] = from_float<T>(hi * cs + lo * sn);
    }
  }
  return anchor;
}

}  // namespace lca::cuda::detail
