// rms_norm's arithmetic as device functions (internal to the CUDA kernels):
// rms_norm.cu and moe_route_small.cu (the MoE's input norm folded into the
// routing launch) compute the same bits from the same code.
#pragma once

#include "common.cuh"

namespace lca::cuda::detail {

// 1 / sqrt(mean(row^2) + eps) of d bf16 values, by a whole block of Threads
// threads (the sum in a fixed order: per thread, warp tree, warps in order);
// partial holds Threads / 32 floats. Ends with __syncthreads (partial reusable).
template <int Threads>
__device__ __forceinline__ float row_inv_rms(const __nv_bfloat16* row, int64_t d, float eps, float* partial) {
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < d; c += Threads) {
    const float v = __bfloat162float(row[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int i = 0; i < Threads / 32; ++i) ss += partial[i];
  __syncthreads();
  return rsqrtf(ss / static_cast<float>(d) + eps);
}

// One normed value: x * inv * weight, rounded to bf16.
__device__ __forceinline__ float rms_normed(float x, float inv, float weight) {
  return __bfloat162float(__float2bfloat16(x * inv * weight));
}

}  // namespace lca::cuda::detail
