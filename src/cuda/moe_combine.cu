// moe_combine: x[t] += sum_k weight[t, k] y[position[t, k]] (+ shared[t]).
//
// Plan: one block of 128 threads per token, each thread a bf16 pair of
// columns at a time; the sum in fp32 over k in order (deterministic), x
// rounded to bf16 once.
#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    moe_combine_kernel(__nv_bfloat162* x, const __nv_bfloat162* y, const __nv_bfloat162* shared,
                       const int32_t* position, const float* weight, int per_token, int64_t pairs_per_row) {
  const int64_t t = blockIdx.x;
  const int32_t* pos = position + t * per_token;
  const float* w = weight + t * per_token;
  for (int64_t j = threadIdx.x; j < pairs_per_row; j += kThreads) {
    float2 acc = shared != nullptr ? __bfloat1622float2(shared[t * pairs_per_row + j]) : make_float2(0.f, 0.f);
    for (int k = 0; k < per_token; ++k) {
      const float2 v = __bfloat1622float2(y[pos[k] * pairs_per_row + j]);
      acc.x += w[k] * v.x;
      acc.y += w[k] * v.y;
    }
    const float2 old = __bfloat1622float2(x[t * pairs_per_row + j]);
    x[t * pairs_per_row + j] = __floats2bfloat162_rn(old.x + acc.x, old.y + acc.y);
  }
}

}  // namespace

void moe_combine(void* x, const void* y, const void* shared, const int32_t* position, const float* weight,
                 int64_t rows, int per_token, int64_t d, cudaStream_t stream) {
  if (rows == 0) return;
  LCA_CHECK(d % 2 == 0, "moe_combine: d must be even, got ", d);
  moe_combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<__nv_bfloat162*>(x), static_cast<const __nv_bfloat162*>(y),
      static_cast<const __nv_bfloat162*>(shared), position, weight, per_token, d / 2);
  LCA_CUDA_CHECK_LAUNCH("moe_combine");
}

}  // namespace lca::cuda::detail
