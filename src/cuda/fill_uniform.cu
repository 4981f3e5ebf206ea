// fill_uniform: random bf16 values in [-scale, scale) from a hash of (seed,
// index): random weights at a model's real sizes without a host copy.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

__global__ void fill_uniform_kernel(__nv_bfloat16* p, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t x = (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 29;
    p[i] = __float2bfloat16((static_cast<float>(x >> 40) / float(1 << 23) - 1.f) * scale);
  }
}

}  // namespace

void fill_uniform(void* p, int64_t n, float scale, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return;
  fill_uniform_kernel<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(p), n, scale, seed);
  LCA_CUDA_CHECK_LAUNCH("fill_uniform");
}

}  // namespace lca::cuda::detail
