// swiglu: act [n, f] = silu(gate) * up from the joint product gate_up
// [n, 2f] = [gate | up] (one GEMM for both), elementwise, bf16 pairs.
// Launched with programmatic dependent launch, so that the down product after
// it (a decode_linear at batch 1) starts its weight loads while it runs.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

__global__ void swiglu_kernel(const __nv_bfloat162* gate_up, int64_t half_f, int64_t pairs, __nv_bfloat162* act) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / half_f, col = i % half_f;
    const __nv_bfloat162* gu = gate_up + row * 2 * half_f + col;
    const float2 g = __bfloat1622float2(gu[0]), u = __bfloat1622float2(gu[half_f]);
    act[i] = __floats2bfloat162_rn(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y);
  }
}

}  // namespace

void swiglu(const void* gate_up, int64_t n, int64_t f, void* act, cudaStream_t stream) {
  const int64_t pairs = n * f / 2;
  if (pairs == 0) return;
  LCA_CHECK(f % 2 == 0, "swiglu: f must be even, got ", f);
  const int64_t blocks = std::min<int64_t>((pairs + 255) / 256, 132 * 16);
  launch_with_pdl(swiglu_kernel, dim3(static_cast<unsigned>(blocks)), 256, 0, stream,
                  static_cast<const __nv_bfloat162*>(gate_up), f / 2, pairs, static_cast<__nv_bfloat162*>(act));
  LCA_CUDA_CHECK_LAUNCH("swiglu");
}

}  // namespace lca::cuda::detail
