// swiglu: gate <- silu(gate) * up, elementwise over [n, f], bf16 pairs.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

__global__ void swiglu_kernel(__nv_bfloat162* gate, const __nv_bfloat162* up, int64_t pairs) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs; i += int64_t(gridDim.x) * blockDim.x) {
    const float2 g = __bfloat1622float2(gate[i]), u = __bfloat1622float2(up[i]);
    gate[i] = __floats2bfloat162_rn(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y);
  }
}

}  // namespace

void swiglu(void* gate, const void* up, int64_t n, int64_t f, cudaStream_t stream) {
  const int64_t pairs = n * f / 2;
  if (pairs == 0) return;
  LCA_CHECK(f % 2 == 0, "swiglu: f must be even, got ", f);
  const int64_t blocks = std::min<int64_t>((pairs + 255) / 256, 132 * 16);
  swiglu_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(static_cast<__nv_bfloat162*>(gate),
                                                                  static_cast<const __nv_bfloat162*>(up), pairs);
  LCA_CUDA_CHECK_LAUNCH("swiglu");
}

}  // namespace lca::cuda::detail
