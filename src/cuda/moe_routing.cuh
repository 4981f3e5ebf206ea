// The MoE routing and dispatch as device functions (internal to the CUDA
// kernels): moe_route.cu and moe_dispatch.cu launch them over all rows, and
// moe_route_small.cu runs both, after the router logits, in one launch for a
// few rows. One definition, so that both paths give the same choices.
#pragma once

#include <climits>

#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {

__device__ __forceinline__ double warp_sum_f64(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The index of the largest of v[0, n) in every lane: the smallest index among
// equal values; NaN never wins (-inf does, before nothing).
__device__ __forceinline__ int warp_argmax_f64(const double* v, int n) {
  const int lane = threadIdx.x % 32;
  double best = -INFINITY;
  int best_i = INT_MAX;
  for (int i = lane; i < n; i += 32) {
    const double x = v[i];
    if (x > best || (x == best && i < best_i)) best = x, best_i = i;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  return best_i == INT_MAX ? 0 : best_i;  // all NaN: only when more are chosen than exist (refused on the host)
}

// Shared memory of route_token: doubles per warp.
__host__ __device__ constexpr int route_smem_doubles(int experts, int n_group) { return 2 * experts + n_group; }

// One token's routing by one whole warp (moe_route's contract, moe.hpp): z
// its E fp32 logits, out_e / out_w its K + S choices; smem
// route_smem_doubles(E, n_group) doubles of this warp's own.
__device__ __forceinline__ void route_token(const float* z, const float* bias, const MoeRoutingArgs& a,
                                            double* smem, int32_t* out_e, float* out_w) {
  const int lane = threadIdx.x % 32;
  const int E = a.experts, G = a.n_group, group = E / G, K = a.per_token;
  double* score = smem;
  double* choice = score + E;
  double* group_score = choice + E;

  if (a.routing == 2) {
    for (int e = lane; e < E; e += 32) {
      const double s = 1.0 / (1.0 + exp(-static_cast<double>(z[e])));
      score[e] = s;
      choice[e] = s + static_cast<double>(bias[e]);
    }
  } else {
    float top = -INFINITY;
    for (int e = lane; e < E; e += 32) top = fmaxf(top, z[e]);
    top = warp_max(top);
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) sum += score[e] = exp(static_cast<double>(z[e]) - static_cast<double>(top));
    sum = warp_sum_f64(sum);
    for (int e = lane; e < E; e += 32) choice[e] = score[e] /= sum;
  }
  __syncwarp();

  if (a.routing != 0) {
    for (int g = lane; g < G; g += 32) {
      double best = -INFINITY, second = -INFINITY;
      for (int i = g * group; i < (g + 1) * group; ++i) {
        const double c = choice[i];
        if (c > best) second = best, best = c;
        else if (c > second) second = c;
      }
      group_score[g] = a.routing == 2 ? best + second : best;
    }
    __syncwarp();
    for (int i = 0; i < a.topk_group; ++i) {  // kept groups end up NaN
      const int g = warp_argmax_f64(group_score, G);
      __syncwarp();
      if (lane == 0) group_score[g] = NAN;
      __syncwarp();
    }
    const double masked = a.routing == 2 ? -INFINITY : 0.0;
    for (int e = lane; e < E; e += 32)
      if (!isnan(group_score[e / group])) choice[e] = masked;
    __syncwarp();
  }

  for (int k = 0; k < K; ++k) {
    const int e = warp_argmax_f64(choice, E);
    __syncwarp();
    if (lane == 0) {
      out_e[k] = e;
      choice[e] = NAN;
    }
    __syncwarp();
  }
  if (lane == 0) {
    double norm = 1.0;
    if (a.routing == 2 && a.norm_topk_prob) {
      norm = 1e-20;
      for (int k = 0; k < K; ++k) norm += score[out_e[k]];
    }
    for (int k = 0; k < K; ++k) out_w[k] = static_cast<float>(score[out_e[k]] / norm * a.routed_scaling);
    for (int s = 0; s < a.shared_units; ++s) {
      out_e[K + s] = E + s;
      out_w[K + s] = 1.f;
    }
  }
}

// moe_dispatch's counting sort (moe.hpp) by the whole block, which must see
// expert[] written (a launch boundary or __syncthreads after the writes);
// smem 2 * experts ints. Ends with __syncthreads.
__device__ __forceinline__ void dispatch_pairs(const int32_t* expert, int64_t pairs, int per_token, int experts,
                                               int tile_rows, int32_t* smem, int32_t* offsets,
                                               int32_t* tile_offsets, int32_t* position, int32_t* token_of) {
  int32_t* count = smem;
  int32_t* cursor = smem + experts;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) atomicAdd(&count[expert[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t row = 0, tile = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = cursor[e] = row;
      tile_offsets[e] = tile;
      row += count[e];
      tile += (count[e] + tile_rows - 1) / tile_rows;
    }
    offsets[experts] = row;
    tile_offsets[experts] = tile;
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int32_t pos = atomicAdd(&cursor[expert[p]], 1);
    position[p] = pos;
    token_of[pos] = static_cast<int32_t>(p / per_token);
  }
  __syncthreads();
}

}  // namespace lca::cuda::detail
