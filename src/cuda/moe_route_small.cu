// moe_route_small: for a few rows (decode), the router logits, moe_route and
// moe_dispatch in one launch instead of a cuBLAS GEMM and two kernels, each of
// which costs a few microseconds of launch and latency at batch 1.
//
// Plan: one warp per expert, kWarps warps per block, ceil(E / kWarps) blocks.
// The warp computes its expert's logits for every row: each lane strides over
// D in 16-byte steps (8 bf16 of the router row and of each h row), fp32 fused
// multiply-adds in a fixed order, then a warp sum tree; the logits go to
// global memory. Each block then counts its arrival on a device counter
// (after a fence); the last block to arrive reads all logits back, routes
// each row with route_token (one warp per row) and sorts the pairs with
// dispatch_pairs (moe_routing.cuh: the code of moe_route and moe_dispatch),
// then resets the counter for the next launch. The fixed order makes the
// logits deterministic (not those of cuBLAS bit for bit: a different
// summation order, alike within fp32 rounding).
// Shared memory: kWarps route_token scratches and rows * E fp32 logits, the
// dispatch's 2 (E + S) ints aliasing them.
#include <algorithm>
#include <cstdint>

#include "moe_routing.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

size_t small_smem_bytes(const MoeRoutingArgs& a, int64_t rows) {
  const size_t route = kWarps * size_t(route_smem_doubles(a.experts, a.n_group)) * sizeof(double) +
                       size_t(rows) * size_t(a.experts) * sizeof(float);
  const size_t dispatch = 2 * size_t(a.experts + a.shared_units) * sizeof(int32_t);
  return std::max(route, dispatch);
}

__device__ __forceinline__ void unpack_bf16x8(const uint4& v, float* f) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(p[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

__global__ void __launch_bounds__(kThreads)
    moe_route_small_kernel(const __nv_bfloat16* h, const __nv_bfloat16* router, int rows, int64_t d,
                           const float* bias, MoeRoutingArgs a, int tile_rows, float* logits, int32_t* expert,
                           float* weight, int32_t* offsets, int32_t* tile_offsets, int32_t* position,
                           int32_t* token_of, unsigned* arrived) {
  extern __shared__ double small_smem[];
  __shared__ bool last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int E = a.experts;
  const int e = blockIdx.x * kWarps + warp;
  if (e < E) {
    float acc[kMoeSmallMaxRows] = {};
    const uint4* w = reinterpret_cast<const uint4*>(router + e * d);
    const uint4* x = reinterpret_cast<const uint4*>(h);
    const int64_t steps = d / 8;
#pragma unroll 4
    for (int64_t i = lane; i < steps; i += 32) {
      float wf[8];
      unpack_bf16x8(__ldg(w + i), wf);
#pragma unroll
      for (int r = 0; r < kMoeSmallMaxRows; ++r) {
        if (r < rows) {  // a guard, not a break: acc stays in registers
          float hf[8];
          unpack_bf16x8(x[r * steps + i], hf);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r] = fmaf(wf[j], hf[j], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kMoeSmallMaxRows; ++r) {
      if (r < rows) {
        const float z = warp_sum(acc[r]);
        if (lane == 0) logits[r * E + e] = z;
      }
    }
  }
  // The block's logits are visible before its arrival counts.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(arrived, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();

  const int per_warp = route_smem_doubles(E, a.n_group);
  float* z = reinterpret_cast<float*>(small_smem + kWarps * per_warp);
  for (int i = threadIdx.x; i < rows * E; i += kThreads) z[i] = __ldcg(logits + i);  // L2: other SMs wrote them
  __syncthreads();
  const int C = a.per_token + a.shared_units;
  for (int t = warp; t < rows; t += kWarps)
    route_token(z + t * E, bias, a, small_smem + warp * per_warp, expert + t * C, weight + t * C);
  __syncthreads();  // expert[] written; the routing's shared memory free for the dispatch
  dispatch_pairs(expert, int64_t(rows) * C, C, E + a.shared_units, tile_rows, reinterpret_cast<int32_t*>(small_smem),
                 offsets, tile_offsets, position, token_of);
  if (threadIdx.x == 0) *arrived = 0;  // every block has arrived: ready for the next launch
}

}  // namespace

bool moe_route_small_fits(const MoeRoutingArgs& args, int64_t rows, int64_t d, const void* h) {
  return rows >= 1 && rows <= kMoeSmallMaxRows && d >= 8 && d % 8 == 0 &&
         reinterpret_cast<uintptr_t>(h) % 16 == 0 && small_smem_bytes(args, rows) <= 48 * 1024 - 64;  // 64: `last`
}

void moe_route_small(const void* h, const void* router, int64_t rows, int64_t d, const float* bias,
                     const MoeRoutingArgs& args, int tile_rows, float* logits, int32_t* expert, float* weight,
                     int32_t* offsets, int32_t* tile_offsets, int32_t* position, int32_t* token_of,
                     unsigned* arrived, cudaStream_t stream) {
  LCA_CHECK(moe_route_small_fits(args, rows, d, h), "moe_route_small: rows ", rows, " (at most ", kMoeSmallMaxRows,
            "), hidden ", d, " (a multiple of 8), h (16-byte aligned) or experts ", args.experts,
            " (shared memory) out of its bounds");
  LCA_CHECK(reinterpret_cast<uintptr_t>(router) % 16 == 0, "moe_route_small: router must be 16-byte aligned");
  const int blocks = (args.experts + kWarps - 1) / kWarps;
  moe_route_small_kernel<<<blocks, kThreads, small_smem_bytes(args, rows), stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<const __nv_bfloat16*>(router), static_cast<int>(rows), d,
      bias, args, tile_rows, logits, expert, weight, offsets, tile_offsets, position, token_of, arrived);
  LCA_CUDA_CHECK_LAUNCH("moe_route_small");
}

}  // namespace lca::cuda::detail
