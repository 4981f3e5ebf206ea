// moe_combine: x[t] += sum_k weight[t, k] y[position[t, k]] (routed and shared
// experts alike: the shared ones are choices of weight 1).
//
// Plan: a thread owns 8 columns of one token (one 16-byte load per row it
// reads); blocks of 128 threads, grid (tokens, column chunks), so a decode
// step's token spreads over d / 1024 blocks instead of one. The token's y rows
// are loaded kLoads at a time, all in flight before the first is summed. The
// sum runs in fp32 over k in order, per column (deterministic), and x is
// rounded to bf16 once.
#include <cstdint>

#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 128, kCols = 8, kLoads = 8;

__device__ __forceinline__ void add_scaled(float (&acc)[kCols], const uint4& v, float w) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int j = 0; j < kCols / 2; ++j) {
    const float2 f = __bfloat1622float2(p[j]);
    acc[2 * j] += w * f.x;
    acc[2 * j + 1] += w * f.y;
  }
}

__global__ void __launch_bounds__(kThreads)
    moe_combine_kernel(bf16* x, const bf16* y, const int32_t* position, const float* weight, int per_token,
                       int64_t d) {
  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int64_t col = (int64_t(blockIdx.y) * kThreads + threadIdx.x) * kCols;
  if (col >= d) return;
  const int32_t* pos = position + t * per_token;
  const float* w = weight + t * per_token;
  float acc[kCols] = {};
  for (int k0 = 0; k0 < per_token; k0 += kLoads) {
    uint4 v[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      if (k0 + i < per_token) v[i] = *reinterpret_cast<const uint4*>(y + int64_t(pos[k0 + i]) * d + col);
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      if (k0 + i < per_token) add_scaled(acc, v[i], w[k0 + i]);
  }
  uint4* out = reinterpret_cast<uint4*>(x + t * d + col);
  uint4 old = *out;
  __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&old);
#pragma unroll
  for (int j = 0; j < kCols / 2; ++j) {
    const float2 f = __bfloat1622float2(o[j]);
    o[j] = __floats2bfloat162_rn(f.x + acc[2 * j], f.y + acc[2 * j + 1]);
  }
  *out = old;
}

}  // namespace

void moe_combine(void* x, const void* y, const int32_t* position, const float* weight, int64_t rows, int per_token,
                 int64_t d, cudaStream_t stream) {
  if (rows == 0) return;
  LCA_CHECK(d % kCols == 0, "moe_combine: d must be a multiple of 8, got ", d);
  LCA_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0,
            "moe_combine: x and y must be 16-byte aligned");
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>((d / kCols + kThreads - 1) / kThreads));
  launch_with_pdl(moe_combine_kernel, grid, kThreads, 0, stream, static_cast<bf16*>(x), static_cast<const bf16*>(y),
                  position, weight, per_token, d);
  LCA_CUDA_CHECK_LAUNCH("moe_combine");
}

}  // namespace lca::cuda::detail
