// rms_norm: one block of 256 threads per row; the sum of squares in fp32 by
// shuffles, then each thread scales its columns by the weight.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t d,
                                                            int64_t x_stride, float eps, __nv_bfloat16* out) {
  __shared__ float partial[kThreads / 32];
  const __nv_bfloat16* row = x + blockIdx.x * x_stride;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < d; c += kThreads) {
    const float v = __bfloat162float(row[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) ss += partial[i];
  const float inv = rsqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t c = threadIdx.x; c < d; c += kThreads)
    out[blockIdx.x * d + c] = __float2bfloat16(__bfloat162float(row[c]) * inv * __bfloat162float(w[c]));
}

}  // namespace

void rms_norm(const void* x, const void* weight, int64_t rows, int64_t d, double eps, void* out, cudaStream_t stream,
              int64_t x_stride) {
  if (rows == 0) return;
  LCA_CHECK(x_stride == 0 || x_stride >= d, "rms_norm: x_stride ", x_stride, " is below the row's ", d, " values");
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(weight), d, x_stride > 0 ? x_stride : d,
      static_cast<float>(eps), static_cast<__nv_bfloat16*>(out));
  LCA_CUDA_CHECK_LAUNCH("rms_norm");
}

}  // namespace lca::cuda::detail
